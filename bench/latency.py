#!/usr/bin/env python
"""streamrnn vs onnxruntime vs PyTorch: one-stream latency, many streams, offline sequences.

    python bench/latency.py [--quick] [--out bench/results] [--sections latency,streams,offline,graph,cells,footprint]

Seven sections, each written as ``<out>/<section>.json``, ``.md`` and ``.png``:

* ``latency``  one stream, one step per call, 1 thread, LSTM + Linear head, float32, for
  I=H=32, I=8/H=64, I=H=128, I=H=512: streamrnn ``stream.step(x, out=y)`` and ``stream.step(x)``,
  onnxruntime ``session.run`` (state fed back) and io_binding (prebound OrtValues, h/c swapped),
  torch ``nn.LSTMCell + nn.Linear`` and ``nn.LSTM`` (seq_len 1) under ``inference_mode``.
* ``streams``  B streams advance one step per call (``pool.step`` with ids in random order) vs a
  batched (1, B, I) onnxruntime session and a batched torch ``nn.LSTM`` (states pre-stacked, so
  they skip the gather / scatter streamrnn does), 2 threads.
* ``offline``  whole sequence, B=1, T=1000, LSTM and GRU (linear_before_reset, PyTorch's GRU):
  ``model.run`` vs onnxruntime and torch ``nn.LSTM`` / ``nn.GRU``.
* ``graph``  a graph model (an ONNX graph that is not a chain: y = Linear(LSTM(x) + x), exported
  as one frame with h / c in and out), one frame of B = 1 or 64 streams per call: streamrnn's
  planned step and its general path vs onnxruntime ``session.run`` and the torch module, the
  states fed back.
* ``cells``  ``nn.LSTMCell`` / ``nn.GRUCell`` + Linear exported as one step with the states in and
  out, B = 1 and 64: streamrnn (the cell fused into an LSTM / GRU layer at load) and the same
  file unfused vs onnxruntime ``session.run`` and the torch module, the states fed back.
* ``silero``  a real streaming model, Silero VAD (the silero-vad 6.2.3 wheel's ONNX files, fetched
  by pip; not in the default set): one 576-sample chunk of B = 1, 16, 64 streams per call, streamrnn
  on the two files it loads vs onnxruntime on the package's main file (batched) and on the
  openvino file (one call per stream).
* ``footprint``  cold start (fresh process: import, load a .srnn, one step; numba cache warm
  and cold) and memory (RSS over 10^6 steps; a pool of 100,000 streams): ``bench/footprint.py``.

Every method of a configuration is measured interleaved in one process (round-robin blocks, see
``streamrnn.benchutil.interleave``) after a warm-up, each call timed alone with perf_counter_ns.
In the same run, every competitor's outputs are checked against streamrnn's (rtol 1e-4), and
streamrnn's against a float64 numpy reference, so a fast wrong answer shows in the table.

Threads: the thread-count variables are set to 1 before numpy / torch / numba are imported
(NUMBA_NUM_THREADS to the largest count a section uses, since numba can only lower it later);
each section then sets its own count (numba.set_num_threads, torch.set_num_threads, ORT options).
"""
from __future__ import annotations

import argparse
import os
import sys


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short run (< 2 min): fewer calls per method")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"),
                   help="output folder (default bench/results)")
    p.add_argument("--sections", default="latency,streams,offline,graph,cells,footprint",
                   help="comma-separated subset of latency,streams,offline,graph (a graph model, not a chain), "
                        "cells (nn.LSTMCell / nn.GRUCell step exports), "
                        "silero (Silero VAD's ONNX files; not in the default set: fetches the silero-vad wheel), "
                        "footprint (cold start and memory, bench/footprint.py)")
    p.add_argument("--stream-threads", type=int, default=2, help="threads in the streams section (default 2)")
    p.add_argument("--offline-threads", type=int, default=1, help="threads in the offline section (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plot", action="store_true", help="skip the PNG files")
    p.add_argument("--render-only", action="store_true",
                   help="measure nothing: rewrite the .md / .png of the sections from their .json in --out")
    a = p.parse_args(argv)
    a.sections = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = set(a.sections) - {"latency", "streams", "offline", "graph", "cells", "silero", "footprint"}
    if bad:
        p.error(f"--sections: unknown {sorted(bad)}")
    return a


ARGS = _parse(sys.argv[1:]) if __name__ == "__main__" else None
if ARGS is not None:  # before numpy / numba / torch / onnxruntime are imported
    _maxthreads = max(1, ARGS.stream_threads if "streams" in ARGS.sections else 1,
                      ARGS.offline_threads if "offline" in ARGS.sections else 1)
    for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS"):
        os.environ[_k] = "1"
    os.environ["NUMBA_NUM_THREADS"] = str(_maxthreads)

import datetime  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import streamrnn as srnn  # noqa: E402
from streamrnn.benchutil import (  # noqa: E402
    calls_for_budget,
    compare,
    fmt_us,
    interleave,
    load_average,
    machine_info,
    random_lstm_spec,
    summarize,
    warm_up,
)
from streamrnn.reference import run_reference  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # optional
    def tqdm(it, **kw):
        return it

HEAD = 16  # Linear head outputs in every configuration
RTOL = 1e-4
CHECK_STEPS = 20

LATENCY_CONFIGS = [("I=H=32", 32, 32), ("I=8, H=64", 8, 64), ("I=H=128", 128, 128), ("I=H=512", 512, 512)]
STREAM_CONFIGS = [("H=128, B=8", 128, 8), ("H=128, B=64", 128, 64), ("H=128, B=1024", 128, 1024),
                  ("H=512, B=64", 512, 64), ("H=512, B=1024", 512, 1024)]
OFFLINE_CONFIGS = [("LSTM H=128", "lstm", 128), ("LSTM H=512", "lstm", 512),
                   ("GRU H=128", "gru", 128), ("GRU H=512", "gru", 512)]
OFFLINE_T = 1000

REF = "streamrnn step(x, out=y)"
M_SR_FRESH = "streamrnn step(x)"
M_SR_BF16 = "streamrnn step(x, out=y), bfloat16 weights (opt-in)"
#: the bfloat16 row is checked against the float32 row with this tolerance (weight rounding)
RTOL_BF16 = 3e-2
M_ORT = "onnxruntime session.run"
M_ORT_IO = "onnxruntime io_binding"
M_CELL = "torch LSTMCell + Linear"
M_LSTM = "torch nn.LSTM (seq_len 1) + Linear"
M_TIMER = "(timer + empty Python call)"

# per section: seconds per method per configuration, min calls, max calls, rounds
BUDGET = {
    "latency": {True: (0.4, 200, 4000, 10), False: (4.0, 2000, 100_000, 40)},
    "graph": {True: (0.4, 100, 4000, 10), False: (3.0, 1000, 100_000, 30)},
    "cells": {True: (0.4, 100, 4000, 10), False: (3.0, 1000, 100_000, 30)},
    "silero": {True: (0.4, 50, 2000, 10), False: (3.0, 200, 20_000, 20)},
    "streams": {True: (0.6, 5, 400, 5), False: (5.0, 20, 5000, 20)},
    "offline": {True: (0.5, 4, 100, 4), False: (4.0, 15, 1000, 15)},
}


