#!/usr/bin/env python
"""Read a ``bench/gpu_check.py`` result and say what it decides: every A/B variant against the
row it replaces, measured in the same run, and every prediction of ``bench/NOTES.md`` against
what was measured.

    python bench/gpu_decide.py gpu.json [more.json ...] [--json]

Several files (runs of different sections on the same machine) are read as one run.

Without a GPU: the file of a device run (``bench/results/gpu_h200_*.json``) is all it needs.
Three tables:

1. **Variants.** Each row ``X [variant]`` of the step / seq sections against its reference
   at the same H and B, taken from the same run: the nearest earlier row of ``X`` (or of the
   reference in ``PAIRS``, where ``X`` is not the right one). Shows the p50 ratio, then the
   verdict: ``faster`` or ``slower`` beyond ``--margin`` (default 5%), else ``same``.
   ``WRONG`` where the variant's outputs differed from the reference's, or a refused call
   changed a state. A variant is a candidate default only if it is faster and not WRONG.
2. **Predictions.** Each expectation of a NOTES entry in ``PREDICTIONS``: ``hit`` within the
   expected range (µs, or a ratio), ``better`` below it, ``missed`` above it, ``not measured`` where the run
   has no such row (another kernel name, a skipped section). A miss asks for the reason
   before the next change (the guide: "if it missed, find out why").
3. **Targets of issue 5**, read from the run: host-to-host p50 against 20 µs (B <= 1024), the
   speed-ups over torch + CUDA graph (TF32 off, the row of the same run) at B=1 and at H=128
   B=1024, over cuDNN (the same torch rows) at B=16384, and the H=512 B=16384 LSTM GEMM's rate
   as a share of the card's float32 peak (SMs x FP32 lanes per SM x 2 x clock). Each for the
   default (``streamrnn pool.step``) and for the fastest streamrnn row of any setting (an
   opt-in one is named), so that the closing note's table is the script's, not arithmetic
   by hand.
4. **Errors and skips** of the run, which explain rows that are missing.

Exit status: 0, or 2 when the file cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys

#: (variant method, reference method): where a variant's reference is not its method without
#: the bracket (persist, hostcall and seq variants compare with a sibling variant)
PAIRS = (
    ("streamrnn pool.step [persistent, host side in Python (before NOTES 79)]",
     "streamrnn pool.step [persistent kernel, STREAMRNN_CUDA_PERSIST=1]"),
    ("streamrnn stream.step [persistent, host side in Python (before NOTES 79)]",
     "streamrnn stream.step [persistent kernel]"),
    ("streamrnn stream.step [persistent kernel, LSTM weights on chip, STREAMRNN_CUDA_PERSIST=onchip]",
     "streamrnn stream.step [persistent kernel]"),
    ("streamrnn stream.step [on chip, calls 1 ms apart]", "streamrnn pool.step [persistent, calls 1 ms apart]"),
    ("streamrnn pool.step [one njit call with the driver calls, STREAMRNN_CUDA_HOSTCALL=njit]",
     "streamrnn pool.step [graph, default]"),
    ("streamrnn model.run [persistent grid, counter barrier, STREAMRNN_CUDA_GRIDSYNC=atomic]",
     "streamrnn model.run [persistent grid, STREAMRNN_CUDA_SEQ=grid]"),
    ("streamrnn model.run [persistent grid, dynamic shared memory, STREAMRNN_CUDA_GRID_DYN=1]",
     "streamrnn model.run [persistent grid, STREAMRNN_CUDA_SEQ=grid]"),
)

#: (NOTES entry, what, kind, method or op, H, B, low, high): the expected range of a measured
#: figure, in µs. kind "step": p50 of a step-section row; "seq": µs per step of a seq row;
#: "kernel": device time of an op of the default step (profile's kernel table); "vkernel": of
#: an op in the kernel times a variant row carries (method = that row's); "ratio": a variant
#: row's p50 over its reference's (table 1; no unit).
VEC = "streamrnn pool.step [LSTM GEMM tiles in the vector layout, STREAMRNN_CUDA_GEMM_VEC=1]"
GRID = "streamrnn model.run [persistent grid, STREAMRNN_CUDA_SEQ=grid]"
DYN = "streamrnn model.run [persistent grid, dynamic shared memory, STREAMRNN_CUDA_GRID_DYN=1]"
CH4 = "streamrnn pool.step [in 4 chunks, STREAMRNN_CUDA_CHUNKS=4]"
GRU0 = "streamrnn GRU pool.step [row-tile GRU kernels, STREAMRNN_CUDA_GEMM=0]"
GRUB = "streamrnn GRU model.run [per-block kernel, STREAMRNN_CUDA_SEQ=block]"
SEQG = "streamrnn model.run [GEMM per step, STREAMRNN_CUDA_SEQ=gemm]"
PREDICTIONS = (
    ("71-72", "head as tiled GEMM + batched commit", "kernel", "linear_gemm", 512, 64, 2.0, 6.0),
    ("71-72", "head as tiled GEMM + batched commit", "kernel", "linear_gemm", 128, 64, 2.0, 5.0),
    ("71-72", "head as tiled GEMM + batched commit", "kernel", "linear_gemm", 128, 1024, 2.5, 6.0),
    ("71-72", "head as tiled GEMM + batched commit", "kernel", "linear_gemm", 512, 1024, 3.5, 8.0),
    ("71-72", "head as tiled GEMM + batched commit", "kernel", "linear_gemm", 128, 16384, 10.0, 25.0),
    ("71-72", "head as tiled GEMM + batched commit", "kernel", "linear_gemm", 512, 16384, 20.0, 50.0),
    ("71", "LSTM GEMM epilogue loads first", "kernel", "lstm_gemm", 128, 1024, 22.0, 29.0),
    ("71-72, 80", "pool.step", "step", "streamrnn pool.step", 512, 64, 60.0, 80.0),
    ("71-72, 80", "pool.step", "step", "streamrnn pool.step", 128, 64, 30.0, 42.0),
    ("71-72, 80", "pool.step", "step", "streamrnn pool.step", 128, 1024, 85.0, 110.0),
    ("71-72, 80", "pool.step", "step", "streamrnn pool.step", 512, 1024, 480.0, 560.0),
    ("71-72, 80", "pool.step", "step", "streamrnn pool.step", 128, 16384, 1100.0, 1280.0),
    ("71-72, 80", "pool.step", "step", "streamrnn pool.step", 512, 16384, 4300.0, 4800.0),
    ("74", "one-row LSTM step, weights in batches", "kernel", "lstm_step", 512, 1, 6.0, 10.0),
    ("74, 80", "pool.step of one row (graph)", "step", "streamrnn pool.step", 512, 1, 20.0, 27.0),
    ("80", "pool.step of one row (graph)", "step", "streamrnn pool.step", 128, 1, 20.0, 24.5),
    ("73", "4 chunks", "step", CH4, 512, 1024, 350.0, 450.0),
    ("75", "groups' h loaded in batches", "seq", GRID, 128, 64, 14.0, 19.0),
    ("75", "groups' h loaded in batches", "seq", GRID, 128, 16, 9.0, 13.0),
    ("79", "persistent stream.step, host side in one call", "step", "streamrnn stream.step [persistent kernel]",
     128, 1, 15.0, 18.5),
    ("79", "persistent stream.step, host side in one call", "step", "streamrnn stream.step [persistent kernel]",
     512, 1, 21.0, 25.5),
    ("83", "LSTM GEMM, vector layout", "vkernel", VEC + "|lstm_gemm", 512, 1024, 150.0, 190.0),
    ("83", "LSTM GEMM, vector layout", "vkernel", VEC + "|lstm_gemm", 128, 1024, 22.0, 29.0),
    ("83", "LSTM GEMM, vector layout", "vkernel", VEC + "|lstm_gemm", 512, 16384, 2200.0, 2500.0),
    ("83", "LSTM GEMM, vector layout", "vkernel", VEC + "|lstm_gemm", 128, 16384, 160.0, 195.0),
    ("87", "GRU row tiles / tiled GEMM (a ratio)", "ratio", GRU0, 128, 1024, 1.15, 1.6),
    ("87", "GRU row tiles / tiled GEMM (a ratio)", "ratio", GRU0, 512, 1024, 1.4, 2.2),
    ("87", "GRU row tiles / tiled GEMM (a ratio)", "ratio", GRU0, 128, 16384, 1.15, 1.6),
    ("87", "GRU row tiles / tiled GEMM (a ratio)", "ratio", GRU0, 512, 16384, 1.8, 3.0),
    ("88", "GRU run: per-block / persistent kernel (a ratio)", "ratio", GRUB, 128, 1, 2.0, 3.5),
    ("88", "GRU run: per-block / persistent kernel (a ratio)", "ratio", GRUB, 512, 1, 8.0, 20.0),
    ("88", "GRU run: per-block / persistent kernel (a ratio)", "ratio", GRUB, 128, 16, 1.3, 2.5),
    ("88", "GRU run: per-block / persistent kernel (a ratio)", "ratio", GRUB, 512, 16, 3.0, 7.0),
    ("84", "sequence groups of 32 at H=512", "seq", DYN, 512, 64, 25.0, 40.0),
    ("102", "run: GEMM per step / default (a ratio)", "ratio", SEQG, 512, 64, 0.3, 0.7),
    ("102", "run: GEMM per step / default (a ratio)", "ratio", SEQG, 512, 256, 0.2, 0.6),
    ("102", "run: GEMM per step / default (a ratio)", "ratio", SEQG, 512, 1024, 0.7, 1.3),
    ("102", "run: GEMM per step / default (a ratio)", "ratio", SEQG, 128, 64, 1.5, 3.0),
    ("102", "run: GEMM per step / default (a ratio)", "ratio", SEQG, 128, 1024, 0.9, 1.8),
    ("84", "sequence groups of 32 at H=512", "seq", DYN, 512, 16, 10.0, 15.0),
)


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", nargs="+", help="JSON written by bench/gpu_check.py --out (several: one run)")
    p.add_argument("--margin", type=float, default=0.05, help="relative p50 change counted as a difference")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    return p.parse_args(argv)


def _value(row: dict, kind: str) -> float:
    return row["us_per_step"] if kind == "seq" else row["p50_us"]


def _reference(rows: list, i: int, method: str):
    """The nearest row before rows[i] (else after it) with ``method`` at the same H and B, of
    the same run (file) where there is one."""
    r = rows[i]
    same = [j for j, s in enumerate(rows) if s["method"] == method and s["H"] == r["H"] and s["B"] == r["B"]]
    run = [j for j in same if rows[j].get("_run") == r.get("_run")]
    same = run or same
    before = [j for j in same if j < i]
    if before:
        return rows[before[-1]]
    return rows[same[0]] if same else None


def variants(res: dict, margin: float = 0.05) -> list:
    """Table 1: each variant row against its reference, same run."""
    pairs = dict(PAIRS)
    out = []
    for kind in ("step", "seq"):
        rows = res.get(kind) or []
        for i, r in enumerate(rows):
            m = r["method"]
            if " [" not in m or not m.startswith("streamrnn"):
                continue
            ref_m = pairs.get(m, m.split(" [")[0])
            ref = _reference(rows, i, ref_m)
            if ref is None or ref is r:
                continue
            v, b = _value(r, kind), _value(ref, kind)
            ratio = v / b if b > 0 else float("nan")
            wrong = r.get("same_as_default") is False or r.get("parity_ok") is False
            verdict = "WRONG" if wrong else "faster" if ratio < 1 - margin else "slower" if ratio > 1 + margin else "same"
            out.append({"section": kind, "H": r["H"], "B": r["B"], "variant": m, "reference": ref_m,
                        "variant_us": v, "reference_us": b, "ratio": ratio, "verdict": verdict})
    return out


def _kernel_us(ops, op: str):
    us = [k["us"] for k in ops or () if k.get("op") == op]
    return us[0] if us else None


def _measured(res: dict, kind: str, what: str, H: int, B: int):
    if kind == "ratio":
        v = [v for v in variants(res) if v["variant"] == what and v["H"] == H and v["B"] == B]
        return v[0]["ratio"] if v else None
    if kind in ("step", "seq"):
        rows = [r for r in res.get(kind) or () if r["method"] == what and r["H"] == H and r["B"] == B]
        return _value(rows[0], kind) if rows else None
    if kind == "kernel":
        prof = [p for p in res.get("profile") or () if p["H"] == H and p["B"] == B]
        return _kernel_us(prof[0].get("kernels"), what) if prof else None
    method, op = what.split("|")
    rows = [r for r in res.get("step") or () if r["method"] == method and r["H"] == H and r["B"] == B]
    return _kernel_us(rows[0].get("kernels"), op) if rows else None


def predictions(res: dict) -> list:
    """Table 2: each prediction of PREDICTIONS against the run."""
    out = []
    for entry, what, kind, sel, H, B, lo, hi in PREDICTIONS:
        v = _measured(res, kind, sel, H, B)
        verdict = "not measured" if v is None else "better" if v < lo else "missed" if v > hi else "hit"
        out.append({"entry": entry, "what": what, "kind": kind, "row": sel, "H": H, "B": B,
                    "expected_us": [lo, hi], "measured_us": v, "verdict": verdict})
    return out


#: the torch row the targets compare with (float32 without TF32, replayed CUDA graph)
TORCH = "torch nn.LSTM CUDA graph (TF32 off)"
#: the default path's row of the step section
DEFAULT = ("streamrnn pool.step", "streamrnn pool.step [graph, default]")
#: boost clock (MHz) by GPU name, for runs that did not record it (gpu_check records
#: ``clock_mhz`` since stop 20); FP32 lanes per SM by compute capability
CLOCK_MHZ = (("H200", 1980), ("H100 PCIe", 1755), ("H100 NVL", 1785), ("H100", 1980))
FP32_LANES = {(9, 0): 128, (8, 9): 128, (8, 6): 128, (8, 0): 64, (7, 0): 64}


def _host_rows(rows: list, H: int, B: int) -> list:
    """(index, row) of the streamrnn rows at (H, B) that time the API host to host (pool.step
    or stream.step, back to back), with outputs not found different from the default's."""
    return [(i, r) for i, r in enumerate(rows) if r["H"] == H and r["B"] == B
            and r["method"].startswith(("streamrnn pool.step", "streamrnn stream.step"))
            and "apart" not in r["method"] and r.get("same_as_default") is not False
            and r.get("parity_ok") is not False]


