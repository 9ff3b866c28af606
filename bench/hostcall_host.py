"""Host side of a pool's graph step, without a GPU (bench/NOTES.md entry 80).

``pool.step`` through a captured CUDA graph spends its host time on ``CudaPool.step``'s Python,
``_Core.pack`` (an njit call), two driver calls through cuda-bindings (``cuGraphLaunch``,
``cuStreamSynchronize``) and the copy out. ``STREAMRNN_CUDA_HOSTCALL=njit`` makes that one njit
call which calls the driver's entry points itself. This script times both on the CPU, with the
driver replaced by functions that return at once:

* ``python``: the default path, the driver calls replaced by Python functions returning
  ``(CUDA_SUCCESS,)`` (so cuda-bindings' own per-call cost, not measurable without a driver,
  is left out: the real saving is this one plus that);
* ``njit``: the fused call (``engine.cuda_stage.graph_step``), the entry points replaced by no-op C
  functions (numba ``cfunc``).

The pool is built on numba's CUDA simulator; nothing runs on a device. p50 / p99 µs per call.
Usage: ``python bench/hostcall_host.py [--calls 20000] [--rounds 5] [--batches 1,64] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from numba import cfunc  # noqa: E402


@cfunc("int32(int64, int64)")
def _nop2(a, b):
    return 0


@cfunc("int32(int64)")
def _nop1(a):
    return 0


class _FakeCu:
    """The two cuda-bindings calls of the graph path, returning success at once."""

    @staticmethod
    def cuGraphLaunch(g, s):
        return (0,)

    @staticmethod
    def cuStreamSynchronize(s):
        return (0,)


class _FakeDrv:
    cu = _FakeCu()
    OK = 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="calls per block (default 20000)")
    ap.add_argument("--rounds", type=int, default=5, help="blocks per path, alternating (default 5)")
    ap.add_argument("--H", type=int, default=128, help="hidden size = input size (default 128)")
    ap.add_argument("--batches", default="1,64", help="streams per call (default 1,64)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    import streamrnn as srnn
    from streamrnn.benchutil import interleave, machine_info, random_lstm_spec, summarize
    from streamrnn.engine import cuda_runtime, cuda_stage as ec

    model = srnn.Model(random_lstm_spec(a.H, a.H, 32), device="cuda")
    rng = np.random.default_rng(0)
    res = {"machine": machine_info(("numpy", "numba")), "H": a.H, "calls": a.calls, "rounds": a.rounds}
    print(f"host side of pool.step through a graph, the driver replaced by no-ops, H={a.H}, "
          "µs per call (p50 / p99):")
    for B in [int(b) for b in a.batches.split(",") if b]:
        pool = model.pool(B)
        ids = pool.open(B)
        X = rng.standard_normal((B, model.input_size)).astype(np.float32)
        out = np.empty((B, model.output_size), np.float32)
        core = pool._cuda.core
        core.mode, core.eng.drv = "graph", _FakeDrv()  # the Python path takes the graph branch
        core.graphs[B] = object()
        core.ghandles[B] = 0xA1
        cuda_runtime._tls.ctx = True
        core.gctx[ec.G_LAUNCH], core.gctx[ec.G_SYNC] = _nop2.address, _nop1.address
        fused = ec.graph_step(model.dtype)
        call = lambda: pool.step(ids, X, out=out)  # noqa: E731
        # each path sets its switch, then steps (the same store in both timings)
        paths = {"python": lambda: (setattr(core, "fused", None), call()),
                 "njit": lambda: (setattr(core, "fused", fused), call())}
        for fn in paths.values():
            for _ in range(200):
                fn()
        times = interleave(paths, a.calls * a.rounds, rounds=a.rounds)
        core.graphs.clear()
        core.eng.drv = None
        for name, ns in times.items():
            r = res[f"B={B} {name}"] = summarize(ns)
            print(f"  B={B:5d} {name:7s} {r['p50_us']:6.2f} / {r['p99_us']:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
