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
3. **Errors and skips** of the run, which explain rows that are missing.

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
    """The nearest row before rows[i] (else after it) with ``method`` at the same H and B."""
    r = rows[i]
    same = [j for j, s in enumerate(rows) if s["method"] == method and s["H"] == r["H"] and s["B"] == r["B"]]
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


def _md(var: list, pred: list, res: dict) -> str:
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
    if res.get("errors") or res.get("skipped"):
        lines += ["", "## Errors and skips of the run", ""]
        lines += [f"- error: {e.get('what')}: {e.get('error')}" for e in res.get("errors") or ()]
        lines += [f"- skipped: {s}" for s in res.get("skipped") or ()]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = _args(argv)
    res: dict = {}
    for path in args.result:
        try:
            with open(path) as f:
                part = json.load(f)
        except (OSError, ValueError) as e:
            print(f"gpu_decide: expected a JSON file of bench/gpu_check.py, got {path!r}: {e}", file=sys.stderr)
            return 2
        for k, v in part.items():
            if isinstance(v, list):
                res.setdefault(k, []).extend(v)
            else:
                res.setdefault(k, v)
    var, pred = variants(res, args.margin), predictions(res)
    if args.json:
        print(json.dumps({"variants": var, "predictions": pred}, indent=1))
    else:
        print(_md(var, pred, res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