# ---------------------------------------------------------------------------------------------
# building the same model in every framework
# ---------------------------------------------------------------------------------------------


def build_onnx(spec, opset: int = 17) -> bytes:
    """LSTM, or GRU (linear_before_reset=1), with ONNX-layout weights straight from the spec, +
    MatMul/Add head. Inputs X (T, B, I), initial_h (and LSTM initial_c) (1, B, H); outputs
    Y (T, B, O), Y_h (and Y_c) (1, B, H)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rec, dense = spec.layers
    lstm = isinstance(rec, srnn.LSTMLayer)
    I, H, O = rec.input_size, rec.hidden_size, dense.output_size
    f32 = np.float32
    inits = [
        numpy_helper.from_array(np.asarray(rec.W, f32), "W"),
        numpy_helper.from_array(np.asarray(rec.R, f32), "R"),
        numpy_helper.from_array(np.asarray(rec.B, f32), "B"),
        numpy_helper.from_array(np.ascontiguousarray(np.asarray(dense.weight, f32).T), "head_WT"),
        numpy_helper.from_array(np.asarray(dense.bias, f32), "head_b"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
    ]
    states = ["h", "c"] if lstm else ["h"]
    attrs = {} if lstm else {"linear_before_reset": 1}
    nodes = [
        helper.make_node("LSTM" if lstm else "GRU", ["X", "W", "R", "B", ""] + [f"initial_{s}" for s in states],
                         ["Y_all"] + [f"Y_{s}" for s in states], hidden_size=H, **attrs),
        helper.make_node("Squeeze", ["Y_all", "axes1"], ["Y_seq"]),
        helper.make_node("MatMul", ["Y_seq", "head_WT"], ["Y_mm"]),
        helper.make_node("Add", ["Y_mm", "head_b"], ["Y"]),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "rnn_head",
        [vi("X", TensorProto.FLOAT, ["T", "B", I])] + [vi(f"initial_{s}", TensorProto.FLOAT, [1, "B", H]) for s in states],
        [vi("Y", TensorProto.FLOAT, ["T", "B", O])] + [vi(f"Y_{s}", TensorProto.FLOAT, [1, "B", H]) for s in states],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="streamrnn-bench")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def ort_session(onnx_bytes: bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


def build_torch(spec):
    """(nn.LSTMCell, nn.LSTM, nn.Linear) holding the spec's weights (gates i,o,f,c -> i,f,g,o)."""
    import torch
    from torch import nn

    lstm, dense = spec.layers
    I, H, O = lstm.input_size, lstm.hidden_size, dense.output_size
    perm = np.r_[0:H, 2 * H:3 * H, 3 * H:4 * H, H:2 * H]
    W = torch.from_numpy(np.asarray(lstm.W[0], np.float32)[perm].copy())
    R = torch.from_numpy(np.asarray(lstm.R[0], np.float32)[perm].copy())
    Wb = torch.from_numpy(np.asarray(lstm.B[0, :4 * H], np.float32)[perm].copy())
    Rb = torch.from_numpy(np.asarray(lstm.B[0, 4 * H:], np.float32)[perm].copy())
    cell, seq, lin = nn.LSTMCell(I, H), nn.LSTM(I, H), nn.Linear(H, O)
    with torch.no_grad():
        cell.weight_ih.copy_(W); cell.weight_hh.copy_(R); cell.bias_ih.copy_(Wb); cell.bias_hh.copy_(Rb)
        seq.weight_ih_l0.copy_(W); seq.weight_hh_l0.copy_(R); seq.bias_ih_l0.copy_(Wb); seq.bias_hh_l0.copy_(Rb)
        lin.weight.copy_(torch.from_numpy(np.asarray(dense.weight, np.float32)))
        lin.bias.copy_(torch.from_numpy(np.asarray(dense.bias, np.float32)))
    for m in (cell, seq, lin):
        m.eval()
    return cell, seq, lin


def random_gru_spec(I: int, H: int, O: int, seed: int):
    """A one-layer GRU (linear_before_reset=1, PyTorch's GRU) + Linear head, PyTorch-style init."""
    rng = np.random.default_rng(seed)
    k = 1.0 / np.sqrt(H)
    u = lambda *shape: rng.uniform(-k, k, size=shape).astype(np.float32)  # noqa: E731
    gru = srnn.GRULayer(I, H, W=u(1, 3 * H, I), R=u(1, 3 * H, H), B=u(1, 6 * H), linear_before_reset=True)
    return srnn.ModelSpec((gru, srnn.DenseLayer(weight=u(O, H), bias=u(O))), name=f"gru_i{I}_h{H}_o{O}")


def build_torch_gru(spec):
    """(nn.GRU, nn.Linear) holding the spec's weights (gates z, r, h -> r, z, n)."""
    import torch
    from torch import nn

    gru, dense = spec.layers
    I, H, O = gru.input_size, gru.hidden_size, dense.output_size
    perm = np.r_[H:2 * H, 0:H, 2 * H:3 * H]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)[perm]))  # noqa: E731
    seq, lin = nn.GRU(I, H), nn.Linear(H, O)
    with torch.no_grad():
        seq.weight_ih_l0.copy_(t(gru.W[0])); seq.weight_hh_l0.copy_(t(gru.R[0]))
        seq.bias_ih_l0.copy_(t(gru.B[0, :3 * H])); seq.bias_hh_l0.copy_(t(gru.B[0, 3 * H:]))
        lin.weight.copy_(torch.from_numpy(np.asarray(dense.weight, np.float32)))
        lin.bias.copy_(torch.from_numpy(np.asarray(dense.bias, np.float32)))
    seq.eval(); lin.eval()
    return seq, lin


def set_threads(n: int) -> dict:
    import numba
    import torch

    numba.set_num_threads(n)
    torch.set_num_threads(n)
    return {"numba": numba.get_num_threads(), "torch": torch.get_num_threads(), "onnxruntime_intra_op": n}


# ---------------------------------------------------------------------------------------------
# methods: each returns (timed zero-argument call, check function X (T, I) -> Y (T, O) from zero state)
# ---------------------------------------------------------------------------------------------


def m_streamrnn(model, x, fresh: bool):
    s = model.stream()
    y = np.empty(model.output_size, model.dtype)
    step = s.step
    fn = (lambda: step(x)) if fresh else (lambda: step(x, out=y))

    def check(X):
        t = model.stream()
        if fresh:
            return np.stack([t.step(f) for f in X])
        out = np.empty((len(X), model.output_size), model.dtype)
        for i, f in enumerate(X):
            t.step(f, out=out[i])
        return out

    return fn, check


def m_ort_run(sess, x, H):
    z = np.zeros((1, 1, H), np.float32)
    feeds = {"X": x.reshape(1, 1, -1), "initial_h": z.copy(), "initial_c": z.copy()}
    run = sess.run

    def fn():
        _, feeds["initial_h"], feeds["initial_c"] = run(None, feeds)

    def check(X):
        f = {"initial_h": z.copy(), "initial_c": z.copy()}
        out = []
        for frame in X:
            f["X"] = frame.reshape(1, 1, -1)
            y, f["initial_h"], f["initial_c"] = run(None, f)
            out.append(y.reshape(-1))
        return np.stack(out)

    return fn, check


