#!/usr/bin/env python
"""Static check of streamrnn's CUDA kernels without a GPU: PTX and ptxas figures per kernel.

    python bench/ptx_check.py [--H 128,512] [--cc 9.0] [--json]

For an LSTM + Linear head model (float32) of each hidden size H, compiles the kernels the CUDA
engine would build on a real GPU, through numba-cuda to PTX for the chosen compute capability,
then with ``ptxas -v`` to machine code, and prints per kernel: registers, spills, static shared
memory, and the instruction mix of the PTX (FMAs, shared and global loads, integer ops, and
``ld.shared.vec``: vector shared loads (``ld.shared.v2`` / ``.v4``, the GEMM's vector layout,
entry 83), ``ld_after_st``: global loads right after a global store, which the compiler may not move above
it where it cannot rule out aliasing: a chain of round trips when the store waits for the load
before it; a static count, so a loop body shows once). What it answers
before a device session: does a change keep the accumulators in registers (no local memory),
how many registers (occupancy), how much of the instruction stream is arithmetic (bench/NOTES.md
entries 36-37), which loads form a latency chain (entries 71-74). It needs numba-cuda, libNVVM and ``ptxas`` (a CUDA toolkit;
``CUDA_HOME`` pointing at it), not a GPU or a driver: numba-cuda's two device queries on the
compile path (the current device's compute capability, the architectures NVRTC supports) are
answered by stand-ins. Timings need a GPU: ``bench/gpu_check.py``.

Exit status: 0 when every kernel compiled without spills, 1 when one spills, 2 when the
toolchain is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--H", default="128,512", help="hidden sizes (I = H, Linear head of 32)")
    p.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 (H100 / H200)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args(argv)


def _stand_ins(cc):
    """Let numba-cuda compile to PTX on a machine without a GPU or NVRTC."""
    import numba.cuda.cuda_paths as cp
    import numba.cuda.cudadrv.nvrtc as nvrtc
    import numba.cuda.dispatcher as disp

    class _Dev:
        compute_capability = cc

    disp.get_current_device = lambda: _Dev()
    nvrtc.get_supported_ccs = lambda: ((7, 5), (8, 0), (8, 6), (8, 9), (9, 0), cc)
    cp._get_nvrtc_path = lambda: ("stand-in", None)


_OPS = {
    "fma": r"\bfma\.rn\.f(32|64)",
    "ld.shared": r"\bld\.shared\.",
    "ld.shared.vec": r"\bld\.shared\.v[24]\.",
    "ld.global": r"\bld\.global\.",
    "ld.generic": r"\bld\.(f32|f64|u64|s64)\b",
    "int64": r"\b(add|sub|mul\.lo|shl|shr|and|or|selp)\.[sub]64\b",
    "bar.sync": r"\bbar\.sync\b",
}


def _mix(ptx: str) -> dict:
    res = {k: len(re.findall(v, ptx)) for k, v in _OPS.items()}
    # global loads that come right after a global store in program order: none may move above
    # it where the compiler cannot rule out aliasing (a latency-bound chain; NOTES entry 71)
    ops = re.findall(r"\b(ld|st)\.global\.", ptx)
    res["ld_after_st"] = sum(1 for a, b in zip(ops, ops[1:]) if a == "st" and b == "ld")
    return res


def _ptxas(ptx: str, cc) -> dict:
    arch = f"sm_{cc[0]}{cc[1]}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        out = subprocess.run(["ptxas", f"-arch={arch}", "-v", src, "-o", os.path.join(d, "k.o")],
                             capture_output=True, text=True)
        if out.returncode:  # calls into cudadevrt (grid sync): compile relocatable (no smem line)
            out = subprocess.run(["ptxas", f"-arch={arch}", "-v", "-c", src, "-o", os.path.join(d, "k.o")],
                                 capture_output=True, text=True)
    text = out.stdout + out.stderr
    res = {"ok": out.returncode == 0}
    for key, pat in (("regs", r"Used (\d+) registers"), ("spill_stores", r"(\d+) bytes spill stores"),
                     ("spill_loads", r"(\d+) bytes spill loads"), ("stack", r"(\d+) bytes stack frame"),
                     ("smem", r"(\d+) bytes smem")):
        m = re.search(pat, text)
        res[key] = int(m.group(1)) if m else 0
    if not res["ok"]:
        res["error"] = text.strip()[-500:]
    return res


def _compile(k, sig, cc) -> str:
    from numba import cuda

    ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=cc, launch_bounds=k.targetoptions.get("launch_bounds"))
    return ptx


def _spills(k, sig, cc) -> bool:
    r = _ptxas(_compile(k, sig, cc), cc)
    return bool(r["spill_stores"] or r["spill_loads"] or r["stack"])


def _kernels(H: int, cc=(9, 0)):
    """(name, dispatcher, argument types) of the kernels a float32 LSTM(H) + Linear(32) model
    uses: the pool step of every tile bucket, and the sequence kernels of run."""
    import numpy as np
    from numba import types as nbt

    from streamrnn.engine import cuda_tiles as ce
    from streamrnn.layers.dense.cuda import make_linear, make_linear_gemm
    from streamrnn.layers.lstm.cuda import make_lstm_gemm, make_lstm_seq, make_lstm_seq_grid, make_lstm_step

    f, i64 = nbt.float32, nbt.int64
    v, m, A = nbt.Array(f, 1, "C"), nbt.Array(f, 2, "C"), nbt.Array(f, 2, "A")
    ids = nbt.Array(i64, 1, "A")
    step_sig = (v, ids, A, m, m, m, i64)
    acts = (0, 1.0, 0.0, 1, 1.0, 0.0, 1, 1.0, 0.0)
    WT, RT, BO, HO, CO = 0, 4 * H * H, 8 * H * H, 0, H
    out = []
    tiles = ce._tiles()
    for b, (mx, _) in enumerate(tiles):
        if ce._gemm_tile(b, H, 4, 4) is not None:
            for stage, vec in (("pipe", False), ("pipe", True), ("loop", False)):
                gt = ce._gemm_tile(b, H, 4, 4, stage, vec=vec)
                while True:
                    k = make_lstm_gemm("float32", gt, H, H, H, 0, 0, WT, RT, BO, -1, 0.0, False, acts, HO, CO,
                                       False, stage == "pipe", vec)
                    # as the engine's _fitted_gemm: a vector-layout tile that spills gets half the chunk
                    if not (vec and k.vec and gt.BK > 8 and _spills(k, step_sig, cc)):
                        break
                    gt = gt._replace(BK=gt.BK // 2)
                if vec and not k.vec:
                    continue  # the tile cannot take the vector layout (TM < 4)
                out.append((f"lstm_gemm n<={mx} {tuple(gt)} {stage}{' vec' if vec else ''}", k, step_sig))
        else:
            t = ce._tile(b, H, 4, 4)
            k = make_lstm_step("float32", t, H, H, H, 0, 0, WT, RT, BO, -1, 0.0, False, acts, HO, CO, False)
            out.append((f"lstm_step n<={mx} {tuple(t)}", k, step_sig))
        # the head reads the LSTM's h (columns 0..H-1) and commits it: as a tiled GEMM where the
        # bucket has a dense GemmTile (the default), and the row-tile kernel (STREAMRNN_CUDA_DENSE=tile)
        hargs = (H, 32, 0, H, BO + 4 * H, BO, -1, 0.0, 0.0, True, (0, HO, H))
        dgt = ce._gemm_tile(b, 32, 1, 4, dense=True)
        if dgt is not None:
            out.append((f"linear_gemm head + commit n<={mx} {tuple(dgt)}", make_linear_gemm("float32", dgt, *hargs),
                        (v, ids, m, m, m, m, i64)))
        t = ce._tile(b, 32, 1, 4)
        out.append((f"linear head + commit n<={mx} {tuple(t)}{' tile' if dgt is not None else ''}",
                    make_linear("float32", t, *hargs), (v, ids, m, m, m, m, i64)))
    # a PyTorch GRU(H, H) step as a tiled GEMM (make_gru_gemm, entry 87), where a bucket has a tile
    from streamrnn.layers.gru.cuda import make_gru_gemm

    for b, (mx, _) in enumerate(tiles):
        ggt = ce._gemm_tile(b, H, 4, 4, gru=True)
        if ggt is not None:
            k = make_gru_gemm("float32", ggt, H, H, 0, 0, 0, 3 * H * H, 6 * H * H, 6 * H * H + 3 * H, 0.0,
                              acts[:6], 0, False)
            out.append((f"gru_gemm n<={mx} {tuple(ggt)} {k.staging}", k, step_sig))
    # the persistent one-row step kernel (STREAMRNN_CUDA_PERSIST=1): both bodies of bucket 0
    from streamrnn.engine.persist import make_server

    t0, t1 = ce._tile(0, H, 4, 4), ce._tile(0, 32, 1, 4)
    b0 = make_lstm_step("float32", t0, H, H, H, 0, 0, WT, RT, BO, -1, 0.0, False, acts, HO, CO, False)
    b1 = make_linear("float32", t1, H, 32, 0, H, BO + 4 * H, BO, -1, 0.0, 0.0, True, (0, HO, H))
    srv = make_server(((b0.body, True, 1, -(-H // (t0.U * t0.UPT)), None),
                       (b1.body, False, 1, -(-32 // (t1.U * t1.UPT)), None)),
                      t0.U * t0.KS * t0.RS, 1 + H // 2)
    w = nbt.Array(i64, 1, "C")
    srv_sig = (v, w, w, ids, A, m, m, m, w, w, w, w, i64, i64, nbt.boolean)
    out.append(("persistent step (lstm_step + linear) n=1", srv, srv_sig))
    srv_st = make_server(((b0.body, True, 1, -(-H // (t0.U * t0.UPT)), None),
                          (b1.body, False, 1, -(-32 // (t1.U * t1.UPT)), None)),
                         t0.U * t0.KS * t0.RS, 1 + H // 2, (), True)
    out.append(("persistent step with phase stamps (benchmarks) n=1", srv_st, srv_sig))
    # ... with the LSTM weights in shared memory (STREAMRNN_CUDA_PERSIST=onchip)
    from streamrnn.layers.lstm.cuda import make_lstm_onchip

    oc = make_lstm_onchip("float32", t0.U, t0.KS, H, H, H, 0, 0, WT, RT, BO, -1, 0.0, False, acts, HO, CO, False)
    srv2 = make_server(((oc.body, True, 1, -(-H // t0.U), oc.init),
                        (b1.body, False, 1, -(-32 // (t1.U * t1.UPT)), None)),
                       t0.U * t0.KS * t0.RS, 1 + H // 2, (oc.words, 0))
    out.append((f"persistent step, LSTM weights on chip ({oc.words * 4 // 1024} KiB per block) n=1", srv2, srv_sig))
    NT = min(256, max(32, -(-H // 32) * 32))
    seq_sig = (v, m, m, m, nbt.Array(i64, 1, "C"), nbt.Array(i64, 1, "C"), i64, i64)
    k = make_lstm_seq("float32", NT, 1, H, H, RT, -1, -1, 0.0, False, acts, HO, CO, 0, False)
    out.append((f"lstm_seq (per block) NT={NT}", k, seq_sig))
    # the per-block sequence kernels of the other cells, and of an LSTM with a projection (HR =
    # H / 2) over 8 sequences a block (the most the engine gives a block, _seq_cfg)
    from streamrnn.layers.gru.cuda import make_gru_seq
    from streamrnn.layers.rnn.cuda import make_rnn_seq

    k = make_lstm_seq("float32", NT, 8, H, H // 2, RT, -1, 8 * H * H + 4 * H, 0.0, False, acts, HO, CO, 0, False)
    out.append((f"lstm_seq (per block) NB=8 NT={NT} projection HR={H // 2}", k, seq_sig))
    for lbr in (True, False):
        k = make_gru_seq("float32", NT, 1, H, 3 * H * H, 6 * H * H + 3 * H, lbr, 0.0, acts[:6], 0, 0, False)
        out.append((f"gru_seq (per block) NT={NT} linear_before_reset={lbr}", k, seq_sig))
    k = make_rnn_seq("float32", NT, 1, H, H * H, 0.0, acts[:3], 0, 0, False)
    out.append((f"rnn_seq (per block) NT={NT}", k, seq_sig))
    UPB = -(-H // 132)
    C = 4 * UPB
    KS = max(1, 128 // C)
    grid_sig = (v, m, m, m, nbt.Array(i64, 1, "C"), nbt.Array(i64, 1, "C"), nbt.Array(f, 3, "C"), m,
                nbt.Array(i64, 1, "C"), i64, i64, i64, i64, i64)
    for sync, name in ((1, "cg"), (2, "atomic")):
        k = make_lstm_seq_grid("float32", C * KS, UPB, 1, H, RT, -1, 0.0, False, acts, HO, CO, 0, False, sync)
        out.append((f"lstm_seq_grid UPB={UPB} NT={C * KS} barrier={name}", k, grid_sig))
    BM = 32 if H <= 128 else 4  # the largest group of sequences the engine gives this H (GRID_GROUP, shared memory)
    k = make_lstm_seq_grid("float32", C * KS, UPB, BM, H, RT, -1, 0.0, False, acts, HO, CO, 0, False, 1)
    out.append((f"lstm_seq_grid UPB={UPB} NT={C * KS} groups of {BM} barrier=cg", k, grid_sig))
    # a simple RNN(H, H)'s step as a tiled GEMM (entry 89), where a bucket has a tile
    from streamrnn.layers.rnn.cuda import make_rnn_gemm, make_rnn_seq_grid

    for b, (mx, _) in enumerate(ce._tiles()):
        rgt = ce._gemm_tile(b, H, 1, 4, rnn=True)
        if rgt is not None:
            k = make_rnn_gemm("float32", rgt, H, H, 0, 0, 0, H * H, 2 * H * H, 0.0, acts[:3], 0, False)
            out.append((f"rnn_gemm n<={mx} {tuple(rgt)} {k.staging}", k, step_sig))
    KSr = max(1, 128 // UPB)
    k = make_rnn_seq_grid("float32", UPB * KSr, UPB, 1, H, H * H, 0.0, acts[:3], 0, 0, False, 1)
    out.append((f"rnn_seq_grid UPB={UPB} NT={UPB * KSr} barrier=cg", k, grid_sig))
    # a PyTorch GRU's persistent sequence kernel (entry 88): 3 gates per unit
    from streamrnn.layers.gru.cuda import make_gru_seq_grid

    Cg = 3 * UPB
    KSg = max(1, 128 // Cg)
    k = make_gru_seq_grid("float32", Cg * KSg, UPB, 1, H, 3 * H * H, 6 * H * H + 3 * H, 0.0, acts[:6], 0, 0, False, 1)
    out.append((f"gru_seq_grid UPB={UPB} NT={Cg * KSg} barrier=cg", k, grid_sig))
    if BM < 32:  # STREAMRNN_CUDA_GRID_DYN=1: the shared arrays in dynamic shared memory (entry 84)
        k = make_lstm_seq_grid("float32", C * KS, UPB, 32, H, RT, -1, 0.0, False, acts, HO, CO, 0, False, 1, False, True)
        out.append((f"lstm_seq_grid UPB={UPB} NT={C * KS} groups of 32 barrier=cg, dynamic shared memory "
                    f"({k.smem_items * 4 // 1024} KiB)", k, grid_sig))
    del np
    return out


def main(argv=None) -> int:
    args = _args(argv)
    if shutil.which("ptxas") is None:
        print("ptx_check: expected ptxas on PATH (a CUDA toolkit), got none", file=sys.stderr)
        return 2
    cc = tuple(int(x) for x in args.cc.split("."))
    try:
        from numba import cuda

        _stand_ins(cc)
    except Exception as e:  # noqa: BLE001
        print(f"ptx_check: expected numba-cuda, got {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    rows = []
    for H in [int(h) for h in args.H.split(",") if h]:
        for name, k, sig in _kernels(H, cc):
            try:
                ptx = _compile(k, sig, cc)
            except Exception as e:  # noqa: BLE001
                print(f"ptx_check: could not compile {name} (H={H}): {type(e).__name__}: {e}", file=sys.stderr)
                return 2
            rows.append({"H": H, "kernel": name, **_ptxas(ptx, cc), **_mix(ptx), "ptx_lines": ptx.count("\n")})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        cols = ["H", "kernel", "regs", "spill_stores", "smem", "fma", "ld.shared", "ld.shared.vec", "ld.global",
                "ld_after_st", "int64", "ptx_lines"]
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
        print("\nStatic counts in the PTX (not executed instructions); registers and spills from ptxas.")
    if not all(r["ok"] for r in rows):
        return 2
    return 1 if any(r["spill_stores"] or r["spill_loads"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
