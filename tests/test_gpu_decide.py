"""bench/gpu_decide.py: the verdicts it draws from a gpu_check result (no GPU needed)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import gpu_decide as gd  # noqa: E402

S14 = os.path.join(ROOT, "bench", "results", "gpu_h200_s14.json")


def _row(method, H, B, p50, **kw):
    return {"method": method, "H": H, "B": B, "p50_us": p50, "p99_us": 2 * p50, **kw}


def test_variants_of_a_real_run():
    with open(S14) as f:
        res = json.load(f)
    var = gd.variants(res)
    rows = {(v["variant"], v["H"], v["B"]): v for v in var}
    # the row-tile kernels of stop 14 at H=512, B=16384, against the default of the same run
    key = ("streamrnn pool.step [row-tile LSTM kernels, STREAMRNN_CUDA_GEMM=0]", 512, 16384)
    v = rows[key]
    step = [r for r in res["step"] if r["H"] == 512 and r["B"] == 16384]
    want = next(r["p50_us"] for r in step if r["method"] == key[0]) / next(
        r["p50_us"] for r in step if r["method"] == "streamrnn pool.step")
    assert v["verdict"] == "slower" and v["ratio"] == pytest.approx(want) and v["ratio"] > 2
    # a seq variant whose reference is a sibling variant (PAIRS), not the default
    a = rows[("streamrnn model.run [persistent grid, counter barrier, STREAMRNN_CUDA_GRIDSYNC=atomic]", 512, 4)]
    assert a["reference"] == "streamrnn model.run [persistent grid, STREAMRNN_CUDA_SEQ=grid]"
    seq = [r for r in res["seq"] if r["H"] == 512 and r["B"] == 4]
    assert a["reference_us"] == next(r["us_per_step"] for r in seq if r["method"] == a["reference"])
    # torch rows are not variants
    assert not any(v["variant"].startswith("torch") for v in var)


def test_verdicts_reference_and_predictions():
    res = {"step": [
        _row("streamrnn pool.step", 128, 64, 100.0),
        _row("streamrnn pool.step [a]", 128, 64, 90.0),
        _row("streamrnn pool.step [b]", 128, 64, 104.0),
        _row("streamrnn pool.step [c]", 128, 64, 80.0, same_as_default=False),
        # the same reference method twice at one size: each variant takes the nearest earlier one
        _row("streamrnn pool.step [graph, default]", 128, 1, 30.0),
        _row("streamrnn pool.step [graph, default]", 128, 1, 20.0),
        _row("streamrnn pool.step [one njit call with the driver calls, STREAMRNN_CUDA_HOSTCALL=njit]", 128, 1,
             18.0, parity_ok=True),
        _row("streamrnn pool.step", 512, 64, 70.0),
        _row("streamrnn pool.step", 512, 1, 15.0),
        _row("streamrnn GRU pool.step", 512, 1024, 300.0),
        _row(gd.GRU0, 512, 1024, 510.0, same_as_default=True),
    ], "profile": [{"H": 512, "B": 64, "kernels": [{"op": "linear_gemm", "us": 7.0}]},
                   {"H": 128, "B": 1024, "kernels": [{"op": "lstm_gemm", "us": 25.0}]}]}
    var = {v["variant"]: v for v in gd.variants(res)}
    assert var["streamrnn pool.step [a]"]["verdict"] == "faster"
    assert var["streamrnn pool.step [b]"]["verdict"] == "same"
    assert var["streamrnn pool.step [c]"]["verdict"] == "WRONG"
    nj = var["streamrnn pool.step [one njit call with the driver calls, STREAMRNN_CUDA_HOSTCALL=njit]"]
    assert nj["reference_us"] == 20.0 and nj["verdict"] == "faster"
    pred = {(p["row"], p["H"], p["B"]): p for p in gd.predictions(res)}
    assert pred[("streamrnn pool.step", 512, 64)]["verdict"] == "hit"  # 60-80
    assert pred[("linear_gemm", 512, 64)]["verdict"] == "missed"  # 2-6, measured 7
    assert pred[("lstm_gemm", 128, 1024)]["verdict"] == "hit"
    assert pred[("streamrnn pool.step", 128, 64)]["verdict"] == "missed"  # 30-42, measured 100
    assert pred[("streamrnn pool.step", 512, 1)]["verdict"] == "better"  # 20-27, measured 15
    assert pred[("linear_gemm", 128, 64)]["verdict"] == "not measured"
    assert pred[(gd.GRU0, 512, 1024)]["measured_us"] == pytest.approx(1.7) and pred[(gd.GRU0, 512, 1024)][
        "verdict"] == "hit"


def test_cli(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_decide.py"), S14],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "## Predictions of bench/NOTES.md" in out.stdout
    js = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_decide.py"), S14, "--json"],
                        capture_output=True, text=True)
    assert set(json.loads(js.stdout)) == {"variants", "predictions"}
    # two files (runs of different sections) read as one: the seq rows of the second count
    step_only = tmp_path / "step.json"
    seq_only = tmp_path / "seq.json"
    with open(S14) as f:
        res = json.load(f)
    step_only.write_text(json.dumps({**res, "seq": []}))
    seq_only.write_text(json.dumps({"env": res["env"], "seq": res["seq"]}))
    both = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_decide.py"), str(step_only),
                           str(seq_only), "--json"], capture_output=True, text=True)
    assert json.loads(both.stdout) == json.loads(js.stdout)
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_decide.py"), str(tmp_path / "none.json")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "expected a JSON file" in bad.stderr