def m_ort_iobinding(sess, x, H, O):
    import onnxruntime as ort

    ov = ort.OrtValue.ortvalue_from_numpy
    xbuf = np.ascontiguousarray(x.reshape(1, 1, -1))
    xv = ov(xbuf)
    hA, cA, hB, cB = (ov(np.zeros((1, 1, H), np.float32)) for _ in range(4))
    yv = ov(np.zeros((1, 1, O), np.float32))

    def bind(hin, cin, hout, cout):
        b = sess.io_binding()
        b.bind_ortvalue_input("X", xv)
        b.bind_ortvalue_input("initial_h", hin)
        b.bind_ortvalue_input("initial_c", cin)
        b.bind_ortvalue_output("Y", yv)
        b.bind_ortvalue_output("Y_h", hout)
        b.bind_ortvalue_output("Y_c", cout)
        return b

    bindings = (bind(hA, cA, hB, cB), bind(hB, cB, hA, cA))
    run = sess.run_with_iobinding
    nxt = itertools.cycle(bindings).__next__

    def fn():
        run(nxt())

    def check(X):
        z = np.zeros((1, 1, H), np.float32)
        for v in (hA, cA, hB, cB):
            v.update_inplace(z)
        out = []
        for t, frame in enumerate(X):
            xv.update_inplace(np.ascontiguousarray(frame.reshape(1, 1, -1)))
            run(bindings[t % 2])
            out.append(yv.numpy().reshape(-1).copy())
        xv.update_inplace(xbuf)
        for v in (hA, cA, hB, cB):  # leave a clean state for the timed calls
            v.update_inplace(z)
        return np.stack(out)

    return fn, check


def m_torch_cell(cell, lin, x, H):
    import torch

    xt = torch.from_numpy(x).reshape(1, -1)
    st = [torch.zeros(1, H), torch.zeros(1, H)]

    def fn():
        h, c = cell(xt, (st[0], st[1]))
        st[0], st[1] = h, c
        return lin(h)

    def check(X):
        h, c = torch.zeros(1, H), torch.zeros(1, H)
        out = []
        for frame in X:
            h, c = cell(torch.from_numpy(frame).reshape(1, -1), (h, c))
            out.append(lin(h).numpy().reshape(-1).copy())
        return np.stack(out)

    return fn, check


def m_torch_lstm(seq, lin, x, H):
    import torch

    xt = torch.from_numpy(x).reshape(1, 1, -1)
    st = [torch.zeros(1, 1, H), torch.zeros(1, 1, H)]

    def fn():
        y, (h, c) = seq(xt, (st[0], st[1]))
        st[0], st[1] = h, c
        return lin(y)

    def check(X):
        h, c = torch.zeros(1, 1, H), torch.zeros(1, 1, H)
        out = []
        for frame in X:
            y, (h, c) = seq(torch.from_numpy(frame).reshape(1, 1, -1), (h, c))
            out.append(lin(y).numpy().reshape(-1).copy())
        return np.stack(out)

    return fn, check


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


def measure(fns: dict, budget: tuple, *, per: int = 1, pause_s: float = 0.0, warm_s: float = 0.1,
            warm_calls: int = 20) -> dict:
    """Warm up every method, size its call count to the budget, time all interleaved."""
    sec, lo, hi, rounds = budget
    counts = {}
    for name, fn in fns.items():
        est = warm_up(fn, min_calls=warm_calls, min_time_s=warm_s)
        counts[name] = calls_for_budget(est, sec, lo, hi)
    ns = interleave(fns, counts, rounds=min(rounds, min(counts.values())), pause_s=pause_s)
    return {k: summarize(v, per=per) for k, v in ns.items()}


def run_checks(checks: dict, ref_name: str, X: np.ndarray) -> dict:
    """Each check(X) vs the reference method's check(X)."""
    ref = checks[ref_name](X)
    out = {}
    for name, chk in checks.items():
        if name == ref_name:
            continue
        try:
            out[name] = compare(chk(X), ref, rtol=RTOL)
        except Exception as e:  # a method that cannot even run is a failed check
            out[name] = {"pass": False, "error": f"{type(e).__name__}: {e}"}
    return out, ref


def self_check(spec, X: np.ndarray, Y: np.ndarray) -> dict:
    """streamrnn (Y) vs the float64 numpy reference on the same frames X (T, I) or (B, T, I)."""
    X3 = X[None] if X.ndim == 2 else X
    Yr, _ = run_reference(spec, X3)
    return compare(Y, Yr[0] if X.ndim == 2 else Yr, rtol=RTOL)


