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
    assert set(json.loads(js.stdout)) == {"variants", "predictions", "targets"}
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


def test_targets_of_real_runs():
    """Stop 14's step run and its persistent-kernel run, read as one: each figure recomputed
    here from the raw rows (the closing note of stop 14 computed them by hand: 2.5x, 3.5x,
    3.1x, 4.5x, 1.05x, 37%)."""
    runs = []
    for name in ("gpu_h200_s14.json", "gpu_h200_s14_persist2.json"):
        with open(os.path.join(ROOT, "bench", "results", name)) as f:
            runs.append(json.load(f))
    res = {"env": runs[0]["env"]}
    for n, r in enumerate(runs):
        for k in ("step", "profile"):
            res.setdefault(k, []).extend({**row, "_run": n} for row in r.get(k) or ())
    tgt = {(t["target"], t["H"], t["B"], t["which"]): t for t in gd.targets(res)}

    def p50(run, method, H, B):
        return next(r["p50_us"] for r in runs[run]["step"] if r["method"] == method and r["H"] == H and r["B"] == B)

    t = tgt[(">= 3x torch + CUDA graph", 128, 1, "default")]
    assert t["method"] == "streamrnn pool.step" and not t["met"]
    assert t["value"] == pytest.approx(p50(0, gd.TORCH, 128, 1) / p50(0, "streamrnn pool.step", 128, 1))
    # the fastest setting is the persistent kernel's stream.step, compared with torch of its own run
    t = tgt[(">= 3x torch + CUDA graph", 128, 1, "best")]
    assert t["method"] == "streamrnn stream.step [persistent kernel]" and t["met"]
    assert t["value"] == pytest.approx(p50(1, gd.TORCH, 128, 1) / p50(1, t["method"], 128, 1))
    assert p50(1, gd.TORCH, 128, 1) != p50(0, gd.TORCH, 128, 1)
    t = tgt[("p50 <= 20 µs host to host", 128, 1, "best")]
    assert t["us"] == p50(1, "streamrnn stream.step [persistent kernel]", 128, 1) < 20 and t["met"]
    assert not tgt[("p50 <= 20 µs host to host", 512, 64, "default")]["met"]
    t = tgt[(">= 4x cuDNN", 128, 16384, "default")]
    assert t["met"] and t["value"] == pytest.approx(p50(0, gd.TORCH, 128, 16384) / p50(0, "streamrnn pool.step", 128, 16384))
    assert not tgt[(">= 15x torch + CUDA graph", 128, 1024, "default")]["met"]
    # the GEMM's rate: 2 B (I + H) 4H flops in its device time, over 132 SMs x 128 lanes x 2 x 1.98 GHz
    g = tgt[(">= 50% of float32 peak (LSTM GEMM)", 512, 16384, "default")]
    us = next(k["us"] for p in runs[0]["profile"] if (p["H"], p["B"]) == (512, 16384) for k in p["kernels"]
              if k["op"] == "lstm_gemm")
    assert g["peak_tflops"] == pytest.approx(132 * 128 * 2 * 1.98e9 / 1e12)
    assert g["value"] == pytest.approx(2 * 16384 * 1024 * 2048 / (us * 1e-6) / (132 * 128 * 2 * 1.98e9))
    assert 0.3 < g["value"] < 0.45 and not g["met"]


def test_targets_pick_and_refuse():
    tor = gd.TORCH
    res = {"env": {"gpu": "Some GPU", "cc": [9, 0], "sms": 100, "clock_mhz": 1500.0}, "step": [
        {**_row("streamrnn pool.step", 128, 1, 30.0), "_run": 0},
        {**_row("streamrnn pool.step [fast but wrong]", 128, 1, 5.0, same_as_default=False), "_run": 0},
        {**_row("streamrnn pool.step [graph, calls 1 ms apart]", 128, 1, 4.0), "_run": 0},
        {**_row(tor, 128, 1, 120.0), "_run": 0},
        {**_row("streamrnn stream.step [x]", 128, 1, 18.0), "_run": 1},
        {**_row(tor, 128, 1, 36.0), "_run": 1},
        {**_row("streamrnn pool.step", 512, 1, 25.0), "_run": 0},  # no torch row at H=512
    ], "profile": [{"H": 512, "B": 16384, "kernels": [{"op": "lstm_gemm_vec", "us": 2000.0}]}]}
    tgt = {(t["target"], t["H"], t["B"], t["which"]): t for t in gd.targets(res)}
    best = tgt[("p50 <= 20 µs host to host", 128, 1, "best")]
    assert best["method"] == "streamrnn stream.step [x]" and best["met"]  # not the wrong or the paced row
    assert tgt[(">= 3x torch + CUDA graph", 128, 1, "default")]["value"] == pytest.approx(4.0)  # 120 / 30
    assert tgt[(">= 3x torch + CUDA graph", 128, 1, "best")]["value"] == pytest.approx(2.0)  # 36 / 18: own run
    assert not tgt[(">= 3x torch + CUDA graph", 128, 1, "best")]["met"]
    no = tgt[(">= 3x torch + CUDA graph", 512, 1, "default")]
    assert no["value"] is None and no["met"] is None
    assert tgt[("p50 <= 20 µs host to host", 128, 64, "default")]["met"] is None  # not measured
    g = tgt[(">= 50% of float32 peak (LSTM GEMM)", 512, 16384, "default")]
    assert g["peak_tflops"] == pytest.approx(100 * 128 * 2 * 1.5e9 / 1e12)  # the recorded clock
    assert g["value"] == pytest.approx(2 * 16384 * 1024 * 2048 / 2e-3 / (100 * 128 * 2 * 1.5e9))
    # no clock, a GPU the table does not know: no peak, nothing claimed
    res["env"] = {"gpu": "Some GPU", "cc": [9, 0], "sms": 100}
    g = next(t for t in gd.targets(res) if "peak" in t["target"])
    assert g["peak_tflops"] is None and g["met"] is None
    assert "not measured" in gd._md([], [], res, gd.targets(res))