def _torch_us(rows: list, i: int):
    """p50 of the TORCH row of rows[i]'s run and size (``_reference``), or None."""
    ref = _reference(rows, i, TORCH)
    return None if ref is None else ref["p50_us"]


def peak_tflops(env: dict):
    """The card's float32 peak (TFLOP/s) from the run's env: SMs x FP32 lanes x 2 x clock."""
    sms, cc, name = env.get("sms"), tuple(env.get("cc") or ()), str(env.get("gpu", ""))
    mhz = env.get("clock_mhz") or next((c for n, c in CLOCK_MHZ if n in name), None)
    lanes = FP32_LANES.get(cc)
    if not (sms and mhz and lanes):
        return None
    return sms * lanes * 2 * mhz * 1e6 / 1e12


def targets(res: dict) -> list:
    """Table 3: the targets of issue 5 against the run, default and best setting."""
    rows = res.get("step") or []
    out = []

    def add(target, H, B, kind, limit, i_def, i_best):
        for which, i in (("default", i_def), ("best", i_best)):
            if i is None:
                out.append({"target": target, "H": H, "B": B, "which": which, "method": None, "us": None,
                            "value": None, "limit": limit, "met": None})
                continue
            r = rows[i]
            if kind == "us":
                v = r["p50_us"]
                met = v <= limit
            else:  # a speed-up over torch: its p50 over ours
                t = _torch_us(rows, i)
                v = None if t is None else t / r["p50_us"]
                met = None if v is None else v >= limit
            out.append({"target": target, "H": H, "B": B, "which": which, "method": r["method"],
                        "us": r["p50_us"], "value": v, "limit": limit, "met": met})

    def pick(H, B, ratio):
        cand = _host_rows(rows, H, B)
        if ratio:  # only rows with a torch row to compare with
            cand = [(i, r) for i, r in cand if _torch_us(rows, i) is not None]
        d = [i for i, r in cand if r["method"] in DEFAULT]
        best = min(cand, key=lambda ir: ir[1]["p50_us"])[0] if cand else None
        return (d[0] if d else None), best

    for H in (128, 512):
        for B in (1, 64, 1024):
            add("p50 <= 20 µs host to host", H, B, "us", 20.0, *pick(H, B, False))
    for H in (128, 512):
        add(">= 3x torch + CUDA graph", H, 1, "x", 3.0, *pick(H, 1, True))
    add(">= 15x torch + CUDA graph", 128, 1024, "x", 15.0, *pick(128, 1024, True))
    add(">= 4x cuDNN", 128, 16384, "x", 4.0, *pick(128, 16384, True))
    add(">= par with cuDNN", 512, 16384, "x", 1.0, *pick(512, 16384, True))
    # the LSTM GEMM of the default step at H=512 B=16384 (gpu_check's step model: I = H)
    peak = peak_tflops(res.get("env") or {})
    prof = [p for p in res.get("profile") or () if p["H"] == 512 and p["B"] == 16384]
    us = [k["us"] for p in prof for k in p.get("kernels") or () if str(k.get("op", "")).startswith("lstm_gemm")]
    H, B = 512, 16384
    tf = 2 * B * (H + H) * 4 * H / (us[0] * 1e-6) / 1e12 if us else None
    out.append({"target": ">= 50% of float32 peak (LSTM GEMM)", "H": H, "B": B, "which": "default",
                "method": "lstm_gemm kernel", "us": us[0] if us else None, "tflops": tf, "peak_tflops": peak,
                "value": None if tf is None or peak is None else tf / peak, "limit": 0.5,
                "met": None if tf is None or peak is None else tf / peak >= 0.5})
    return out


