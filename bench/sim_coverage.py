#!/usr/bin/env python
"""Which lines of the CUDA path no simulator case runs: line coverage of tests/test_cuda_sim.py.

    python bench/sim_coverage.py [--cases a,b] [--jobs 2] [--json] [--out DIR]

Runs every case of ``tests/test_cuda_sim.py`` (or those named) under ``coverage`` with
``NUMBA_ENABLE_CUDASIM=1``, ``--jobs`` at a time, combines the data and prints, for each file of
the CUDA path (``streamrnn/engine/cuda*.py``, ``persist.py``, ``streamrnn/layers/cuda_*.py``,
``streamrnn/layers/*/cuda.py``), the lines run and the line ranges no case ran. In the simulator
kernels and device functions run as Python, so a kernel line no case reaches is a line no
test checks anywhere (CI has no GPU). Lines only a GPU can run (the driver's launch paths, a
real device's queries) show as not run here too; ``tests/test_static_names.py`` checks those
statically. Functions that numba compiles for the CPU (``@njit``: the host-side staging of
``cuda_stage.py``, the persistent kernel's host calls) run as machine code and show as not
run; ``tests/test_cuda_hostcall.py`` and the CPU tests check those. A development tool, not a
test (``coverage`` comes with the ``test`` extra; ``tests/test_sim_coverage.py`` checks the tool
on one case); all cases take about as long as the simulator suite.

Exit status: 0, or 2 when coverage is not installed or a case failed.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

#: the files of the CUDA path, relative to the repository root
FILES = ("streamrnn/engine/cuda*.py", "streamrnn/engine/persist.py", "streamrnn/layers/cuda_*.py",
         "streamrnn/layers/*/cuda.py")


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="cases run at once")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--out", default="", help="keep the combined .coverage data in this folder")
    return p.parse_args(argv)


def _ranges(lines):
    """[3, 4, 5, 9] -> '3-5, 9'."""
    out, start, prev = [], None, None
    for n in sorted(lines):
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(out)


def main(argv=None) -> int:
    args = _args(argv)
    try:
        import coverage
    except ImportError:
        print("sim_coverage: expected the coverage package (pip install coverage), got none", file=sys.stderr)
        return 2
    import test_cuda_sim as t

    names = [c for c in args.cases.split(",") if c] or sorted(t._CASES)
    unknown = [c for c in names if c not in t._CASES]
    if unknown:
        print(f"sim_coverage: expected case names of tests/test_cuda_sim.py, got {unknown}", file=sys.stderr)
        return 2
    files = sorted({os.path.abspath(f) for pat in FILES for f in glob.glob(os.path.join(ROOT, pat))})
    data = tempfile.mkdtemp(prefix="simcov") if not args.out else os.path.abspath(args.out)
    os.makedirs(data, exist_ok=True)
    rcfile = os.path.join(data, "coveragerc")
    with open(rcfile, "w") as f:
        # the simulator runs each CUDA thread as a Python thread: coverage must trace threads
        f.write("[run]\nparallel = True\nconcurrency = thread\ninclude =\n" + "".join(f"    {p}\n" for p in files))
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", COVERAGE_FILE=os.path.join(data, ".coverage"))
    todo, running, failed = list(names), {}, []
    t0 = time.time()
    while todo or running:
        while todo and len(running) < max(1, args.jobs):
            case = todo.pop(0)
            code = t._PRELUDE + textwrap.dedent(t._CASES[case]) + t._EPILOGUE
            src = os.path.join(data, f"case_{case}.py")
            with open(src, "w") as f:
                f.write(code)
            running[case] = subprocess.Popen([sys.executable, "-m", "coverage", "run", f"--rcfile={rcfile}", src],
                                             env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)
        time.sleep(0.5)
        for case, p in list(running.items()):
            if p.poll() is not None:
                out, err = p.communicate()
                del running[case]
                ok = p.returncode == 0 and "OK" in out
                if not ok:
                    failed.append(case)
                print(f"[{time.time() - t0:6.0f} s] {case}: {'ok' if ok else 'FAILED'}", file=sys.stderr)
                if not ok:
                    print(err[-2000:], file=sys.stderr)
    cov = coverage.Coverage(data_file=os.path.join(data, ".coverage"), config_file=rcfile)
    cov.combine([data])
    cov.load()
    rows = []
    for path in files:
        _, stmts, _, missing, _ = cov.analysis2(path)
        rows.append({"file": os.path.relpath(path, ROOT), "statements": len(stmts),
                     "run": len(stmts) - len(missing), "not_run": _ranges(missing)})
    if args.json:
        print(json.dumps({"cases": names, "failed": failed, "files": rows}, indent=1))
    else:
        print("| file | statements | run | lines not run by any case |\n|---|---|---|---|")
        for r in rows:
            print(f"| {r['file']} | {r['statements']} | {r['run']} | {r['not_run']} |")
        print(f"\n{len(names)} cases, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}; "
              f"{time.time() - t0:.0f} s")
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
