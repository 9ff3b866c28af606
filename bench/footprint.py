#!/usr/bin/env python
"""Cold start and memory of streamrnn (no competitors: these are streamrnn's own guarantees).

    python bench/footprint.py [--quick] [--out bench/results]

* ``coldstart``: a fresh Python process does ``import streamrnn``, ``srnn.load`` of a ``.srnn``
  (LSTM I=H=128 + Linear(16)) and one ``stream.step``; timed inside the process (import to the
  first output) and as the whole process's wall time. With numba's cache warm (the normal case
  after the first run) and cold (``NUMBA_CACHE_DIR`` pointed at an empty folder: every kernel
  compiled, what the very first run after installing pays).
* ``memory``: resident set size (``/proc/self/statm``) of a process that steps one stream
  10^6 times (I=H=32; growth after a 10^4-step warm-up), and the growth caused by a pool of
  100,000 open streams at H=128 whose every state has been written (``pool.step`` over all of
  them, 4096 per call; measured after a first small pool loaded the kernels), against the raw
  state bytes (100,000 x (h + c) x 4 bytes).

Writes ``<out>/footprint.json`` and ``.md``; also run by ``bench/latency.py`` (section
``footprint``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

_CHILD_COLD = r"""
import sys, time
t0 = time.perf_counter()
import numpy as np
import streamrnn as srnn
m = srnn.load(sys.argv[1])
y = m.stream().step(np.ones(m.input_size, np.float32))
t1 = time.perf_counter()
print(t1 - t0)
"""

_CHILD_MEM = r"""
import sys, json
import numpy as np
import streamrnn as srnn
from streamrnn.benchutil import random_lstm_spec

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

steps, nstreams = int(sys.argv[1]), int(sys.argv[2])
out = {}
m = srnn.Model(random_lstm_spec(32, 32, 16))
s = m.stream()
x = np.random.default_rng(0).standard_normal(32).astype(np.float32)
y = np.empty(16, np.float32)
for _ in range(10_000):
    s.step(x, out=y)
r0 = rss()
step = s.step
for _ in range(steps):
    step(x, out=y)
out["steps"] = steps
out["rss_growth_bytes"] = rss() - r0
m = srnn.Model(random_lstm_spec(128, 128, 16))
X = np.random.default_rng(1).standard_normal((4096, 128)).astype(np.float32)
warm = m.pool(capacity=4096)  # one-time costs first: kernels loaded, BLAS buffers
warm.step(warm.open(4096), X)
del warm
r0 = rss()
pool = m.pool(capacity=nstreams)
ids = pool.open(nstreams)
for a in range(0, nstreams, 4096):  # every state written (resident), in batches of 4096
    b = min(nstreams, a + 4096)
    pool.step(ids[a:b], X[: b - a])
out["pool_streams"] = nstreams
out["pool_rss_bytes"] = rss() - r0
out["pool_state_floats_per_stream"] = m.state_size
out["pool_raw_state_bytes"] = nstreams * m.state_size * 4
print(json.dumps(out))
"""


def _run(code: str, args: list[str], env: dict | None = None) -> tuple[str, float]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=900)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}): {p.stderr[-2000:]}")
    return p.stdout.strip().splitlines()[-1], wall


def coldstart(quick: bool) -> dict:
    import streamrnn as srnn
    from streamrnn.benchutil import random_lstm_spec

    reps = 3 if quick else 7
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "lstm_h128.srnn")
        srnn.Model(random_lstm_spec(128, 128, 16)).save(path)
        _run(_CHILD_COLD, [path])  # make sure the default cache is warm
        warm = [_run(_CHILD_COLD, [path]) for _ in range(reps)]
        cold = []
        for _ in range(1 if quick else 2):
            with tempfile.TemporaryDirectory() as cache:
                cold.append(_run(_CHILD_COLD, [path], {"NUMBA_CACHE_DIR": cache}))
    med = lambda v: float(np.median(v))  # noqa: E731
    return {
        "model": "LSTM I=H=128 + Linear(16), .srnn",
        "warm_cache_s": {"import_to_first_output": med([float(o) for o, _ in warm]),
                         "process_wall": med([w for _, w in warm]), "runs": reps},
        "cold_cache_s": {"import_to_first_output": med([float(o) for o, _ in cold]),
                         "process_wall": med([w for _, w in cold]), "runs": len(cold)},
    }


def memory(quick: bool) -> dict:
    steps = 100_000 if quick else 1_000_000
    out, _ = _run(_CHILD_MEM, [str(steps), "100000"])
    r = json.loads(out)
    r["pool_ratio_to_raw_state"] = r["pool_rss_bytes"] / r["pool_raw_state_bytes"]
    return r


def to_markdown(res: dict) -> str:
    c, m = res["coldstart"], res["memory"]
    return "\n".join([
        "# Cold start and memory",
        "",
        f"{res['created']}, streamrnn at {res['git']}. Machine: {res['machine']}.",
        "",
        f"Cold start ({c['model']}: fresh process, `import streamrnn`, `srnn.load`, one `step`), seconds:",
        "",
        "| numba cache | import to first output (p50) | whole process wall (p50) | runs |",
        "|---|---|---|---|",
        f"| warm (every later run) | {c['warm_cache_s']['import_to_first_output']:.2f} | "
        f"{c['warm_cache_s']['process_wall']:.2f} | {c['warm_cache_s']['runs']} |",
        f"| cold (first run after install: every kernel compiled) | {c['cold_cache_s']['import_to_first_output']:.2f} | "
        f"{c['cold_cache_s']['process_wall']:.2f} | {c['cold_cache_s']['runs']} |",
        "",
        "Memory (resident set size, `/proc/self/statm`):",
        "",
        "| what | measured |",
        "|---|---|",
        f"| RSS growth over {m['steps']:,} `stream.step` calls (I=H=32, after 10^4 warm-up) | "
        f"{m['rss_growth_bytes'] / 1024:.0f} KiB |",
        f"| pool of {m['pool_streams']:,} streams at H=128, every state written: RSS growth | "
        f"{m['pool_rss_bytes'] / 2**20:.1f} MiB |",
        f"| raw state bytes ({m['pool_streams']:,} x {m['pool_state_floats_per_stream']} float32) | "
        f"{m['pool_raw_state_bytes'] / 2**20:.1f} MiB |",
        f"| **ratio** | **{m['pool_ratio_to_raw_state']:.2f}x** |",
        "",
    ])


def run(quick: bool, out: str, machine: str, git: str) -> dict:
    import datetime

    res = {
        "section": "footprint",
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine,
        "git": git,
        "coldstart": coldstart(quick),
        "memory": memory(quick),
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "footprint.json"), "w") as f:
        json.dump(res, f, indent=1)
    md = to_markdown(res)
    with open(os.path.join(out, "footprint.md"), "w") as f:
        f.write(md)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10^5 steps and fewer cold-start runs")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                   help="output folder (default bench/results)")
    a = p.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from latency import _machine_line, git_state  # the same header as the other sections
    from streamrnn.benchutil import machine_info

    g = git_state()
    res = run(a.quick, a.out, _machine_line(machine_info()),
              f"{g.get('commit')}{' + uncommitted changes' if g.get('modified_files') else ''}")
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