def git_state() -> dict:
    """Commit of the working tree and whether it had uncommitted changes (what was measured)."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        # the result files this very run writes are not a change to what is measured
        return {"commit": head or None,
                "modified_files": sorted(l[3:] for l in dirty if l.strip() and not l[3:].startswith("bench/results/"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}


def _header(section: str, quick: bool, threads: dict, extra: dict) -> dict:
    return {
        "git": git_state(),
        "section": section,
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": quick,
        "machine": machine_info(),
        "settings": {"dtype": "float32", "threads": threads, "head_outputs": HEAD, "rtol": RTOL,
                     "budget_s_min_max_rounds": BUDGET[section][quick], "gc_paused_while_timing": True,
                     **extra},
        "configs": [],
    }


def section_latency(quick: bool, seed: int) -> dict:
    import torch

    threads = set_threads(1)
    res = _header("latency", quick, threads, {"unit": "us per step", "check_steps": CHECK_STEPS})
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for name, I, H in tqdm(LATENCY_CONFIGS, desc="latency", disable=None):
            spec = random_lstm_spec(I, H, HEAD, seed=seed)
            model = srnn.Model(spec)
            model_bf16 = srnn.Model(spec, weights="bfloat16")
            sess = ort_session(build_onnx(spec), 1)
            cell, seq, lin = build_torch(spec)
            x = rng.standard_normal(I).astype(np.float32)
            pairs = {
                REF: m_streamrnn(model, x, fresh=False),
                M_SR_FRESH: m_streamrnn(model, x, fresh=True),
                M_SR_BF16: m_streamrnn(model_bf16, x, fresh=False),
                M_ORT: m_ort_run(sess, x, H),
                M_ORT_IO: m_ort_iobinding(sess, x, H, HEAD),
                M_CELL: m_torch_cell(cell, lin, x, H),
                M_LSTM: m_torch_lstm(seq, lin, x, H),
            }
            X = rng.standard_normal((CHECK_STEPS, I)).astype(np.float32)
            checks, Yref = run_checks({k: v[1] for k, v in pairs.items()}, REF, X)
            checks[REF] = self_check(spec, X, Yref)
            checks[M_SR_BF16] = compare(pairs[M_SR_BF16][1](X), Yref, rtol=RTOL_BF16)
            fns = {k: v[0] for k, v in pairs.items()}
            fns[M_TIMER] = lambda: None
            stats = measure(fns, BUDGET["latency"][quick])
            for k in stats:
                stats[k]["check"] = checks.get(k)
            res["configs"].append({"name": name, "input_size": I, "hidden_size": H, "output_size": HEAD,
                                   "results": stats})
    return res


def section_streams(quick: bool, seed: int, nthreads: int) -> dict:
    import torch

    threads = set_threads(nthreads)
    res = _header("streams", quick, threads, {
        "unit": "us per call (B stream-steps)",
        "note": "streamrnn: pool.step(ids, X, out=Y), ids a random permutation of B open streams (gather/scatter "
                "of state by id included); onnxruntime / torch: one batched (1, B, I) step with the states "
                "already stacked (B, H) and fed back. Blocks of calls "
                f"{STREAMS_PAUSE_S * 1e3:.0f} ms apart, so that one method's spinning threads have gone idle "
                "before the next method's block. streamrnn's pool.step runs on its spinning team of threads "
                f"(STREAMRNN_SPIN_US={os.environ.get('STREAMRNN_SPIN_US', '500')}). OpenMP waiting: "
                f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
                f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}; torch shares libgomp with numba, so "
                "streamrnn's default passive waiting applies to torch's threads too (bench/NOTES.md entry 23)",
    })
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for name, H, B in tqdm(STREAM_CONFIGS, desc="streams", disable=None):
            I = H
            spec = random_lstm_spec(I, H, HEAD, seed=seed)
            model = srnn.Model(spec)
            sess = ort_session(build_onnx(spec), nthreads)
            _, seq, lin = build_torch(spec)

            pool = model.pool(capacity=B)
            ids = pool.open(B)
            perm_ids = ids[rng.permutation(B)]
            Xb = rng.standard_normal((B, I)).astype(np.float32)
            Yb = np.empty((B, HEAD), np.float32)
            pstep = pool.step

            def f_pool():
                pstep(perm_ids, Xb, out=Yb)

            z = np.zeros((1, B, H), np.float32)
            feeds = {"X": Xb.reshape(1, B, I), "initial_h": z.copy(), "initial_c": z.copy()}
            run = sess.run

            def f_ort():
                _, feeds["initial_h"], feeds["initial_c"] = run(None, feeds)

            xt = torch.from_numpy(Xb).reshape(1, B, I)
            st = [torch.zeros(1, B, H), torch.zeros(1, B, H)]

            def f_torch():
                y, (h, c) = seq(xt, (st[0], st[1]))
                st[0], st[1] = h, c
                return lin(y)

            # numerics: 5 steps; each step the pool gets its ids in a new random order
            T = 5
            Xs = rng.standard_normal((T, B, I)).astype(np.float32)
            cpool = model.pool(capacity=B)
            cids = cpool.open(B)
            Ysr = np.empty((T, B, HEAD), np.float32)
            for t in range(T):
                p = rng.permutation(B)
                Ysr[t, p] = cpool.step(cids[p], Xs[t, p])
            y_ort = sess.run(["Y"], {"X": Xs, "initial_h": z, "initial_c": z})[0]
            y_t = lin(seq(torch.from_numpy(Xs))[0]).numpy()
            checks = {
                REF_POOL: self_check(spec, Xs.transpose(1, 0, 2), Ysr.transpose(1, 0, 2)),
                M_ORT_B: compare(y_ort, Ysr, rtol=RTOL),
                M_TORCH_B: compare(y_t, Ysr, rtol=RTOL),
            }
            stats = measure({REF_POOL: f_pool, M_ORT_B: f_ort, M_TORCH_B: f_torch}, BUDGET["streams"][quick],
                            pause_s=STREAMS_PAUSE_S, warm_s=0.2, warm_calls=3)
            for k in stats:
                stats[k]["check"] = checks.get(k)
                stats[k]["stream_steps_per_s"] = B / (stats[k]["mean_us"] * 1e-6)
                stats[k]["stream_steps_per_s_at_p50"] = B / (stats[k]["p50_us"] * 1e-6)
            res["configs"].append({"name": name, "input_size": I, "hidden_size": H, "streams": B,
                                   "output_size": HEAD, "results": stats})
    return res


#: sleep between the streams section's blocks: onnxruntime's intra-op threads spin on for more
#: than 20 ms after its last call and took the team's second core during streamrnn's next block
#: with 5 ms (H=128 B=64: pool.step mean 121 vs 81 us, p99 706 vs 155; bench/NOTES.md entry 47)
STREAMS_PAUSE_S = 0.05

REF_POOL = "streamrnn pool.step (random id order)"
M_ORT_B = "onnxruntime session.run, batched"
M_TORCH_B = "torch nn.LSTM batched + Linear"

REF_RUN = "streamrnn model.run"
M_PUSH = "streamrnn stream.push (one chunk)"
M_ORT_SEQ = "onnxruntime session.run"
M_TORCH_SEQ = "torch nn.LSTM / nn.GRU + Linear"


def section_offline(quick: bool, seed: int, nthreads: int) -> dict:
    import torch

    threads = set_threads(nthreads)
    res = _header("offline", quick, threads, {"unit": "us per time step (call time / T)", "T": OFFLINE_T,
                                               "batch": 1})
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for name, kind, H in tqdm(OFFLINE_CONFIGS, desc="offline", disable=None):
            I, T = H, OFFLINE_T
            z = np.zeros((1, 1, H), np.float32)
            if kind == "lstm":
                spec = random_lstm_spec(I, H, HEAD, seed=seed)
                sess = ort_session(build_onnx(spec), nthreads)
                _, seq, lin = build_torch(spec)
                state = {"initial_h": z, "initial_c": z}
            else:
                spec = random_gru_spec(I, H, HEAD, seed=seed)
                sess = ort_session(build_onnx(spec), nthreads)
                seq, lin = build_torch_gru(spec)
                state = {"initial_h": z}
            model = srnn.Model(spec)
            X = rng.standard_normal((T, I)).astype(np.float32)
            feeds = {"X": X.reshape(T, 1, I), **state}
            xt = torch.from_numpy(X).reshape(T, 1, I)
            mrun, sess_run = model.run, sess.run
            fns = {
                REF_RUN: lambda: mrun(X),
                M_PUSH: (lambda s: (lambda: s.push(X)))(model.stream()),
                M_ORT_SEQ: lambda: sess_run(["Y"], feeds),
                M_TORCH_SEQ: lambda: lin(seq(xt)[0]),
            }
            Y = model.run(X)
            checks = {
                REF_RUN: self_check(spec, X, Y),
                M_PUSH: compare(model.stream().push(X), Y, rtol=RTOL),
                M_ORT_SEQ: compare(sess.run(["Y"], feeds)[0].reshape(T, HEAD), Y, rtol=RTOL),
                M_TORCH_SEQ: compare(lin(seq(xt)[0]).numpy().reshape(T, HEAD), Y, rtol=RTOL),
            }
            stats = measure(fns, BUDGET["offline"][quick], per=T, warm_s=0.2, warm_calls=2)
            for k in stats:
                stats[k]["check"] = checks.get(k)
            res["configs"].append({"name": name, "cell": kind, "input_size": I, "hidden_size": H, "T": T,
                                   "batch": 1, "output_size": HEAD, "results": stats})
    return res


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# graph models: an ONNX graph that is not a chain of layers (a residual LSTM), one frame per call
# ---------------------------------------------------------------------------------------------

GRAPH_CONFIGS = [("H=32, B=1", 32, 1), ("H=128, B=1", 128, 1), ("H=512, B=1", 512, 1), ("H=128, B=64", 128, 64)]
REF_GRAPH = "streamrnn graph model step (planned)"
M_GRAPH_GENERAL = "streamrnn graph model step, general path"
M_ORT_GRAPH = "onnxruntime session.run (state fed back)"
M_TORCH_GRAPH = "torch module (state fed back)"


def build_residual_step(H: int, seed: int):
    """torch ``y = Linear(LSTM(x) + x)`` with h / c in and out, and its ONNX export of one frame
    (x (B, 1, H), h / c (1, B, H); batch dynamic): the usual streaming export of a model that is
    not a chain."""
    import io
    import warnings

    import torch

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = torch.nn.LSTM(H, H, batch_first=True), torch.nn.Linear(H, HEAD)

        def forward(self, x, h, c):
            y, (h2, c2) = self.rnn(x, (h, c))
            return self.fc(y + x), h2, c2

    torch.manual_seed(seed)
    net = Step().eval()
    f = io.BytesIO()
    z = torch.zeros(1, 2, H)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 1, H), z, z), f, input_names=["x", "h", "c"],
                          output_names=["y", "hn", "cn"], dynamo=False, opset_version=17,
                          dynamic_axes={"x": {0: "b"}, "h": {1: "b"}, "c": {1: "b"}, "y": {0: "b"}})
    return net, f.getvalue()


GRAPH_TITLE = "Graph model (residual LSTM, not a chain): one frame of B streams per call (µs per call, 1 thread)"
GRAPH_PLOT = dict(title="graph model y = Linear(LSTM(x) + x), one frame per call (1 thread)", xkey=None,
                  ylabel="p50 µs per call", value=lambda r: r["p50_us"])


def section_graph(quick: bool, seed: int) -> dict:
    import torch

    threads = set_threads(1)
    res = _header("graph", quick, threads, {
        "unit": "us per call (B stream-steps)", "check_steps": CHECK_STEPS,
        "ref_check": "equal to the torch module in float64",
        "note": "Model: y = Linear(LSTM(x) + x), I = H, exported from torch as one frame with h / c in and out "
                "(not a chain: it loads as a graph model). streamrnn: stream.step(x, out=y) for B=1, "
                "pool.step(ids, X, out=Y) with ids in random order for B=64; the general path is the same model "
                "evaluating the whole graph per call (before bench/NOTES.md entry 127). onnxruntime / torch: the "
                "same graph / module, the states fed back",
    })
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for name, H, B in tqdm(GRAPH_CONFIGS, desc="graph", disable=None):
            net, onnx_bytes = build_residual_step(H, seed)
            planned = srnn.from_onnx(onnx_bytes, state_map={"h": "hn", "c": "cn"})
            general = srnn.from_onnx(onnx_bytes, state_map={"h": "hn", "c": "cn"})
            general._step = None  # the general path only (private switch, for this comparison)
            sess = ort_session(onnx_bytes, 1)
            X1 = rng.standard_normal((B, H)).astype(np.float32)
            pairs = {REF_GRAPH: m_graph_streamrnn(planned, X1, rng), M_GRAPH_GENERAL: m_graph_streamrnn(general, X1, rng),
                     M_ORT_GRAPH: m_graph_ort(sess, X1, H), M_TORCH_GRAPH: m_graph_torch(net, X1, H)}
            X = rng.standard_normal((CHECK_STEPS, B, H)).astype(np.float32)
            stats = checked_stats(pairs, REF_GRAPH, X, lambda X64: m_graph_torch(net, X1.astype(np.float64), H)[1](X64),
                                  net, BUDGET["graph"][quick])
            res["configs"].append({"name": name, "input_size": H, "hidden_size": H, "streams": B,
                                   "output_size": HEAD, "results": stats})
    return res


def checked_stats(pairs: dict, ref: str, X: np.ndarray, torch64, net, budget: tuple) -> dict:
    """Each method's outputs over the frames X against the reference method's, the reference's
    against ``torch64(X in float64)`` (run with ``net`` in float64), then every method timed."""
    checks, Yref = run_checks({k: v[1] for k, v in pairs.items()}, ref, X)
    net.double()
    try:
        checks[ref] = compare(Yref, torch64(X.astype(np.float64)), rtol=RTOL)
    finally:
        net.float()
    fns = {k: v[0] for k, v in pairs.items()}
    fns[M_TIMER] = lambda: None
    stats = measure(fns, budget)
    for k in stats:
        stats[k]["check"] = checks.get(k)
    return stats


def m_graph_streamrnn(model, X1, rng):
    """B=1: stream.step(x, out=y); B>1: pool.step(ids in random order, X, out=Y)."""
    B = X1.shape[0]
    if B == 1:
        s, y, x = model.stream(), np.empty(model.output_size, np.float32), X1[0]
        step = s.step

        def fn():
            step(x, out=y)
    else:
        pool = model.pool(B)
        ids = pool.open(B)[rng.permutation(B)]
        Y = np.empty((B, model.output_size), np.float32)
        pstep = pool.step

        def fn():
            pstep(ids, X1, out=Y)

    def check(X):  # X (T, B, I) -> (T, B, O) from fresh states
        pool = model.pool(B)
        ids = pool.open(B)
        return np.stack([pool.step(ids, x) for x in X])

    return fn, check


def m_graph_ort(sess, X1, H):
    B = X1.shape[0]
    z = np.zeros((1, B, H), np.float32)
    feeds = {"x": X1.reshape(B, 1, H), "h": z.copy(), "c": z.copy()}
    run = sess.run

    def fn():
        _, feeds["h"], feeds["c"] = run(None, feeds)

    def check(X):
        f = {"h": z.copy(), "c": z.copy()}
        out = []
        for x in X:
            f["x"] = x.reshape(B, 1, H)
            y, f["h"], f["c"] = run(None, f)
            out.append(y.reshape(B, -1))
        return np.stack(out)

    return fn, check


def m_graph_torch(net, X1, H):
    import torch

    B = X1.shape[0]
    xt = torch.from_numpy(X1).reshape(B, 1, H)
    z = torch.zeros(1, B, H, dtype=xt.dtype)
    st = [z, z]

    def fn():
        _, st[0], st[1] = net(xt, st[0], st[1])

    def check(X):
        h = c = z
        out = []
        for x in X:
            y, h, c = net(torch.from_numpy(x).reshape(B, 1, H), h, c)
            out.append(y.numpy().reshape(B, -1).copy())
        return np.stack(out)

    return fn, check


CELL_CONFIGS = [("LSTMCell, B=1", "lstm", 1), ("LSTMCell, B=64", "lstm", 64), ("GRUCell, B=1", "gru", 1),
                ("GRUCell, B=64", "gru", 64)]
CELL_H = 128
REF_CELL = "streamrnn (cells fused into LSTM / GRU layers)"
M_CELL_GRAPH = "streamrnn, the cell's ops as exported (no fusion, before)"
M_ORT_CELL = "onnxruntime session.run (states fed back)"
M_TORCH_CELL = "torch module (states fed back)"
CELL_TITLE = (f"Cell step exports (nn.LSTMCell / nn.GRUCell + Linear, H={CELL_H}, states in and out): one frame "
              "of B streams per call (µs per call, 1 thread)")
CELL_PLOT = dict(title=f"cell step exports, H={CELL_H}, one frame per call (1 thread)", xkey=None,
                 ylabel="p50 µs per call", value=lambda r: r["p50_us"])


def build_cell_step(kind: str, H: int, seed: int):
    """torch ``nn.LSTMCell`` / ``nn.GRUCell`` + Linear with its state in and out (x (B, H), h (B, H)
    [, c (B, H)]), and its ONNX export (batch dynamic): how a step is exported for streaming."""
    import io
    import warnings

    import torch

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = (torch.nn.LSTMCell if kind == "lstm" else torch.nn.GRUCell)(H, H)
            self.fc = torch.nn.Linear(H, HEAD)

        def forward(self, x, *st):
            st = self.cell(x, st if kind == "lstm" else st[0])
            st = st if kind == "lstm" else (st,)
            return (self.fc(st[0]),) + tuple(st)

    torch.manual_seed(seed)
    net = Step().eval()
    names = ["h", "c"] if kind == "lstm" else ["h"]
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, H),) + tuple(torch.zeros(2, H) for _ in names), f,
                          input_names=["x"] + names, output_names=["y"] + [n + "n" for n in names], dynamo=False,
                          opset_version=17, dynamic_axes={k: {0: "b"} for k in ["x", "y"] + names + [n + "n" for n in names]})
    return net, f.getvalue(), names


def section_cells(quick: bool, seed: int) -> dict:
    import torch

    from streamrnn.converters import onnx_import

    threads = set_threads(1)
    res = _header("cells", quick, threads, {
        "unit": "us per call (B stream-steps)", "check_steps": CHECK_STEPS,
        "model": f"nn.LSTMCell / nn.GRUCell ({CELL_H} -> {CELL_H}) + Linear ({HEAD} outputs), exported with its states "
                 "in and out",
        "ref_check": "equal to the torch module in float64",
        "note": "The export writes the cell as plain ops (two Gemms, a Split, Sigmoid / Tanh, Mul / Add). streamrnn "
                "fuses it into an LSTM / GRU layer at load (bench/NOTES.md 139; checked against the graph): a chain "
                "model, stream.step(x, out=y) for B=1, pool.step(ids in random order, X, out=Y) for B=64. The "
                "'no fusion' row is the same file loaded with the fusion switched off (the graph model of entry 133). "
                "onnxruntime / torch: the same graph / module, the states fed back",
    })
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for name, kind, B in tqdm(CELL_CONFIGS, desc="cells", disable=None):
            net, onnx_bytes, names = build_cell_step(kind, CELL_H, seed)
            fused = srnn.from_onnx(onnx_bytes)
            keep = onnx_import.fuse_lstm_cells
            onnx_import.fuse_lstm_cells = lambda *a: None  # the file as exported (private switch, for this comparison)
            try:
                plain = srnn.from_onnx(onnx_bytes)
            finally:
                onnx_import.fuse_lstm_cells = keep
            sess = ort_session(onnx_bytes, 1)
            X1 = rng.standard_normal((B, CELL_H)).astype(np.float32)
            pairs = {REF_CELL: m_graph_streamrnn(fused, X1, rng), M_CELL_GRAPH: m_graph_streamrnn(plain, X1, rng),
                     M_ORT_CELL: m_cell_ort(sess, X1, names), M_TORCH_CELL: m_cell_torch(net, X1, names)}
            X = rng.standard_normal((CHECK_STEPS, B, CELL_H)).astype(np.float32)
            stats = checked_stats(pairs, REF_CELL, X, lambda X64: m_cell_torch(net, X1.astype(np.float64), names)[1](X64),
                                  net, BUDGET["cells"][quick])
            res["configs"].append({"name": name, "cell": kind, "hidden_size": CELL_H, "streams": B,
                                   "output_size": HEAD, "results": stats})
    return res


def m_cell_ort(sess, X1, names):
    B, H = X1.shape
    feeds = {"x": X1, **{n: np.zeros((B, H), np.float32) for n in names}}
    run = sess.run

    def fn():
        out = run(None, feeds)
        for n, v in zip(names, out[1:]):
            feeds[n] = v

    def check(X):
        f = {n: np.zeros((B, H), np.float32) for n in names}
        out = []
        for x in X:
            f["x"] = x
            y, *st = run(None, f)
            f.update(zip(names, st))
            out.append(y)
        return np.stack(out)

    return fn, check


def m_cell_torch(net, X1, names):
    import torch

    B, H = X1.shape
    xt = torch.from_numpy(X1)
    st = [torch.zeros(B, H, dtype=xt.dtype) for _ in names]

    def fn():
        st[:] = net(xt, *st)[1:]

    def check(X):
        s = [torch.zeros(B, H, dtype=xt.dtype) for _ in names]
        out = []
        for x in X:
            y, *s = net(torch.from_numpy(x), *s)
            out.append(y.numpy().copy())
        return np.stack(out)

    return fn, check


SILERO_CONFIGS = [("B=1", 1), ("B=16", 16), ("B=64", 64)]
SILERO_N = 576  # samples per chunk at 16 kHz (64 of context + 512 new)
REF_SILERO = "streamrnn, openvino file (rows batched)"
M_SILERO_SEQ = "streamrnn, sequence file (one stream per evaluation)"
M_ORT_SILERO = "onnxruntime, silero_vad.onnx (batched, sr=16000)"
M_ORT_SILERO_OV = "onnxruntime, openvino file (one call per stream)"
SILERO_TITLE = "Silero VAD (silero-vad 6.2.3's ONNX files): one 576-sample chunk of B streams per call (µs per call, 1 thread)"
SILERO_PLOT = dict(title="Silero VAD, one chunk of B streams per call (1 thread)", xkey=None,
                   ylabel="p50 µs per call", value=lambda r: r["p50_us"])


def section_silero(quick: bool, seed: int) -> dict:
    """A real streaming model: Silero VAD, B streams advance one chunk per call."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    from silero import VERSION, silero_dir

    d, why = silero_dir()
    if d is None:
        raise SystemExit(f"silero section: {why}")
    threads = set_threads(1)
    res = _header("silero", quick, threads, {
        "unit": "us per call (B stream-steps)", "check_steps": CHECK_STEPS, "silero_vad": VERSION,
        "model": "Silero VAD 16 kHz (reflect pad, STFT as a Conv, 4 Conv1d, LSTM 128, Conv1d decoder)",
        "ref_check": "equal to the same file loaded in float64",
        "note": "streamrnn loads silero_vad_openvino_16k.onnx (input (1, 576), state (2, 1, 128); its rows found "
                "to compute on their own at load, so pool.step evaluates the graph once for B streams) and "
                "silero_vad_16k_sequence.onnx (input (T, 576), h / c (1, 1, 128): one stream per evaluation); "
                "stream.step(x, out=y) for B=1, pool.step(ids, X, out=Y) with ids in random order otherwise. "
                "onnxruntime runs the package's main file silero_vad.onnx (what silero-vad itself uses; its If "
                "nodes keep streamrnn from loading it) with B streams in one call, the state (2, B, 128) pre-stacked "
                "and fed back, and the openvino file one call per stream. Outputs checked against streamrnn's over "
                f"{CHECK_STEPS} chunks of noise with tone bursts",
    })
    rng = np.random.default_rng(seed)
    ov = srnn.load(str(d / "silero_vad_openvino_16k.onnx"))
    ov64 = srnn.load(str(d / "silero_vad_openvino_16k.onnx"), dtype="float64")
    seq = srnn.load(str(d / "silero_vad_16k_sequence.onnx"))
    main_sess = ort_session(open(d / "silero_vad.onnx", "rb").read(), 1)
    ov_sess = ort_session(open(d / "silero_vad_openvino_16k.onnx", "rb").read(), 1)
    for name, B in tqdm(SILERO_CONFIGS, desc="silero", disable=None):
        X1 = (0.3 * rng.standard_normal((B, SILERO_N))).astype(np.float32)
        pairs = {REF_SILERO: m_graph_streamrnn(ov, X1, rng), M_SILERO_SEQ: m_graph_streamrnn(seq, X1, rng),
                 M_ORT_SILERO: m_silero_ort(main_sess, X1), M_ORT_SILERO_OV: m_silero_ort(ov_sess, X1, per_stream=True)}
        t = np.arange(CHECK_STEPS * SILERO_N) / 16000.0
        X = 0.05 * rng.standard_normal((B, CHECK_STEPS * SILERO_N)) + 0.5 * np.sin(2 * np.pi * 220 * t) * (
            np.sin(2 * np.pi * 2 * t) > 0)
        X = X.reshape(B, CHECK_STEPS, SILERO_N).transpose(1, 0, 2).astype(np.float32)  # (T, B, N)
        checks, Yref = run_checks({k: v[1] for k, v in pairs.items()}, REF_SILERO, X)
        checks[REF_SILERO] = compare(Yref, m_graph_streamrnn(ov64, X1.astype(np.float64), rng)[1](X.astype(np.float64)),
                                     rtol=RTOL)
        fns = {k: v[0] for k, v in pairs.items()}
        fns[M_TIMER] = lambda: None
        stats = measure(fns, BUDGET["silero"][quick])
        for k in stats:
            stats[k]["check"] = checks.get(k)
        res["configs"].append({"name": name, "streams": B, "input_size": SILERO_N, "output_size": 1, "results": stats})
    return res


