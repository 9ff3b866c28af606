"""Floor of a persistent kernel fed through mapped (pinned, host-mapped) memory (NOTES 65).

A kernel stays resident and polls a command word in host memory with ``ld.volatile``
(``streamrnn.layers.cuda_sync.ld_volatile``; numba's ``cuda.ldcv`` is an inline asm without side
effects, which LLVM hoists out of the poll loop: the first version of this probe hung on the
H200 for that reason, NOTES 65); the host writes the word and spins on an acknowledgement the
kernel stores back. Times, host clock, per round trip (p50 / p99 µs):

* ``G=1``: one block, no grid sync: the PCIe round trip plus the poll;
* ``G=16 / 64 coop``: a cooperative grid, block 0 polls, two grid syncs per round (broadcast
  of the command, then the "work is done" barrier), as a step of a persistent server would;
* ``G=16 coop + frame``: the same, every block also reads a 512-value frame from mapped memory
  and block 0 writes 128 values back (a step's input and output over PCIe);
* ``grid sync alone``: device time per grid sync (CUDA events over 20000 syncs).

Needs a GPU; the kernel gives up after ``--spins`` polls so a broken poll cannot hang it.
Usage: ``python bench/persist_probe.py [--rounds 3000] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _kernels():
    import os
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from numba import cuda

    from streamrnn.layers.cuda_sync import fence_system, ld_volatile, st_volatile

    def make(coop: bool, frame: bool):
        @cuda.jit
        def pingpong(ctl, ack, x, y, dev, rounds, maxspin):
            tid = cuda.threadIdx.x
            bid = cuda.blockIdx.x
            for i in range(1, rounds + 1):
                if bid == 0 and tid == 0:
                    s = 0
                    while ld_volatile(ctl, 0) < i and s < maxspin:
                        s += 1
                    dev[0] = s
                if coop:
                    cuda.cg.this_grid().sync()
                if frame:
                    acc = 0.0
                    for k in range(tid, x.size, cuda.blockDim.x):
                        acc += cuda.ldcv(x, k)  # (the address changes: not hoisted)
                    dev[1 + bid * cuda.blockDim.x + tid] = acc
                    if bid == 0 and tid < y.size:
                        y[tid] = acc + i
                if coop:
                    fence_system()
                    cuda.cg.this_grid().sync()
                if bid == 0 and tid == 0:
                    fence_system()
                    st_volatile(ack, 0, i)
                    fence_system()

        return pingpong

    @cuda.jit
    def syncs(k, dev):
        for _ in range(k):
            cuda.cg.this_grid().sync()
        dev[0] = k

    return make, syncs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3000)
    ap.add_argument("--spins", type=int, default=2_000_000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from numba import cuda

    make, syncs = _kernels()
    res = {}
    for name, G, coop, frame in [("G=1", 1, False, False), ("G=16 coop", 16, True, False),
                                 ("G=64 coop", 64, True, False), ("G=16 coop + frame", 16, True, True)]:
        k = make(coop, frame)
        ctl = cuda.mapped_array(1, np.int64)
        ack = cuda.mapped_array(1, np.int64)
        x = cuda.mapped_array(512, np.float32)
        y = cuda.mapped_array(128, np.float32)
        x[:] = 1.0
        dev = cuda.device_array(1 + G * 256, np.float32)
        # compile and warm (one round)
        ctl[0] = 1
        ack[0] = 0
        k[G, 256](ctl, ack, x, y, dev, 1, a.spins)
        cuda.synchronize()
        ctl[0] = 0
        ack[0] = 0
        t_all = time.perf_counter()
        k[G, 256](ctl, ack, x, y, dev, a.rounds, a.spins)
        ts = np.empty(a.rounds)
        bad = 0
        for i in range(1, a.rounds + 1):
            t0 = time.perf_counter_ns()
            ctl[0] = i
            while ack[0] < i:
                if time.perf_counter_ns() - t0 > 1e9:
                    bad += 1
                    break
            ts[i - 1] = (time.perf_counter_ns() - t0) / 1e3
            if bad:  # the kernel does not see the command (or the host its answer): release it
                ctl[0] = a.rounds + 1
                ts = ts[:i]
                break
        cuda.synchronize()
        t_all = time.perf_counter() - t_all
        tt = ts[100:] if ts.size > 200 else ts
        r = {"p50_us": float(np.median(tt)), "p99_us": float(np.percentile(tt, 99)),
             "min_us": float(ts.min()), "timeouts": bad, "total_s": t_all}
        if frame:
            r["y_ok"] = bool(abs(y[0] - (512 / 256 + a.rounds)) < 1e-3)
        res[name] = r
        print(name, json.dumps(r), flush=True)
    for G in (16, 64, 132):
        dev = cuda.device_array(1, np.float32)
        syncs[G, 256](10, dev)
        cuda.synchronize()
        e0, e1 = cuda.event(), cuda.event()
        e0.record()
        syncs[G, 256](20000, dev)
        e1.record()
        e1.synchronize()
        us = cuda.event_elapsed_time(e0, e1) * 1e3 / 20000
        res[f"grid sync alone G={G}"] = {"us": us}
        print(f"grid sync alone G={G}: {us:.3f} us", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
