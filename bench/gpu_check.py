#!/usr/bin/env python
"""GPU check of streamrnn's CUDA engine: parity with the CPU engine, then timings vs PyTorch cuDNN.

    python bench/gpu_check.py --out $OUT/gpu.json [--quick] [--budget 240]

Self-contained (run from the repository root; the package need not be installed). In order:

1. ``parity``  fresh random weights, device="cuda" vs device="cpu" on a 2-layer stack (LSTM with
   peepholes + projection + clip + input_forget, plain LSTM, tanh head; float32): run with ragged
   lengths and an initial state (B=300, several sequences per block), stream.step / push,
   pool.step with ids in random order, get/set_state, push, for every launch path (graph /
   driver / numba).
2. ``step``    host-to-host latency per call (p50 / p99, microseconds) of ``pool.step`` for
   B in {1, 64, 1024, 16384} at I=H in {128, 512} (LSTM + Linear head, float32), side by side
   with torch cuDNN ``nn.LSTM`` + ``nn.Linear`` (seq_len 1, state kept on the device, pinned
   buffers; numpy in and out, like pool.step) eager and replayed as a CUDA graph, TF32 off (the
   fair float32 comparison) and on (reference). Before timing each size, the pool's outputs are
   checked against the CPU engine and against torch (TF32 off): every tile bucket is verified on
   the benchmarked model itself. Also stream.step and the three launch paths at B=1, and A/B
   variants of the defaults in the same process (B >= 64: the dense head as the row-tile kernel
   of before, the LSTM GEMM in the vector layout with its kernel times; B=1024: the GEMM tile of
   many streams).
3. ``seq``     throughput of ``model.run`` (B in {1, 64}, T=250) vs torch ``nn.LSTM`` on the
   whole sequence (and their outputs compared); then the persistent LSTM kernel
   (``STREAMRNN_CUDA_SEQ=grid``, with numba's grid sync and with the counter barrier,
   ``STREAMRNN_CUDA_GRIDSYNC=atomic``, with the device time of each phase of a step
   stamped, ``GRID_STAMPS``, and with its shared arrays in dynamic shared memory,
   ``STREAMRNN_CUDA_GRID_DYN=1``; B in {1, 4, 16, 64}) against the per-block one
   (``STREAMRNN_CUDA_SEQ=block``): parity and timing.
4. ``parity`` again with what is left of the budget: GRU (both linear_before_reset) stack with a
   softmax head, RNN relu (float64), LSTM + head (float64, 2000 streams), bidirectional run;
   then (``more``) a PyTorch GRU + Linear head's pool.step at B in {1024, 16384}, the GRU as a
   tiled GEMM (default) against the row-tile kernel (``STREAMRNN_CUDA_GEMM=0``), and its
   model.run at B in {1, 16} through the persistent sequence kernel (default) against the
   per-block kernel (``STREAMRNN_CUDA_SEQ=block``), both against the CPU engine.

5. ``persist`` (not in the default order) one stream through the persistent step kernel
   (``STREAMRNN_CUDA_PERSIST=1``, streamrnn/engine/persist.py) at each H: parity with the CPU
   engine over one-row steps on two streams, a two-row step (the graph path, after stopping
   the kernel), the relaunch after the idle exit; then pool.step / stream.step latency against
   the graph path and torch + CUDA graph, back to back and 1 ms apart.
6. ``hostcall`` (not in the default order; run it last: a broken driver call would crash the
   process, results of the sections before it are saved) ``STREAMRNN_CUDA_HOSTCALL=njit`` (a
   pool's graph step as one njit call that calls cuGraphLaunch / cuStreamSynchronize itself,
   bench/NOTES.md entry 80) vs the default at B in {1, 64, 1024}: parity, a refused call, latency.

``--sections`` picks and orders them (default ``parity,step,seq,more``, where ``more`` is 4.).

Prints markdown tables (progress lines flushed as it goes) and writes every number to ``--out``
(JSON). Each measurement is wrapped: a failure is recorded and the rest goes on. A time budget
(default 240 s) skips what is left when it runs out, so the script ends in under 5 minutes; a
watchdog ends a step that never returns at budget + grace (default 45 s), results saved.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

T_START = time.perf_counter()


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_check.json", help="JSON output path")
    p.add_argument("--quick", action="store_true", help="fewer iterations and fewer parity cases")
    p.add_argument("--budget", type=float, default=240.0, help="seconds; what is left then is skipped")
    p.add_argument("--grace", type=float, default=45.0,
                   help="seconds past the budget after which a step that has not returned is abandoned "
                        "(results so far saved, exit status 3)")
    p.add_argument("--sizes", default="128,512", help="hidden sizes of the timing section")
    p.add_argument("--batches", default="1,64,1024,16384", help="stream counts of the timing section")
    p.add_argument("--sections", default="parity,step,seq,more",
                   help="sections to run, in this order: parity (LSTM stack), step (pool.step timings), "
                        "seq (model.run timings), more (parity of the other layer types), persist (the "
                        "persistent one-row step kernel: parity and timings vs the graph path); the budget "
                        "skips what comes last, so put first what this run is for")
    p.add_argument("--smoke", action="store_true",
                   help="tiny parity models and at most 3 sequences in seq (to try the script itself on "
                        "NUMBA_ENABLE_CUDASIM=1)")
    return p.parse_args(argv)


ARGS = _args() if __name__ == "__main__" else _args([])

import numpy as np  # noqa: E402

RESULT: dict = {"env": {}, "parity": [], "step": [], "seq": [], "profile": [], "phases": [], "seq_phases": [],
                "errors": [], "skipped": []}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:6.1f}s] {msg}", flush=True)


def left() -> float:
    return ARGS.budget - (time.perf_counter() - T_START)


CURRENT = ["start"]  # the guarded step running now (named by the watchdog)


def guarded(name: str, fn, *a, need: float = 5.0, **kw):
    """Run fn; record an exception instead of raising; skip when the budget is spent."""
    if left() < need:
        RESULT["skipped"].append(name)
        log(f"SKIP {name} (time budget)")
        return None
    CURRENT[0] = name
    try:
        return fn(*a, **kw)
    except Exception as e:  # noqa: BLE001 - a benchmark records and goes on
        tb = traceback.format_exc()
        RESULT["errors"].append({"what": name, "error": f"{type(e).__name__}: {e}", "traceback": tb[-4000:]})
        log(f"ERROR {name}: {type(e).__name__}: {e}")
        return None


def save() -> None:
    RESULT["elapsed_s"] = round(time.perf_counter() - T_START, 1)
    d = os.path.dirname(os.path.abspath(ARGS.out))
    os.makedirs(d, exist_ok=True)
    with open(ARGS.out, "w") as f:
        json.dump(RESULT, f, indent=1, default=str)


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------
def env() -> None:
    e = RESULT["env"]
    e["python"] = sys.version.split()[0]
    e["platform"] = platform.platform()
    e["numpy"] = np.__version__
    e["args"] = vars(ARGS)
    try:
        import numba

        e["numba"] = numba.__version__
        try:
            from importlib.metadata import version

            e["numba_cuda"] = version("numba-cuda")
            e["cuda_bindings"] = version("cuda-bindings")
        except Exception:
            pass
        from numba import cuda

        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        e["gpu"] = name
        e["cc"] = list(dev.compute_capability)
        e["sms"] = int(dev.MULTIPROCESSOR_COUNT)
        try:  # the float32 peak of gpu_decide's targets: SMs x lanes x 2 x this clock
            e["clock_mhz"] = int(dev.CLOCK_RATE) / 1000
        except Exception:
            pass
    except Exception as ex:
        e["numba_error"] = f"{type(ex).__name__}: {ex}"
    try:
        import torch

        e["torch"] = torch.__version__
        e["cudnn"] = torch.backends.cudnn.version()
        e["torch_gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as ex:
        e["torch_error"] = f"{type(ex).__name__}: {ex}"
    log(f"env: {json.dumps({k: v for k, v in e.items() if k != 'args'})}")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------
import streamrnn as srnn  # noqa: E402
from streamrnn.spec import (  # noqa: E402
    Activation, ActivationLayer, DenseLayer, GRULayer, LSTMLayer, ModelSpec, RNNLayer, SoftmaxLayer,
)

RNG = np.random.default_rng(2026)


def U(scale, *shape):
    return RNG.uniform(-scale, scale, shape)


def lstm_head(I, H, O):
    k = 1 / np.sqrt(H)
    return ModelSpec((LSTMLayer(I, H, U(k, 1, 4 * H, I), U(k, 1, 4 * H, H), U(k, 1, 8 * H)),
                      DenseLayer(U(k, O, H), U(k, O))))


def build(spec, dtype, device, mode=None, ATTR=None, **env):
    """A model; mode sets STREAMRNN_CUDA_LAUNCH, env other STREAMRNN_CUDA_* variables
    (GEMM="0": row-tile LSTM kernels, MAPPED_OUT="0": copy the outputs out, PROFILE="1",
    SEQ="grid": the persistent LSTM sequence kernel, STAGE="loop": the GEMM's unpipelined staging,
    DENSE="tile": row-tile dense layers);
    ATTR: attributes of this model's CUDA engine to override (e.g. {"GRID_GROUP": 32})."""
    if ATTR:
        m = build(spec, dtype, device, mode, **env)
        for k, v in ATTR.items():
            if not hasattr(m._cuda, k):
                raise AttributeError(f"ATTR: expected an attribute of the CUDA engine, got {k!r}")
            setattr(m._cuda, k, v)
        return m
    env = {f"STREAMRNN_CUDA_{k}": v for k, v in env.items()}
    if mode is not None:
        env["STREAMRNN_CUDA_LAUNCH"] = mode
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return srnn.Model(spec, dtype=dtype, device=device)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def pool_mode(pool) -> str:
    try:
        return pool._cuda.mode
    except Exception:
        return "?"