def m_silero_ort(sess, X1, per_stream: bool = False):
    """Silero VAD on onnxruntime, the state fed back: B streams in one call (the main file, with
    sr) or one call per stream (the openvino file, batch fixed to 1)."""
    B = X1.shape[0]
    names = {i.name for i in sess.get_inputs()}
    sr = {"sr": np.array(16000, np.int64)} if "sr" in names else {}
    run = sess.run
    if per_stream:
        feeds = [{"input": X1[b : b + 1], "state": np.zeros((2, 1, 128), np.float32), **sr} for b in range(B)]

        def fn():
            for f in feeds:
                _, f["state"] = run(None, f)
    else:
        f1 = {"input": X1, "state": np.zeros((2, B, 128), np.float32), **sr}

        def fn():
            _, f1["state"] = run(None, f1)

    def check(X):  # X (T, B, N) -> (T, B, 1)
        out = []
        if per_stream:
            st = [np.zeros((2, 1, 128), np.float32) for _ in range(B)]
            for x in X:
                ys = []
                for b in range(B):
                    y, st[b] = run(None, {"input": x[b : b + 1], "state": st[b], **sr})
                    ys.append(y.reshape(1))
                out.append(np.stack(ys))
            return np.stack(out)
        st = np.zeros((2, B, 128), np.float32)
        for x in X:
            y, st = run(None, {"input": x, "state": st, **sr})
            out.append(y.reshape(B, 1))
        return np.stack(out)

    return fn, check


