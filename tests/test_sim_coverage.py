"""bench/sim_coverage.py: the simulator cases' line coverage of the CUDA path is read right."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("coverage")
pytest.importorskip("numba.cuda")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _expand(ranges: str) -> set:
    out = set()
    for part in filter(None, (p.strip() for p in ranges.split(","))):
        a, _, b = part.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def _line_of(path: str, text: str) -> int:
    with open(os.path.join(ROOT, path)) as f:
        hits = [i for i, line in enumerate(f, 1) if text in line]
    assert len(hits) == 1, (path, text, hits)
    return hits[0]


def test_one_case_covers_its_kernel_and_not_the_others():
    # the "commit" case runs make_commit's device function in simulator threads (which coverage
    # must trace) and no sequence kernel
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "bench/sim_coverage.py", "--cases", "commit", "--jobs", "1", "--json"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert rep["cases"] == ["commit"] and rep["failed"] == []
    files = {r["file"]: r for r in rep["files"]}
    assert {"streamrnn/layers/dense/cuda.py", "streamrnn/layers/cuda_seqgrid.py",
            "streamrnn/engine/cuda_pool.py", "streamrnn/layers/cuda_seqblock.py"} <= set(files)
    dense = files["streamrnn/layers/dense/cuda.py"]
    body = _line_of("streamrnn/layers/dense/cuda.py", "rr = e // HT")  # inside the kernel's locate()
    assert body not in _expand(dense["not_run"]), dense["not_run"]
    assert 0 < dense["run"] < dense["statements"]
    grid = files["streamrnn/layers/cuda_seqgrid.py"]
    seq = _line_of("streamrnn/layers/cuda_seqgrid.py", "hs[i * H + k] = state[sidx[b0 + i], HO + k]")
    assert seq in _expand(grid["not_run"])


def test_unknown_case_is_refused():
    p = subprocess.run([sys.executable, "bench/sim_coverage.py", "--cases", "nope"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "nope" in p.stderr