# ---------------------------------------------------------------------------------------------
# 1. parity
# ---------------------------------------------------------------------------------------------
def _cmp(case, what, got, want, dtype):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    rtol, atol = (1e-5, 1e-5) if dtype == "float32" else (1e-10, 1e-12)
    diff = np.abs(got - want)
    ok = bool(got.shape == want.shape and np.all(diff <= atol + rtol * np.abs(want)))
    rel = float(np.max(diff / np.maximum(np.abs(want), 1e-3))) if diff.size else 0.0
    row = {"case": case, "what": what, "dtype": dtype, "max_abs": float(diff.max()) if diff.size else 0.0,
           "max_rel": rel, "ok": ok}
    RESULT["parity"].append(row)
    if not ok:
        log(f"  PARITY FAIL {case} / {what}: max_abs {row['max_abs']:.3g} max_rel {rel:.3g}")
    return ok


def parity_case(case, spec, dtype, ns=(1, 5), run_B=300, modes=(None,), streams=True):
    t0 = time.perf_counter()
    mc = build(spec, dtype, "cpu")
    I = mc.input_size
    # run: ragged, initial state, several sequences per block
    mg = build(spec, dtype, "cuda")
    T = 6
    X = RNG.standard_normal((run_B, T, I)).astype(dtype)
    L = RNG.integers(0, T + 1, run_B)
    L[0] = T
    st = RNG.standard_normal((run_B, mc.state_size)) * 0.5
    Yc, sc = mc.run(X, state=st, lengths=L, return_state=True)
    Yg, sg = mg.run(X, state=st, lengths=L, return_state=True)
    _cmp(case, f"run B={run_B} T={T} ragged", Yg, Yc, dtype)
    _cmp(case, "run final state", sg.data, sc.data, dtype)
    if not streams:
        log(f"parity {case} {dtype}: done in {time.perf_counter() - t0:.1f}s")
        return
    # stream
    s_c, s_g = mc.stream(), mg.stream()
    Xs = RNG.standard_normal((8, I)).astype(dtype)
    ys_c = [s_c.step(x) for x in Xs[:3]]
    ys_g = [s_g.step(x) for x in Xs[:3]]
    _cmp(case, "stream.step x3", ys_g, ys_c, dtype)
    _cmp(case, "stream.push T=5", s_g.push(Xs[3:]), s_c.push(Xs[3:]), dtype)
    _cmp(case, "stream state", s_g.state.data, s_c.state.data, dtype)
    # pools, per launch path
    for mode in modes:
        mgm = mg if mode is None else build(spec, dtype, "cuda", mode)
        cap = max(ns) + 3
        pc, pg = mc.pool(cap), mgm.pool(cap)
        tag = f"pool[{pool_mode(pg)}]"
        ic, ig = pc.open(cap), pg.open(cap)
        for n in ns:
            sel = RNG.permutation(cap)[:n]
            Xp = RNG.standard_normal((n, I)).astype(dtype)
            _cmp(case, f"{tag}.step n={n} random ids", pg.step(ig[sel], Xp), pc.step(ic[sel], Xp), dtype)
            _cmp(case, f"{tag}.step n={n} again", pg.step(ig[sel], Xp), pc.step(ic[sel], Xp), dtype)
        for sid in (0, cap - 1, int(sel[0])):
            _cmp(case, f"{tag}.get_state({sid})", pg.get_state(sid).data, pc.get_state(sid).data, dtype)
        snap = s_c.state
        pg.set_state(1, snap), pc.set_state(1, snap)
        Xq = RNG.standard_normal((2, I)).astype(dtype)
        _cmp(case, f"{tag}.set_state + step", pg.step([1, 2], Xq), pc.step([1, 2], Xq), dtype)
        _cmp(case, f"{tag}.push", pg.push(2, Xs), pc.push(2, Xs), dtype)
    log(f"parity {case} {dtype}: done in {time.perf_counter() - t0:.1f}s")


def parity() -> None:
    log("== parity (device='cuda' vs device='cpu') ==")
    k = 0.3
    if ARGS.smoke:
        spec = ModelSpec((LSTMLayer(3, 6, U(k, 1, 24, 3), U(k, 1, 24, 4), U(k, 1, 48), clip=2.5, P=U(k, 1, 18),
                                    proj=U(k, 1, 4, 6), input_forget=True), DenseLayer(U(k, 2, 4), U(k, 2))))
        guarded("parity smoke", parity_case, "smoke", spec, "float32", ns=(1, 3), run_B=3,
                modes=(None, "driver", "numba"))
        save()
        return
    # LSTM with every option, stacked on a plain LSTM, tanh head
    spec1 = ModelSpec((
        LSTMLayer(24, 48, U(k, 1, 192, 24), U(k, 1, 192, 20), U(k, 1, 384), clip=2.5, P=U(k, 1, 144),
                  proj=U(k, 1, 20, 48), input_forget=True),
        LSTMLayer(20, 32, U(k, 1, 128, 20), U(k, 1, 128, 32), U(k, 1, 256)),
        DenseLayer(U(k, 7, 32), U(k, 7), Activation("Tanh")),
    ))
    guarded("parity lstm_full_stack", parity_case, "lstm_full_stack", spec1, "float32",
            ns=(1, 5), modes=(None, "driver", "numba"), need=20)
    save()


