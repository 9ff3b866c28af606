"""Host side of a persistent-kernel step, without a GPU (bench/NOTES.md entry 79).

``stream.step`` with ``STREAMRNN_CUDA_PERSIST=1`` spends part of its time on the host: checking
and staging the frame, writing the command, spinning on the acknowledgement, copying the
outputs. This script measures that part alone: the stream is built on numba's CUDA simulator
(no GPU needed), and a thread (njit, GIL released) stands in for the resident kernel: it
answers each command at once, writing the output row. So the times are the host's cost plus
one cache-line round trip between two cores, not a GPU's.

Two paths, in alternating blocks of calls (p50 / p99 µs per call):

* ``python``: the step as before entry 79: ``CudaStream.step`` checks, ``_Core.pack`` (njit),
  ``Server.step`` (Python: command words, spin on a numpy read), the copy out;
* ``fused``: one njit call (``persist.row_step``): check, stage, command, spin, copy out.

Usage: ``python bench/persist_host.py [--calls 20000] [--rounds 5] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
os.environ["STREAMRNN_CUDA_PERSIST"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from streamrnn.engine.hostsync import load_acquire, store_release  # noqa: E402


@njit(nogil=True)
def _device(ctl, ack, hout):
    """Answers every new command at once (writes the output row, then acknowledges) until
    ``ctl[0] == -1``."""
    last = ack[0]
    store_release(ack, 1, 2)
    while True:
        v = load_acquire(ctl, 0)
        if v == -1:
            break
        if v > last:
            for k in range(hout.shape[1]):
                hout[0, k] = k + v
            last = v
            store_release(ack, 0, v)
    store_release(ack, 1, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="calls per block (default 20000)")
    ap.add_argument("--rounds", type=int, default=5, help="blocks per path, alternating (default 5)")
    ap.add_argument("--H", type=int, default=128, help="hidden size = input size (default 128)")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    import streamrnn as srnn
    from streamrnn.benchutil import machine_info, random_lstm_spec, summarize

    spec = random_lstm_spec(a.H, a.H, 32)
    model = srnn.Model(spec, device="cuda")
    s = model.stream()
    core = s._cuda.core
    srv = core.server
    if srv is None or s._cuda._row is None:
        print("no persistent server was built", file=sys.stderr)
        return 2
    fused = s._cuda._row
    # the thread is the kernel: already resident, serving from the current sequence number
    srv.sim = False
    srv.running = True
    srv.ack_h[0] = srv.seq
    srv.ctl_h[0] = srv.seq
    c = np.array([-1, 0], np.int64)
    _device(c, np.zeros(2, np.int64), core.hout)  # compile before the thread starts
    t = threading.Thread(target=_device, args=(srv.ctl_h, srv.ack_h, core.hout), daemon=True)
    t.start()
    x = np.random.default_rng(0).standard_normal(model.input_size).astype(np.float32)
    out = np.empty(model.output_size, np.float32)
    times = {"python": [], "fused": []}
    buf = np.empty(a.calls, np.int64)
    clock = time.perf_counter_ns
    try:
        for r in range(a.rounds):
            for name in times:
                s._cuda._row = fused if name == "fused" else None
                for _ in range(200):
                    s.step(x, out)
                for i in range(a.calls):
                    t0 = clock()
                    s.step(x, out)
                    buf[i] = clock() - t0
                times[name].append(buf.copy())
                want = np.arange(model.output_size) + srv.seq
                if not np.array_equal(out, want.astype(np.float32)):
                    print(f"{name}: wrong outputs {out[:3]} (want {want[:3]})", file=sys.stderr)
                    return 1
    finally:
        srv.ctl_h[0] = -1
        t.join()
    res = {"machine": machine_info(("numpy", "numba")), "H": a.H, "calls": a.calls, "rounds": a.rounds}
    for name, blocks in times.items():
        res[name] = summarize(np.concatenate(blocks))
    print(f"stream.step host side with an instant stand-in kernel, H={a.H}, µs per call (p50 / p99):")
    for name in times:
        print(f"  {name:7s} {res[name]['p50_us']:6.2f} / {res[name]['p99_us']:6.2f}")
    print(f"  saved   {res['python']['p50_us'] - res['fused']['p50_us']:6.2f} (p50)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