def _mark(check) -> str:
    if not check:
        return ""
    if check.get("pass"):
        return " ✓"
    why = check.get("error") or f"rel err {check.get('rel_err', float('nan')):.1e}"
    return f" ✗ ({why})"


def _machine_line(m: dict) -> str:
    v = m["versions"]
    return (f"{m['cpu']}, {m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs; Python {m['python']}, "
            f"numpy {v.get('numpy')}, numba {v.get('numba')}, onnxruntime {v.get('onnxruntime')}, "
            f"torch {v.get('torch')}, streamrnn {v.get('streamrnn')}; load average (1/5/15 min) at start "
            f"{m.get('loadavg_1_5_15')}")


def to_markdown(res: dict, title: str, ref: str, *, unit_scale: float = 1.0, unit: str = "µs",
                throughput: bool = False) -> str:
    cfgs = res["configs"]
    methods = list(cfgs[0]["results"])
    s = res["settings"]
    lines = [
        f"# {title}",
        "",
        f"{res['created']}{' (--quick)' if res['quick'] else ''}, streamrnn at {res['git'].get('commit')}"
        f"{' + uncommitted changes' if res['git'].get('modified_files') else ''}. "
        f"Machine: {_machine_line(res['machine'])}.",
        f"float32; threads: {s['threads']}; "
        + (s.get("model") or f"{'LSTM or GRU (as the column says)' if any(c.get('cell') == 'gru' for c in cfgs) else 'LSTM'} "
                              f"+ Linear head ({HEAD} outputs)")
        + "; methods measured interleaved "
        f"(round-robin blocks) after a warm-up, every call timed alone, gc paused. "
        f"Load average at the end: {res.get('loadavg_end')} (this run adds about 1, 2 with 2 threads; more means other processes shared the cores).",
    ]
    if "note" in s:
        lines.append(s["note"] + ".")
    m = res["machine"]
    load, ncpu = (m.get("loadavg_1_5_15") or [None])[0], m.get("usable_cpus") or m.get("logical_cpus")
    if load is not None and ncpu and load > ncpu - 0.5:
        lines += ["", f"**Warning: the 1-minute load average was {load} on {ncpu} CPUs when this section started: other "
                      "processes were competing for the cores. Percentile tails (and, with several threads, even "
                      "medians) reflect that load; rerun on a quiet machine before drawing conclusions.**"]
    lines += [
        "",
        f"Cells: p50 / p99 {unit}{' (thousands of stream-steps/s at p50)' if throughput else ''}. "
        f"✓ = outputs equal streamrnn's (rtol {RTOL:g}); for the streamrnn row: "
        f"{s.get('ref_check', 'equal to a float64 numpy reference')}. ✗ = mismatch (a fast wrong answer).",
        "",
        "| method | " + " | ".join(c["name"] for c in cfgs) + " |",
        "|---|" + "---|" * len(cfgs),
    ]
    for m in methods:
        cells = []
        for c in cfgs:
            r = c["results"][m]
            cell = f"{fmt_us(r['p50_us'] * unit_scale)} / {fmt_us(r['p99_us'] * unit_scale)}"
            if throughput:
                cell += f" ({r['stream_steps_per_s_at_p50'] / 1e3:,.0f})"
            cells.append(cell + _mark(r.get("check")))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for m in methods:
        if m.startswith("streamrnn") or m.startswith("("):
            continue
        cells = [f"{c['results'][m]['p50_us'] / c['results'][ref]['p50_us']:.2f}x" for c in cfgs]
        lines.append(f"| **streamrnn speed-up vs {m}** (p50 ratio) | " + " | ".join(cells) + " |")
    lines += ["", f"p99.9 {unit} (calls timed):", "",
              "| method | " + " | ".join(c["name"] for c in cfgs) + " |", "|---|" + "---|" * len(cfgs)]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(
            f"{fmt_us(c['results'][m]['p99_9_us'] * unit_scale)} ({c['results'][m]['n']})" for c in cfgs) + " |")
    lines += ["", "Numerics (max |err| / max |reference|):", "",
              "| method | " + " | ".join(c["name"] for c in cfgs) + " |", "|---|" + "---|" * len(cfgs)]
    for m in methods:
        cells = []
        for c in cfgs:
            ch = c["results"][m].get("check")
            cells.append("-" if not ch else (f"{ch['rel_err']:.1e}{_mark(ch)}" if "rel_err" in ch else _mark(ch)))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: str, *, title: str, xkey: str | None, ylabel: str, value, logx: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = res["configs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    xs = [c[xkey] for c in cfgs] if xkey else list(range(len(cfgs)))
    methods = [m for m in cfgs[0]["results"] if not m.startswith("(")]
    for k, m in enumerate(methods):
        ys = [value(c["results"][m]) for c in cfgs]
        if xkey:  # a numeric axis: lines
            style = "-o" if m.startswith("streamrnn") else "--s"
            ax.plot(xs, ys, style, label=m, lw=2 if m.startswith("streamrnn") else 1.2)
        else:  # separate configurations: grouped bars
            w = 0.8 / len(methods)
            ax.bar([x - 0.4 + (k + 0.5) * w for x in xs], ys, w, label=m,
                   hatch="" if m.startswith("streamrnn") else "//", edgecolor="black", linewidth=0.4)
    ax.set_yscale("log")
    if xkey and logx:
        ax.set_xscale("log", base=2)
    ax.set_xticks(xs)
    ax.set_xticklabels([c["name"] for c in cfgs], fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(res: dict, out: str, stem: str, md: str, no_plot: bool, plot_kw: dict) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(md)
    if not no_plot:
        plot(res, os.path.join(out, f"{stem}.png"), **plot_kw)


def render_only(args) -> int:
    kinds = {
        "latency": (lambda r: to_markdown(r, "Latency: one stream, one step per call (µs per step, 1 thread)", REF),
                    dict(title="one stream, one step per call (1 thread, float32)", xkey="hidden_size",
                         ylabel="p50 µs per step", value=lambda r: r["p50_us"])),
        "streams": (lambda r: to_markdown(r, f"Many streams: B streams advance one step per call (ms per call, "
                                             f"{r['settings']['threads']['numba']} threads)", REF_POOL,
                                          unit_scale=1e-3, unit="ms", throughput=True),
                    dict(title="many streams, one step each per call", xkey=None,
                         ylabel="stream-steps / s (at p50)", value=lambda r: r["stream_steps_per_s_at_p50"])),
        "offline": (lambda r: to_markdown(r, f"Offline: whole sequence, B=1, T={OFFLINE_T} (µs per time step, "
                                             f"{r['settings']['threads']['numba']} thread(s))", REF_RUN),
                    dict(title=f"offline, B=1, T={OFFLINE_T}", xkey=None, ylabel="p50 µs per time step",
                         value=lambda r: r["p50_us"])),
        "graph": (lambda r: to_markdown(r, GRAPH_TITLE, REF_GRAPH), GRAPH_PLOT),
        "silero": (lambda r: to_markdown(r, SILERO_TITLE, REF_SILERO), SILERO_PLOT),
        "cells": (lambda r: to_markdown(r, CELL_TITLE, REF_CELL), CELL_PLOT),
    }
    for sec in args.sections:
        if sec not in kinds:
            continue
        path = os.path.join(args.out, f"{sec}.json")
        if not os.path.exists(path):
            print(f"# {path}: not found, skipped", file=sys.stderr)
            continue
        with open(path) as f:
            res = json.load(f)
        md_fn, plot_kw = kinds[sec]
        md = md_fn(res)
        write(res, args.out, sec, md, args.no_plot, plot_kw)
        print(md)
    return 0


def main(args) -> int:
    if args.render_only:
        return render_only(args)
    t0 = time.perf_counter()
    m = machine_info()
    print(f"# {_machine_line(m)}", file=sys.stderr)
    if "latency" in args.sections:
        res = section_latency(args.quick, args.seed)
        res["loadavg_end"] = load_average()
        md = to_markdown(res, "Latency: one stream, one step per call (µs per step, 1 thread)", REF)
        write(res, args.out, "latency", md, args.no_plot,
              dict(title="one stream, one step per call (1 thread, float32)", xkey="hidden_size",
                   ylabel="p50 µs per step", value=lambda r: r["p50_us"]))
        print(md)
    if "streams" in args.sections:
        res = section_streams(args.quick, args.seed, args.stream_threads)
        res["loadavg_end"] = load_average()
        md = to_markdown(res, f"Many streams: B streams advance one step per call (ms per call, "
                              f"{args.stream_threads} threads)", REF_POOL, unit_scale=1e-3, unit="ms",
                         throughput=True)
        write(res, args.out, "streams", md, args.no_plot,
              dict(title=f"many streams, one step each per call ({args.stream_threads} threads)", xkey=None,
                   ylabel="stream-steps / s (at p50)", value=lambda r: r["stream_steps_per_s_at_p50"]))
        print(md)
    if "offline" in args.sections:
        res = section_offline(args.quick, args.seed, args.offline_threads)
        res["loadavg_end"] = load_average()
        md = to_markdown(res, f"Offline: whole sequence, B=1, T={OFFLINE_T} (µs per time step, "
                              f"{args.offline_threads} thread(s))", REF_RUN)
        write(res, args.out, "offline", md, args.no_plot,
              dict(title=f"offline, B=1, T={OFFLINE_T}", xkey=None, ylabel="p50 µs per time step",
                   value=lambda r: r["p50_us"]))
        print(md)
    for sec, measure_fn, title, ref, plot_kw in (("graph", section_graph, GRAPH_TITLE, REF_GRAPH, GRAPH_PLOT),
                                                 ("cells", section_cells, CELL_TITLE, REF_CELL, CELL_PLOT),
                                                 ("silero", section_silero, SILERO_TITLE, REF_SILERO, SILERO_PLOT)):
        if sec in args.sections:
            res = measure_fn(args.quick, args.seed)
            res["loadavg_end"] = load_average()
            md = to_markdown(res, title, ref)
            write(res, args.out, sec, md, args.no_plot, plot_kw)
            print(md)
    if "footprint" in args.sections:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import footprint

        g = git_state()
        res = footprint.run(args.quick, args.out, _machine_line(m),
                            f"{g.get('commit')}{' + uncommitted changes' if g.get('modified_files') else ''}")
        print(footprint.to_markdown(res))
    print(f"# total {time.perf_counter() - t0:.1f} s; results in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