def parity_more() -> None:
    """The other layer types (after the timings, with what is left of the budget)."""
    log("== parity, more layer types ==")
    k = 0.3
    spec2 = ModelSpec((
        GRULayer(16, 40, U(k, 1, 120, 16), U(k, 1, 120, 40), U(k, 1, 240), linear_before_reset=True),
        GRULayer(40, 24, U(k, 1, 72, 40), U(k, 1, 72, 24), U(k, 1, 144), clip=3.0),
        DenseLayer(U(k, 5, 24), U(k, 5)), SoftmaxLayer(5),
    ))
    # first the cases no hardware run has reached yet (the budget cut them in stop 12 and session 14)
    spec3 = ModelSpec((
        RNNLayer(10, 64, U(k, 1, 64, 10), U(0.1, 1, 64, 64), U(k, 1, 128), activations=(Activation("Relu"),)),
        ActivationLayer(64, Activation("LeakyRelu", 0.1)), DenseLayer(U(k, 3, 64), U(k, 3)),
    ))
    # run of 4 sequences: the persistent sequence kernel, new for RNN layers (NOTES 89; the
    # per-block kernel of 300 sequences passed in stop 14's run 2); pools of 5: the RNN GEMM
    guarded("parity rnn_relu f64", parity_case, "rnn_relu", spec3, "float64", ns=(1, 5), run_B=4, need=25)
    spec5 = ModelSpec((
        LSTMLayer(12, 16, U(k, 2, 64, 12), U(k, 2, 64, 16), U(k, 2, 128), direction="bidirectional"),
        GRULayer(32, 8, U(k, 1, 24, 32), U(k, 1, 24, 8), U(k, 1, 48), direction="reverse"),
        DenseLayer(U(k, 4, 8), U(k, 4)),
    ))
    guarded("parity bidir run", parity_case, "bidir_run", spec5, "float32", streams=False, need=10)
    guarded("parity lstm_head f64", parity_case, "lstm_head", lstm_head(32, 96, 8), "float64",
            ns=(1, 40, 2000), need=25)
    guarded("parity gru_stack", parity_case, "gru_stack", spec2, "float32", ns=(1, 300), need=25)
    n_ok = sum(r["ok"] for r in RESULT["parity"])
    log(f"parity: {n_ok}/{len(RESULT['parity'])} checks ok so far")
    save()
    # a PyTorch GRU's step of many streams as a tiled GEMM (NOTES 87) vs the row-tile kernel
    for H in [int(s) for s in ARGS.sizes.split(",") if s]:
        for B in (1024, 16384):
            guarded(f"gru step H={H} B={B}", gru_step_ab, H, B, need=15)
        for B in (1, 16):  # NOTES 88: its run of few sequences through the persistent kernel
            guarded(f"gru seq H={H} B={B}", gru_seq_ab, H, B, need=10)
    save()


_GRU: dict = {}  # H -> spec; (H, device, env) -> model: each built once for the GRU rows


def _gru_head(H):
    if H not in _GRU:
        k = 1 / np.sqrt(H)
        _GRU[H] = ModelSpec((GRULayer(H, H, U(k, 1, 3 * H, H), U(k, 1, 3 * H, H), U(k, 1, 6 * H),
                                      linear_before_reset=True), DenseLayer(U(k, 32, H), U(k, 32))))
    return _GRU[H]


def _gru_model(H, device, **env):
    key = (H, device, tuple(sorted(env.items())))
    if key not in _GRU:
        _GRU[key] = build(_gru_head(H), "float32", device, **env)
    return _GRU[key]


def gru_seq_ab(H, B):
    """GRU(H, H, linear_before_reset) + Linear(32): model.run of B sequences through the
    persistent sequence kernel (the default, "auto") and the per-block kernel
    (STREAMRNN_CUDA_SEQ=block), both against the CPU engine, both timed (µs per step)."""
    T = 4 if ARGS.smoke else 100 if ARGS.quick else 250
    X = RNG.standard_normal((B, T, H)).astype(np.float32)
    Yc = _gru_model(H, "cpu").run(X)
    for name, env_ in (("streamrnn GRU model.run", {}),
                       ("streamrnn GRU model.run [per-block kernel, STREAMRNN_CUDA_SEQ=block]", dict(SEQ="block"))):
        m = _gru_model(H, "cuda", **env_)
        Y = m.run(X)
        d = float(np.abs(Y - Yc).max())
        ok = bool(np.all(np.abs(Y - Yc) <= 1e-4 + 1e-4 * np.abs(Yc)))  # T steps of float32: as seq_grid_case
        RESULT["parity"].append({"case": f"gru_head H={H}", "what": f"{name} B={B} T={T} vs cpu (seq_mode after "
                                 f"run: {m._cuda.seq_mode})", "dtype": "float32", "max_abs": d, "ok": ok})
        seq_row(H, B, T, name, m, X, ok, d)


def gru_step_ab(H, B):
    """GRU(H, H, linear_before_reset) + Linear(32): pool.step with the GRU as a tiled GEMM (the
    default) and as the row-tile kernel (STREAMRNN_CUDA_GEMM=0), outputs compared, both timed."""
    from streamrnn.engine import cuda_tiles as ce

    X = RNG.standard_normal((B, H)).astype(np.float32)
    out = np.empty((B, 32), np.float32)
    ys = {}
    for name, env_ in (("streamrnn GRU pool.step", {}),
                       ("streamrnn GRU pool.step [row-tile GRU kernels, STREAMRNN_CUDA_GEMM=0]", dict(GEMM="0"))):
        m = _gru_model(H, "cuda", **env_)
        p = m.pool(B)
        ids = p.open(B)[RNG.permutation(B)]
        ys[name] = p.step(ids, X).copy()
        same = None
        if len(ys) == 2:
            a, b = ys.values()
            same = bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))
        kern = p._cuda.core._ops(ce._bucket(B))[0][0]
        big = B * H >= 16384 * 128
        record(H, B, name, timeit(lambda: p.step(ids, X, out=out), 30 if big else 400, 1.0), mode=pool_mode(p),
               kernel=kern.py_func.__name__, **({} if same is None else {"same_as_default": same}))
        p = None  # (not del: a lambda above names it)


# ---------------------------------------------------------------------------------------------
# 2. step latency
# ---------------------------------------------------------------------------------------------
def timeit(fn, iters, budget_s, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    end = time.perf_counter() + budget_s
    for _ in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        ts.append(time.perf_counter_ns() - t0)
        if len(ts) >= 5 and time.perf_counter() > end:
            break
    a = np.array(ts) / 1e3
    return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
            "mean_us": float(a.mean()), "iters": len(ts)}


def record(H, B, method, stats, **extra):
    row = {"H": H, "B": B, "method": method, **stats, **extra}
    RESULT["step"].append(row)
    log(f"  H={H:4d} B={B:6d} {method:34s} p50 {stats['p50_us']:9.1f} us  p99 {stats['p99_us']:9.1f} us  (n={stats['iters']})")
    save()


def torch_modules(spec, H, I, O):
    import torch

    L, D = spec.layers
    Wi, Ri, Bi = L.W[0], L.R[0], L.B[0]
    order = np.r_[0:H, 2 * H:3 * H, 3 * H:4 * H, H:2 * H]  # ONNX i,o,f,c -> torch i,f,g,o
    lstm = torch.nn.LSTM(I, H).cuda().eval()
    lin = torch.nn.Linear(H, O).cuda().eval()
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(torch.from_numpy(Wi[order].astype(np.float32)))
        lstm.weight_hh_l0.copy_(torch.from_numpy(Ri[order].astype(np.float32)))
        lstm.bias_ih_l0.copy_(torch.from_numpy(Bi[:4 * H][order].astype(np.float32)))
        lstm.bias_hh_l0.copy_(torch.from_numpy(Bi[4 * H:][order].astype(np.float32)))
        lin.weight.copy_(torch.from_numpy(D.weight.astype(np.float32)))
        lin.bias.copy_(torch.from_numpy(D.bias.astype(np.float32)))
    return lstm, lin


