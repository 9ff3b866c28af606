"""Host side of a persistent-kernel step, without a GPU (bench/NOTES.md entry 79).

``stream.step`` with ``STREAMRNN_CUDA_PERSIST=1`` spends part of its time on the host: checking
and staging the frame, writing the command, spinning on the acknowledgement, copying the
outputs. This script measures that part alone: the stream is built on numba's CUDA simulator
(no GPU needed), and a thread (njit, GIL released) stands in for the resident kernel: it
answers each command at once, writing the output row. So the times are the host's cost plus
one cache-line round trip between two cores, not a GPU's.

Two paths, in alternating blocks of calls (``benchutil.interleave``; p50 / p99 µs per call):

* ``python``: the step as before entry 79: ``CudaStream.step`` (or ``CudaPool.step``) checks,
  ``_Core.pack`` (njit), ``Server.step`` (Python: command words, spin on a numpy read), the
  copy out;
* ``fused``: one njit call (``persist.row_step``): check, stage, command, spin, copy out.

for ``stream.step`` and for a pool's step of one stream.

Usage: ``python bench/persist_host.py [--calls 20000] [--rounds 5] [--json out.json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading

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
    from streamrnn.benchutil import interleave, machine_info, random_lstm_spec, summarize

    spec = random_lstm_spec(a.H, a.H, 32)
    model = srnn.Model(spec, device="cuda")
    s = model.stream()
    pool = model.pool(1)
    ids = pool.open(1)
    x = np.random.default_rng(0).standard_normal(model.input_size).astype(np.float32)
    X = x.reshape(1, -1)
    out, Y = np.empty(model.output_size, np.float32), np.empty((1, model.output_size), np.float32)
    c = np.array([-1, 0], np.int64)
    _device(c, np.zeros(2, np.int64), Y)  # compile before a thread starts
    times = {}
    for what, dev, call in (("stream.step", s._cuda, lambda: s.step(x, out)),
                            ("pool.step (1 row)", pool._cuda, lambda: pool.step(ids, X, out=Y))):
        core = dev.core
        srv = core.server
        if srv is None or dev._row is None:
            print(f"{what}: no persistent server was built", file=sys.stderr)
            return 2
        fused = dev._row
        # the thread is the kernel: already resident, serving from the current sequence number
        srv.sim = False
        srv.running = True
        srv.ack_h[0] = srv.seq
        srv.ctl_h[0] = srv.seq
        t = threading.Thread(target=_device, args=(srv.ctl_h, srv.ack_h, core.hout), daemon=True)
        t.start()
        # each path sets its switch, then steps (the same store in both timings)
        paths = {f"{what} python": lambda: (setattr(dev, "_row", None), call()),
                 f"{what} fused": lambda: (setattr(dev, "_row", fused), call())}
        try:
            for name, fn in paths.items():
                for _ in range(200):
                    fn()
                got = out if what == "stream.step" else Y[0]
                want = (np.arange(model.output_size) + srv.seq).astype(np.float32)
                if not np.array_equal(got, want):
                    print(f"{name}: wrong outputs {got[:3]} (want {want[:3]})", file=sys.stderr)
                    return 1
            times.update(interleave(paths, a.calls * a.rounds, rounds=a.rounds))
        finally:
            srv.ctl_h[0] = -1
            t.join()
    res = {"machine": machine_info(("numpy", "numba")), "H": a.H, "calls": a.calls, "rounds": a.rounds}
    for name, ns in times.items():
        res[name] = summarize(ns)
    print(f"host side of a persistent step with an instant stand-in kernel, H={a.H}, µs per call (p50 / p99):")
    for name in times:
        print(f"  {name:26s} {res[name]['p50_us']:6.2f} / {res[name]['p99_us']:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