def _md(var: list, pred: list, res: dict, tgt: list = ()) -> str:
    env = res.get("env") or {}
    lines = [f"# gpu_decide: {env.get('gpu', '?')}, numba-cuda {env.get('numba_cuda', '?')}, "
             f"torch {env.get('torch', '?')}", "", "## Variants against their reference (same run, p50)", "",
             "| section | H | B | variant | reference | variant µs | reference µs | ratio | verdict |",
             "|---|---|---|---|---|---|---|---|---|"]
    for v in var:
        lines.append(f"| {v['section']} | {v['H']} | {v['B']} | {v['variant']} | {v['reference']} | "
                     f"{v['variant_us']:.1f} | {v['reference_us']:.1f} | {v['ratio']:.2f} | {v['verdict']} |")
    lines += ["", "## Predictions of bench/NOTES.md", "",
              "| entry | what | H | B | row | expected | measured | verdict |", "|---|---|---|---|---|---|---|---|"]
    for p in pred:
        m = "" if p["measured_us"] is None else f"{p['measured_us']:.1f}"
        lines.append(f"| {p['entry']} | {p['what']} | {p['H']} | {p['B']} | {p['row']} | "
                     f"{p['expected_us'][0]:g}-{p['expected_us'][1]:g} | {m} | {p['verdict']} |")
    if tgt:
        lines += ["", "## Targets of issue 5", "",
                  "| target | H | B | row | method | p50 µs | value | met |", "|---|---|---|---|---|---|---|---|"]
        for t in tgt:
            v = t["value"]
            val = "" if v is None or t["target"].startswith("p50") else (
                f"{100 * v:.0f}% ({t['tflops']:.1f} of {t['peak_tflops']:.1f} TFLOP/s)" if "peak_tflops" in t
                else f"{v:.2f}x")
            met = {True: "met", False: "not met", None: "not measured"}[t["met"]]
            us = "" if t["us"] is None else f"{t['us']:.1f}"
            lines.append(f"| {t['target']} | {t['H']} | {t['B']} | {t['which']} | {t['method'] or ''} | {us} | "
                         f"{val} | {met} |")
    if res.get("errors") or res.get("skipped"):
        lines += ["", "## Errors and skips of the run", ""]
        lines += [f"- error: {e.get('what')}: {e.get('error')}" for e in res.get("errors") or ()]
        lines += [f"- skipped: {s}" for s in res.get("skipped") or ()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _args(argv)
    res: dict = {}
    for n, path in enumerate(args.result):
        try:
            with open(path) as f:
                part = json.load(f)
        except (OSError, ValueError) as e:
            print(f"gpu_decide: expected a JSON file of bench/gpu_check.py, got {path!r}: {e}", file=sys.stderr)
            return 2
        for k, v in part.items():
            if isinstance(v, list):  # rows tagged with their run (file): ratios within one run
                res.setdefault(k, []).extend({**r, "_run": n} if isinstance(r, dict) else r for r in v)
            else:
                res.setdefault(k, v)
    var, pred, tgt = variants(res, args.margin), predictions(res), targets(res)
    if args.json:
        print(json.dumps({"variants": var, "predictions": pred, "targets": tgt}, indent=1))
    else:
        print(_md(var, pred, res, tgt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