def torch_step_fns(lstm, lin, B, I, H, O, X, tf32):
    """(eager, graph) host-to-host step functions: numpy X in, numpy out, state on the device."""
    import torch

    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    x_pin = torch.empty((1, B, I), dtype=torch.float32).pin_memory()
    o_pin = torch.empty((B, O), dtype=torch.float32).pin_memory()
    x_np, o_np = x_pin.numpy(), o_pin.numpy()
    out = np.empty((B, O), np.float32)
    x_dev = torch.zeros((1, B, I), device="cuda")
    h = torch.zeros((1, B, H), device="cuda")
    c = torch.zeros((1, B, H), device="cuda")
    stream = torch.cuda.current_stream()

    def body():
        y, (h2, c2) = lstm(x_dev, (h, c))
        h.copy_(h2)
        c.copy_(c2)
        return lin(y[0])

    def eager():
        with torch.inference_mode():
            x_np[0] = X
            x_dev.copy_(x_pin, non_blocking=True)
            o = body()
            o_pin.copy_(o, non_blocking=True)
            stream.synchronize()
            out[...] = o_np
        return out

    graph_fn = None
    try:
        with torch.inference_mode():
            side = torch.cuda.Stream()
            side.wait_stream(stream)
            with torch.cuda.stream(side):
                for _ in range(3):
                    body()
            stream.wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                o_static = body()
            h.zero_(), c.zero_()

        def graph_fn():
            x_np[0] = X
            x_dev.copy_(x_pin, non_blocking=True)
            g.replay()
            o_pin.copy_(o_static, non_blocking=True)
            stream.synchronize()
            out[...] = o_np
            return out
    except Exception as e:  # noqa: BLE001
        RESULT["errors"].append({"what": f"torch graph capture B={B} H={H}", "error": f"{type(e).__name__}: {e}"})
        log(f"  torch CUDA graph capture failed: {e}")
    return eager, graph_fn, (h, c)


def step_size(H, B, mg, mc, spec, tmods, iters, budget_s):
    I, O = H, mg.output_size
    X = RNG.standard_normal((B, I)).astype(np.float32)
    out = np.empty((B, O), np.float32)
    pg = mg.pool(B)
    ids = pg.open(B)
    perm = RNG.permutation(B)
    ids_r = ids[perm]
    # correctness at this size: first step from zero state vs the CPU engine and vs torch
    y = pg.step(ids_r, X).copy()
    okc = okt = None
    try:
        pc = mc.pool(B)
        ic = pc.open(B)
        yc = pc.step(ic[perm], X)
        okc = _cmp(f"lstm_head H={H}", f"pool.step B={B} vs cpu", y, yc, "float32")
    except Exception as e:  # noqa: BLE001
        RESULT["errors"].append({"what": f"cpu check B={B} H={H}", "error": str(e)})
    if tmods is not None:
        try:
            import torch

            eager, _, (h, c) = torch_step_fns(*tmods, B, I, H, O, X, tf32=False)
            yt = eager().copy()
            # from zero states, row r of both is the model applied to X[r]
            d = np.abs(y - yt)
            okt = bool(np.all(d <= 1e-4 + 1e-4 * np.abs(yt)))
            RESULT["parity"].append({"case": f"lstm_head H={H}", "what": f"pool.step B={B} vs torch (TF32 off)",
                                     "dtype": "float32", "max_abs": float(d.max()), "ok": okt})
            del eager, h, c
        except Exception as e:  # noqa: BLE001
            RESULT["errors"].append({"what": f"torch check B={B} H={H}", "error": str(e)})
    mode = pool_mode(pg)
    st = timeit(lambda: pg.step(ids_r, X, out=out), iters, budget_s)
    record(H, B, "streamrnn pool.step", st, mode=mode, cpu_ok=okc, torch_ok=okt)
    # where the time goes: per-phase host times (STREAMRNN_CUDA_PROFILE=1, same kernels)
    try:
        mp = build(spec, "float32", "cuda", PROFILE="1")
        pp = mp.pool(B)
        ip = pp.open(B)[perm]
        timeit(lambda: pp.step(ip, X, out=out), min(iters, 200), budget_s / 2)
        prof = pp._cuda.profile()
        ph = prof.get(B, {})
        row = {"H": H, "B": B, "mode": prof.get("mode"), "mapped_out": prof.get("mapped_out"),
               **{k: v["p50_us"] for k, v in ph.items() if isinstance(v, dict)},
               "pool.step_p50_us": st["p50_us"]}
        RESULT["profile"].append(row)
        log(f"  H={H:4d} B={B:6d} profile p50 us: " + " ".join(
            f"{k} {row[k]:.1f}" for k in ("pack", "launch", "sync", "copy_out", "total") if k in row)
            + f" (mode {row['mode']}, mapped_out {row['mapped_out']})")
        # device time of each copy / kernel alone (events around back-to-back launches)
        try:
            kt = pp._cuda.kernel_times(B, reps=10 if B * H >= 16384 * 128 else 50)
            row["kernels"] = kt
            log(f"  H={H:4d} B={B:6d} device us per op: " + ", ".join(
                f"{k['op']} {k['us']:.1f}" + (f" ({k.get('regs')} regs, {k.get('smem')} B smem)" if "regs" in k else "")
                for k in kt))
        except Exception as e:  # noqa: BLE001
            RESULT["errors"].append({"what": f"kernel_times B={B} H={H}", "error": f"{type(e).__name__}: {e}"})
        mp = pp = None  # (not del: a lambda above names it)
    except Exception as e:  # noqa: BLE001
        RESULT["errors"].append({"what": f"profile B={B} H={H}", "error": f"{type(e).__name__}: {e}"})
    # A/B of this round's changes on the same machine
    variants = []
    if B >= 64:  # NOTES 72 (GEMM=0 and STAGE=loop were decided in runs of stops 12 and 14: left out)
        variants.append(("dense head as the row-tile kernel of before, STREAMRNN_CUDA_DENSE=tile", dict(DENSE="tile")))
    if B == 1 or B >= 16384:
        variants.append(("no mapped out, STREAMRNN_CUDA_MAPPED_OUT=0", dict(MAPPED_OUT="0")))
    from streamrnn.engine import cuda_tiles as ce

    if B == 1:  # the one-stream tile of before: the input staged 64 values at a time
        variants.append(("one-stream tiles with 64-value chunks (before)", dict(TILES=(0, "KT", 64))))
    if 1024 <= B < 16384:  # NOTES 68: the many-streams tile (24.9 TFLOP/s at B=16384) at B=1024
        variants.append(("the many-streams GEMM tile 128 x 32 (256 threads) at B=1024", dict(GEMM_BIG=True)))
    if B >= 64:  # NOTES 83: vector shared loads in the LSTM GEMM's k loop
        variants.append(("LSTM GEMM tiles in the vector layout, STREAMRNN_CUDA_GEMM_VEC=1", dict(GEMM_VEC="1")))
    if B >= 1024:  # NOTES 73: the host stages chunk p + 1 while the device runs chunk p
        for P in (2, 4):
            variants.append((f"in {P} chunks, STREAMRNN_CUDA_CHUNKS={P}", dict(CHUNKS=str(P))))
    for name, env_ in variants:
        env_ = dict(env_)
        tiles = env_.pop("TILES", None)
        big = env_.pop("GEMM_BIG", False)
        old_tiles, old_gemm = ce.STEP_TILES, ce.GEMM_TILES
        try:
            if tiles is not None:  # (bucket, field, value), for this variant's whole life
                bucket, field, value = tiles
                tt = list(ce._tiles())
                tt[bucket] = (tt[bucket][0], tt[bucket][1]._replace(**{field: value}))
                ce.STEP_TILES = tt
            if big:  # this size's bucket takes the last bucket's GEMM tile
                gts = list(ce._gemm_tiles())
                gts[ce._bucket(B)] = gts[-1]
                ce.GEMM_TILES = gts
            mv = build(spec, "float32", "cuda", **env_)
            pv = mv.pool(B)
            iv = pv.open(B)[perm]
            yv = pv.step(iv, X).copy()
            okv = bool(np.allclose(yv, y, rtol=1e-4, atol=1e-5))
            extra = {}
            if "CHUNKS" in env_:  # a NaN in the last chunk: refused, and no state changed
                Xn = X.copy()
                Xn[-1, 0] = np.nan
                sids = [int(iv[0]), int(iv[B // 2]), int(iv[-1])]
                st0 = [pv.get_state(i).data.copy() for i in sids]
                try:
                    pv.step(iv, Xn)
                    extra["refused_nan"] = False
                except srnn.NonFiniteError:
                    extra["refused_nan"] = True
                extra["state_kept"] = all(np.array_equal(pv.get_state(i).data, a) for i, a in zip(sids, st0))
                okv = okv and extra["refused_nan"] and extra["state_kept"]
            if "GEMM_VEC" in env_:  # the tile each bucket got, and the device time of each op alone
                try:
                    k0 = pv._cuda.core._ops(ce._bucket(B))[0][0]
                    extra["lstm_kernel"] = {"name": k0.py_func.__name__, "vec": bool(getattr(k0, "vec", False))}
                    extra["kernels"] = pv._cuda.kernel_times(B, reps=10 if B * H >= 16384 * 128 else 50)
                    log(f"  H={H:4d} B={B:6d} vector layout, device us per op: " + ", ".join(
                        f"{k['op']} {k['us']:.1f} ({k.get('regs')} regs, {k.get('local')} B local)"
                        for k in extra["kernels"]))
                except Exception as e:  # noqa: BLE001
                    extra["kernels_error"] = f"{type(e).__name__}: {e}"
            record(H, B, f"streamrnn pool.step [{name}]",
                   timeit(lambda: pv.step(iv, X, out=out), iters, budget_s / 2), mode=pool_mode(pv),
                   same_as_default=okv, **extra)
            mv = pv = None  # (not del: a lambda above names it)
        except Exception as e:  # noqa: BLE001
            RESULT["errors"].append({"what": f"variant {name} B={B} H={H}", "error": f"{type(e).__name__}: {e}"})
        finally:
            ce.STEP_TILES, ce.GEMM_TILES = old_tiles, old_gemm
    if B == 1:
        s = mg.stream()
        o1 = np.empty(O, np.float32)
        record(H, B, "streamrnn stream.step", timeit(lambda: s.step(X[0], out=o1), iters, budget_s), mode=pool_mode(s))
        for m in ("driver", "numba"):
            mm = build(spec, "float32", "cuda", m)
            pm = mm.pool(1)
            i1 = pm.open(1)
            record(H, B, f"streamrnn pool.step [{m} launches]",
                   timeit(lambda: pm.step(i1, X, out=out), max(20, iters // 4), budget_s / 2), mode=pool_mode(pm))
    pg = None  # (not del: a lambda above names it)
    if tmods is None:
        return
    import torch

    for tf32 in (False, True):
        if tf32 and ARGS.quick:
            continue
        eager, graph, _ = torch_step_fns(*tmods, B, I, H, O, X, tf32=tf32)
        tag = "TF32 on" if tf32 else "TF32 off"
        record(H, B, f"torch nn.LSTM eager ({tag})", timeit(eager, iters, budget_s))
        if graph is not None:
            record(H, B, f"torch nn.LSTM CUDA graph ({tag})", timeit(graph, iters, budget_s))
        del eager, graph
        torch.cuda.synchronize()
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def step_section() -> None:
    log("== step: pool.step host-to-host latency vs torch cuDNN ==")
    sizes = [int(s) for s in ARGS.sizes.split(",") if s]
    batches = [int(b) for b in ARGS.batches.split(",") if b]
    have_torch = _have_torch()
    for H in sizes:
        I, O = H, 32
        spec = lstm_head(I, H, O)
        mg = guarded(f"build cuda H={H}", build, spec, "float32", "cuda")
        mc = guarded(f"build cpu H={H}", build, spec, "float32", "cpu")
        if mg is None:
            continue
        tmods = guarded(f"torch modules H={H}", torch_modules, spec, H, I, O) if have_torch else None
        for B in batches:
            big = B * H >= 16384 * 128
            iters = (10 if ARGS.quick else 30) if big else (100 if ARGS.quick else 400)
            budget_s = 0.4 if ARGS.quick else 1.0
            guarded(f"step H={H} B={B}", step_size, H, B, mg, mc, spec, tmods, iters, budget_s, need=15 if big else 8)
    save()


def _have_torch() -> bool:
    """PyTorch with a CUDA device (the baselines), or not."""
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def persist_size(H, spec, tmods, iters, budget_s):
    """One stream at hidden size H: the persistent step kernel (STREAMRNN_CUDA_PERSIST=1) vs the
    graph path vs torch + CUDA graph; parity with the CPU engine over several steps; calls back
    to back and 1 ms apart; the relaunch after the idle timeout."""
    I, O = H, 32
    mg = build(spec, "float32", "cuda")
    mc = build(spec, "float32", "cpu")
    mp = build(spec, "float32", "cuda", PERSIST="1")
    X = RNG.standard_normal((8, I)).astype(np.float32)
    out = np.empty((1, O), np.float32)
    pp, pc = mp.pool(2), mc.pool(2)
    ip, ic = pp.open(2), pc.open(2)
    srv = pp._cuda.core.server
    if srv is None:
        RESULT["errors"].append({"what": f"persist H={H}", "error": "no persistent kernel (self-test failed?)"})
        log(f"  H={H} persistent kernel NOT in use (see the warnings above)")
        return
    log(f"  H={H} persistent kernel: grid {srv.G} x {srv.NT}, idle exit {srv.idle_ns / 1e6:.0f} ms")
    ok = True
    for t in range(8):  # one-row steps on both streams, then a two-row step (the graph path)
        sid = [t & 1]
        y, yc = pp.step(ip[sid], X[t:t + 1]), pc.step(ic[sid], X[t:t + 1])
        ok &= _cmp(f"persist H={H}", f"pool.step (1 row) t={t} vs cpu", y, yc, "float32")
    y, yc = pp.step(ip, X[:2]), pc.step(ic, X[:2])
    ok &= _cmp(f"persist H={H}", "pool.step (2 rows, after stop) vs cpu", y, yc, "float32")
    y, yc = pp.step(ip[[1]], X[2:3]), pc.step(ic[[1]], X[2:3])
    ok &= _cmp(f"persist H={H}", "pool.step (1 row, relaunched) vs cpu", y, yc, "float32")
    for sid in range(2):
        ok &= _cmp(f"persist H={H}", f"state {sid} vs cpu", pp.get_state(sid).data, pc.get_state(sid).data, "float32")
    n0 = srv.launches
    time.sleep(0.2)  # past the idle timeout: the kernel exits, the next step relaunches it
    y, yc = pp.step(ip[[0]], X[3:4]), pc.step(ic[[0]], X[3:4])
    ok &= _cmp(f"persist H={H}", "pool.step after the idle exit vs cpu", y, yc, "float32")
    log(f"  H={H} parity {'ok' if ok else 'FAILED'}; launches {n0} -> {srv.launches} across the idle exit")
    Xr = X[4:5]
    i1 = ip[[0]]
    st = timeit(lambda: pp.step(i1, Xr, out=out), iters, budget_s)
    record(H, 1, "streamrnn pool.step [persistent kernel, STREAMRNN_CUDA_PERSIST=1]", st, launches=srv.launches)
    row, pp._cuda._row = pp._cuda._row, None  # A/B: the host side in Python, as before entry 79
    record(H, 1, "streamrnn pool.step [persistent, host side in Python (before NOTES 79)]",
           timeit(lambda: pp.step(i1, Xr, out=out), iters, budget_s))
    pp._cuda._row = row
    sp = mp.stream()
    sc = mc.stream()
    for t in range(4):  # the fused host step (entry 79) on hardware: outputs and state
        ok &= _cmp(f"persist H={H}", f"stream.step t={t} vs cpu", sp.step(X[t]), sc.step(X[t]), "float32")
    ok &= _cmp(f"persist H={H}", "stream state vs cpu", sp.state.data, sc.state.data, "float32")
    o1 = np.empty(O, np.float32)
    record(H, 1, "streamrnn stream.step [persistent kernel]", timeit(lambda: sp.step(Xr[0], out=o1), iters, budget_s))
    row, sp._cuda._row = sp._cuda._row, None  # A/B: the host side in Python, as before entry 79
    record(H, 1, "streamrnn stream.step [persistent, host side in Python (before NOTES 79)]",
           timeit(lambda: sp.step(Xr[0], out=o1), iters, budget_s))
    sp._cuda._row = row
    sp = None  # (not del: a lambda above names it)
    pp._cuda.core.quiesce()
    pg = mg.pool(1)
    ig = pg.open(1)
    record(H, 1, "streamrnn pool.step [graph, default]", timeit(lambda: pg.step(ig, Xr, out=out), iters, budget_s),
           mode=pool_mode(pg))

    def paced(fn):
        ts = []
        for _ in range(min(150, iters)):
            time.sleep(0.001)
            t0 = time.perf_counter_ns()
            fn()
            ts.append(time.perf_counter_ns() - t0)
        a = np.array(ts[3:]) / 1e3
        return {"p50_us": float(np.percentile(a, 50)), "p99_us": float(np.percentile(a, 99)),
                "mean_us": float(a.mean()), "iters": len(a)}

    record(H, 1, "streamrnn pool.step [graph, calls 1 ms apart]", paced(lambda: pg.step(ig, Xr, out=out)))
    record(H, 1, "streamrnn pool.step [persistent, calls 1 ms apart]", paced(lambda: pp.step(i1, Xr, out=out)))
    # where the time goes: the kernel's own step (no staging, no output copy, no Pool.step
    # Python), and the same protocol with no layer at all (poll, row copy, broadcast, done count,
    # acknowledgement): the layers cost the difference (NOTES 68)
    from streamrnn.engine.persist import Server

    core = pp._cuda.core
    pp.step(i1, Xr, out=out)  # stages row 0 (stream i1) for the bare steps below
    record(H, 1, "persistent kernel alone (Server.step: command, layers, acknowledgement)",
           timeit(lambda: core.server.step(1), iters, budget_s))
    core.quiesce()
    ops1 = core.eng.one_row_ops()
    bare = Server(core, ops1, 50.0, layers=0)
    record(H, 1, "persistent kernel with no layers (the protocol alone)", timeit(lambda: bare.step(1), iters, budget_s),
           grid=bare.G)
    bare.stop()
    # the same step with %globaltimer stamps: device time from "block 0 saw the command" to the
    # end of each phase (the host's share is the rest of "kernel alone")
    stp = Server(core, ops1, 50.0, stamps=True)
    st_ = timeit(lambda: stp.step(1), iters, budget_s)
    ph = stp.phases()
    RESULT["phases"].append({"H": H, "B": 1, "kernel_alone_p50_us": st_["p50_us"], **ph})
    log(f"  H={H} device phases, mean us since the command was seen: "
        + ", ".join(f"{k} {v:.2f}" for k, v in ph.items() if k != "steps")
        + f" (steps {ph.get('steps')}; the stamped step host to host p50 {st_['p50_us']:.1f})")
    core.quiesce()
    # the LSTM layer's weights kept in shared memory for the kernel's life (NOTES 69)
    mo = build(spec, "float32", "cuda", PERSIST="onchip")
    so, sc = mo.stream(), mc.stream()
    srv_o = so._cuda.core.server
    if srv_o is None or not srv_o.onchip:
        RESULT["errors"].append({"what": f"persist onchip H={H}", "error": "no on-chip persistent kernel"})
        log(f"  H={H} on-chip persistent kernel NOT in use (see the warnings above)")
    else:
        ok = True
        for t in range(6):
            ok &= _cmp(f"persist onchip H={H}", f"stream.step t={t} vs cpu", so.step(X[t]), sc.step(X[t]), "float32")
        log(f"  H={H} on-chip: grid {srv_o.G} x {srv_o.NT}, {srv_o.smem // 1024} KiB shared per block; "
            f"parity {'ok' if ok else 'FAILED'}")
        record(H, 1, "streamrnn stream.step [persistent kernel, LSTM weights on chip, STREAMRNN_CUDA_PERSIST=onchip]",
               timeit(lambda: so.step(Xr[0], out=o1), iters, budget_s))
        record(H, 1, "streamrnn stream.step [on chip, calls 1 ms apart]", paced(lambda: so.step(Xr[0], out=o1)))
        record(H, 1, "persistent kernel alone, LSTM weights on chip (Server.step)",
               timeit(lambda: srv_o.step(1), iters, budget_s))
    so = mo = None  # (not del: a lambda above names it)
    if tmods is not None:
        import torch

        eager, graph, _ = torch_step_fns(*tmods, 1, I, H, O, Xr, tf32=False)
        if graph is not None:
            record(H, 1, "torch nn.LSTM CUDA graph (TF32 off)", timeit(graph, iters, budget_s))
            record(H, 1, "torch nn.LSTM CUDA graph (TF32 off), calls 1 ms apart", paced(graph))
        del eager, graph
        torch.cuda.synchronize()
    pp = pg = None  # (not del: a lambda above names it)


def persist_section() -> None:
    log("== persist: one stream through the persistent step kernel ==")
    have_torch = _have_torch()
    for H in [int(s) for s in ARGS.sizes.split(",") if s]:
        spec = lstm_head(H, H, 32)
        tmods = guarded(f"torch modules H={H}", torch_modules, spec, H, H, 32) if have_torch else None
        guarded(f"persist H={H}", persist_size, H, spec, tmods, 100 if ARGS.quick else 400,
                0.5 if ARGS.quick else 1.5, need=10)
    save()


# ---------------------------------------------------------------------------------------------
# 3. sequences
# ---------------------------------------------------------------------------------------------
SEQ_GEMM = "streamrnn model.run [GEMM per step, STREAMRNN_CUDA_SEQ=gemm]"


def _runs_agree(got, want):
    """(ok, max abs difference) of two float32 model.run outputs of one path against another:
    relative and absolute 1e-4 (rounding compounds over T steps in each path's own order)."""
    diff = np.abs(got - want)
    return bool(np.all(diff <= 1e-4 + 1e-4 * np.abs(want))), float(diff.max())


def seq_case(H, B, T, mg, tmods, mgg=None):
    """model.run of B sequences of T steps: the default, then (mgg, where B > 1) the GEMM per
    step (NOTES 102) with its parity against the default, then torch."""
    I = H
    X = RNG.standard_normal((B, T, I)).astype(np.float32)
    Y = mg.run(X)
    iters = 3 if ARGS.quick else 8
    st = timeit(lambda: mg.run(X), iters, 2.0, warmup=1)
    row = {"H": H, "B": B, "T": T, "method": "streamrnn model.run", **st,
           "us_per_step": st["p50_us"] / T, "frames_per_s": B * T / (st["p50_us"] / 1e6)}
    RESULT["seq"].append(row)
    log(f"  H={H:4d} B={B:4d} T={T:4d} streamrnn model.run      {row['us_per_step']:8.2f} us/step  {row['frames_per_s']:12.0f} frames/s")
    if mgg is not None and B > 1:
        Yg = mgg.run(X)
        ok, d = _runs_agree(Yg, Y)
        RESULT["parity"].append({"case": f"lstm_head H={H}", "what": f"run B={B} T={T} {SEQ_GEMM} vs default",
                                 "dtype": "float32", "max_abs": d, "ok": ok})
        seq_row(H, B, T, SEQ_GEMM, mgg, X, ok, d)
    if tmods is None:
        return
    import torch

    lstm, lin = tmods
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    x_pin = torch.from_numpy(X.transpose(1, 0, 2).copy()).pin_memory()

    def trun():
        with torch.inference_mode():
            y, _ = lstm(x_pin.to("cuda", non_blocking=True))
            return lin(y).cpu().numpy()

    yt = trun()
    d = float(np.abs(yt.transpose(1, 0, 2) - Y).max())
    RESULT["parity"].append({"case": f"lstm_head H={H}", "what": f"run B={B} T={T} vs torch (TF32 off)",
                             "dtype": "float32", "max_abs": d, "ok": d < 1e-3})
    st = timeit(trun, iters, 2.0, warmup=1)
    row = {"H": H, "B": B, "T": T, "method": "torch nn.LSTM (TF32 off)", **st,
           "us_per_step": st["p50_us"] / T, "frames_per_s": B * T / (st["p50_us"] / 1e6)}
    RESULT["seq"].append(row)
    log(f"  H={H:4d} B={B:4d} T={T:4d} torch nn.LSTM (TF32 off) {row['us_per_step']:8.2f} us/step  {row['frames_per_s']:12.0f} frames/s")
    save()


SEQ_VARIANTS = (
    ("streamrnn model.run [per-block kernel, STREAMRNN_CUDA_SEQ=block]", dict(SEQ="block")),
    ("streamrnn model.run [persistent grid, STREAMRNN_CUDA_SEQ=grid]", dict(SEQ="grid")),
    ("streamrnn model.run [persistent grid, counter barrier, STREAMRNN_CUDA_GRIDSYNC=atomic]",
     dict(SEQ="grid", GRIDSYNC="atomic")),
    # where a step's ~10 us go (NOTES 53, 70): %globaltimer sums per phase, read after the run
    ("streamrnn model.run [persistent grid, phase stamps, GRID_STAMPS]",
     dict(SEQ="grid", ATTR={"GRID_STAMPS": True})),
    # NOTES 84: groups of up to 32 sequences at H=512 (4 in static shared memory)
    ("streamrnn model.run [persistent grid, dynamic shared memory, STREAMRNN_CUDA_GRID_DYN=1]",
     dict(SEQ="grid", GRID_DYN="1")),
    ("streamrnn model.run [persistent grid, dynamic shared memory, phase stamps]",
     dict(SEQ="grid", GRID_DYN="1", ATTR={"GRID_STAMPS": True})),
)


def seq_row(H, B, T, name, m, X, ok, d):
    """Time ``m.run(X)`` (µs per step), record it as a seq row with its parity, log it."""
    st = timeit(lambda: m.run(X), 3 if ARGS.quick else 8, 2.0, warmup=1)
    row = {"H": H, "B": B, "T": T, "method": name, **st, "us_per_step": st["p50_us"] / T,
           "frames_per_s": B * T / (st["p50_us"] / 1e6), "seq_mode": m._cuda.seq_mode, "parity_ok": ok}
    RESULT["seq"].append(row)
    log(f"  H={H:4d} B={B:4d} T={T:4d} {name} {row['us_per_step']:8.2f} us/step (seq_mode {row['seq_mode']}, "
        f"parity {'ok' if ok else 'FAILED'}, max abs {d:.2g})")
    return row


def seq_grid_case(H, B, T, models):
    """The persistent LSTM kernel (STREAMRNN_CUDA_SEQ=grid, with either barrier) against the
    per-block one (STREAMRNN_CUDA_SEQ=block), same process: parity with the per-block kernel
    (and whether the model ran it or fell back), then each timed at this B (the default,
    "auto", picks block or grid by B and H). models: [(name, model)] of SEQ_VARIANTS."""
    X = RNG.standard_normal((B, T, H)).astype(np.float32)
    Yb = models[0][1].run(X)
    oks = {}
    for name, m in models[1:]:
        Yg = m.run(X)
        ok, d = _runs_agree(Yg, Yb)
        oks[name] = (ok, d)
        RESULT["parity"].append({"case": f"lstm_head H={H}", "what": f"run B={B} T={T} {name} vs per-block "
                                 f"(seq_mode after run: {m._cuda.seq_mode})", "dtype": "float32", "max_abs": d,
                                 "ok": ok})
    for name, m in models:
        ok, d = oks.get(name, (True, 0.0))
        row = seq_row(H, B, T, name, m, X, ok, d)
        if getattr(m._cuda, "GRID_STAMPS", False):
            ph = m._cuda.grid_phases()
            RESULT["seq_phases"].append({"H": H, "B": B, "T": T, "method": name, "us_per_step": row["us_per_step"],
                                         **ph})
            log(f"  H={H:4d} B={B:4d} device us per step, by phase (block 0): "
                + ", ".join(f"{k} {v:.2f}" for k, v in ph.items() if k != "steps") + f" ({ph.get('steps')} steps)")
    save()


def seq_section() -> None:
    log("== seq: model.run throughput ==")
    have_torch = _have_torch()
    T = 4 if ARGS.smoke else 100 if ARGS.quick else 250
    for H in [int(s) for s in ARGS.sizes.split(",") if s]:
        spec = lstm_head(H, H, 32)
        mg = guarded(f"build cuda H={H} (seq)", build, spec, "float32", "cuda")
        if mg is None:
            continue
        tmods = guarded(f"torch modules H={H}", torch_modules, spec, H, H, 32) if have_torch else None
        # B=256 and 1024 (T/5 steps: 100 MiB of frames at H=512, B=1024): the per-block
        # kernel's many-sequence baseline against cuDNN, never measured before (NOTES 101)
        mgg = guarded(f"build cuda H={H} (seq, GEMM per step)", build, spec, "float32", "cuda", SEQ="gemm")
        for B, TB in (((1, T), (3, T)) if ARGS.smoke else ((1, T), (64, T), (256, T // 5), (1024, T // 5))):
            guarded(f"seq H={H} B={B}", seq_case, H, B, TB, mg, tmods, mgg, need=8)
        models = [(name, guarded(f"build cuda H={H} ({name})", build, spec, "float32", "cuda", **env_))
                  for name, env_ in SEQ_VARIANTS]
        models = [(name, m) for name, m in models if m is not None]
        if models and models[0][0] == SEQ_VARIANTS[0][0]:
            for B in ((1, 3) if ARGS.smoke else (1, 4, 16, 64)):
                guarded(f"seq grid H={H} B={B}", seq_grid_case, H, B, T, models, need=8)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def report() -> None:
    print("\n## Parity (device='cuda' vs CPU engine / torch)\n", flush=True)
    bad = [r for r in RESULT["parity"] if not r["ok"]]
    print(f"{len(RESULT['parity']) - len(bad)}/{len(RESULT['parity'])} checks ok")
    if bad:
        print("\n| case | check | dtype | max abs | max rel |\n|---|---|---|---|---|")
        for r in bad:
            print(f"| {r['case']} | {r['what']} | {r['dtype']} | {r.get('max_abs', 0):.3g} | {r.get('max_rel', 0):.3g} |")
    if RESULT["step"]:
        print("\n## pool.step, host to host, us per call (p50 / p99)\n")
        hs = sorted({r["H"] for r in RESULT["step"]})
        bs = sorted({r["B"] for r in RESULT["step"]})
        methods = list(dict.fromkeys(r["method"] for r in RESULT["step"]))
        cols = [(h, b) for h in hs for b in bs]
        print("| method | " + " | ".join(f"H={h} B={b}" for h, b in cols) + " |")
        print("|---|" + "---|" * len(cols))
        for m in methods:
            cells = []
            for h, b in cols:
                r = next((r for r in RESULT["step"] if r["method"] == m and r["H"] == h and r["B"] == b), None)
                cells.append((f"{r['p50_us']:.0f} / {r['p99_us']:.0f}" + (" ✗" if r.get("same_as_default") is False else ""))
                             if r else "")
            print(f"| {m} | " + " | ".join(cells) + " |")
        modes = {(r["H"], r["B"]): r.get("mode") for r in RESULT["step"] if r["method"] == "streamrnn pool.step"}
        print(f"\nlaunch path of pool.step: {modes}")
        print("✗: a variant's outputs differ from the default's (chunks: or a NaN in the last chunk was not "
              "refused, or it changed a state)")
    if RESULT["profile"]:
        print("\n## pool.step phases, host times p50 us (STREAMRNN_CUDA_PROFILE=1)\n")
        print("pack = validation + staging (njit), launch = graph launch call (host), sync = wait for the "
              "device, copy_out = pinned -> out; rest = Pool.step Python around them\n")
        print("| H | B | mode | mapped out | pack | launch | sync | copy_out | total | pool.step p50 | rest |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in RESULT["profile"]:
            if "total" not in r:
                continue
            print(f"| {r['H']} | {r['B']} | {r['mode']} | {r['mapped_out']} | {r['pack']:.1f} | {r['launch']:.1f} | "
                  f"{r['sync']:.1f} | {r['copy_out']:.1f} | {r['total']:.1f} | {r['pool.step_p50_us']:.1f} | "
                  f"{r['pool.step_p50_us'] - r['total']:.1f} |")
        kr = [r for r in RESULT["profile"] if r.get("kernels")]
        if kr:
            print("\n## Device time per operation of one step, alone (CUDA events, us per launch)\n")
            print("| H | B | op | us | grid | block | regs | smem B | local B |\n|---|---|---|---|---|---|---|---|---|")
            for r in kr:
                for k in r["kernels"]:
                    print(f"| {r['H']} | {r['B']} | {k['op']} | {k['us']:.1f} | {k.get('grid', '')} | {k.get('block', '')} | "
                          f"{k.get('regs', '')} | {k.get('smem', '')} | {k.get('local', '')} |")
    if RESULT["phases"]:
        print("\n## Persistent kernel: device phases of a one-row step (%globaltimer, mean us since block 0 "
              "saw the command)\n")
        for r in RESULT["phases"]:
            print(f"- H={r['H']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()
                                                if k not in ("H", "B", "steps", "kernel_alone_p50_us"))
                  + f"; host to host p50 {r['kernel_alone_p50_us']:.1f} ({r.get('steps')} steps)")
    if RESULT["seq"]:
        print("\n## model.run, host to host\n")
        print("| method | H | B | T | us / step | frames / s |\n|---|---|---|---|---|---|")
        for r in RESULT["seq"]:
            print(f"| {r['method']} | {r['H']} | {r['B']} | {r['T']} | {r['us_per_step']:.2f} | {r['frames_per_s']:.0f} |")
    if RESULT["seq_phases"]:
        print("\n## Persistent sequence kernel: device us per step by phase (%globaltimer, block 0)\n")
        for r in RESULT["seq_phases"]:
            dyn = " (dynamic shared memory)" if "dynamic" in r.get("method", "") else ""
            print(f"- H={r['H']} B={r['B']}{dyn}: " + ", ".join(f"{k} {r[k]:.2f}" for k in ("load h", "products", "cell",
                                                                                      "barrier") if k in r)
                  + f"; host-timed {r['us_per_step']:.2f} us per step")
    if RESULT["errors"]:
        print("\n## Errors\n")
        for e in RESULT["errors"]:
            print(f"- {e['what']}: {e['error']}")
    if RESULT["skipped"]:
        print(f"\nskipped (time budget): {RESULT['skipped']}")
    print(f"\nelapsed {time.perf_counter() - T_START:.0f} s; JSON: {os.path.abspath(ARGS.out)}", flush=True)


def watchdog(limit_s: float) -> None:
    """A step that never returns (a hung kernel, a deadlocked grid sync) must not eat the whole
    device session: after ``limit_s`` the process saves what it has, names the step and its
    thread stacks, prints the tables and exits with status 3."""
    import faulthandler
    import threading

    def fire():
        time.sleep(limit_s)
        RESULT["errors"].append({"what": "watchdog", "error": f"stopped after {limit_s:.0f} s in step {CURRENT[0]!r}"})
        log(f"WATCHDOG: stopped after {limit_s:.0f} s in step {CURRENT[0]!r}; thread stacks:")
        faulthandler.dump_traceback(all_threads=True)
        try:
            save()
            report()
        finally:
            os._exit(3)

    threading.Thread(target=fire, daemon=True).start()


def hostcall_size(H, B, spec, mc):
    """STREAMRNN_CUDA_HOSTCALL=njit (NOTES 80): a pool's graph step as one njit call that calls
    the driver itself, vs the default (cuda-bindings' calls from Python), side by side: parity
    with the CPU engine over steps that use the fused path, a refused call, then latency."""
    I = H
    X = RNG.standard_normal((6, B, I)).astype(np.float32)
    pools = {}
    for name, env_ in (("default", {}), ("njit", {"HOSTCALL": "njit"})):
        m = build(spec, "float32", "cuda", **env_)
        p = m.pool(B)
        pools[name] = (m, p, p.open(B))
    pc = mc.pool(B)
    ic = pc.open(B)
    core = pools["njit"][1]._cuda.core
    log(f"  H={H} B={B} njit graph step {'in use' if core.fused is not None else 'NOT in use (see warnings)'}")
    ok = core.fused is not None
    for t in range(4):  # the second call captures the graph, the later ones take the fused call
        yc = pc.step(ic, X[t])
        for name, (_, p, ids) in pools.items():
            ok &= _cmp(f"hostcall H={H} B={B}", f"{name} pool.step t={t} vs cpu", p.step(ids, X[t]), yc, "float32")
    _, pn, idn = pools["njit"]
    bad = X[4].copy()
    bad[-1, 0] = np.nan
    st0 = pn.get_state(int(idn[-1])).data.copy()
    try:
        pn.step(idn, bad)
        ok = False
    except srnn.NonFiniteError:
        ok &= bool(np.array_equal(pn.get_state(int(idn[-1])).data, st0))
    out = np.empty((B, 32), np.float32)
    iters = 400 if B <= 1024 else 30
    for name, (_, p, ids) in pools.items():
        label = "graph, default" if name == "default" else "one njit call with the driver calls, STREAMRNN_CUDA_HOSTCALL=njit"
        record(H, B, f"streamrnn pool.step [{label}]", timeit(lambda: p.step(ids, X[5], out=out), iters, 1.0),
               mode=pool_mode(p), parity_ok=bool(ok) if name == "njit" else None)
    pools.clear()


def hostcall_section() -> None:
    log("== hostcall: STREAMRNN_CUDA_HOSTCALL=njit vs the default (run last: a broken driver call would crash) ==")
    for H in [int(s) for s in ARGS.sizes.split(",") if s]:
        spec = lstm_head(H, H, 32)
        mc = build(spec, "float32", "cpu")
        for B in ((1, 3) if ARGS.smoke else (1, 64, 1024)):
            guarded(f"hostcall H={H} B={B}", hostcall_size, H, B, spec, mc, need=6)
    save()


def main() -> int:
    watchdog(ARGS.budget + ARGS.grace)
    sections = {"parity": parity, "step": step_section, "seq": seq_section, "more": parity_more,
                "persist": persist_section, "hostcall": hostcall_section}
    names = [x.strip() for x in ARGS.sections.split(",") if x.strip()]
    bad = [x for x in names if x not in sections]
    if bad:
        print(f"gpu_check: --sections: expected names among {sorted(sections)}, got {bad}", file=sys.stderr)
        return 2
    guarded("env", env, need=0)
    save()
    for name in names:
        if name == "more" and ARGS.smoke:
            continue
        sections[name]()
        save()  # after each section: a crash in a later one keeps these
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
