"""The CUDA engine (device="cuda") against the CPU engine, on numba's CUDA simulator.

Every check runs in a subprocess with NUMBA_ENABLE_CUDASIM=1 set before numba is imported, so the
rest of the test session keeps the real numba.cuda. The simulator is slow (one Python thread per
CUDA thread): sizes are tiny (H <= 8, B <= 5, T <= 4), and the engine picks tiny tiles under the
simulator, so every launch still spans several blocks (unit tiles of 4, row tiles of 4).
On a real GPU, run ``python bench/gpu_check.py`` instead.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba.cuda")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PRELUDE = textwrap.dedent(
    """
    import logging, os, sys
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    sys.path.insert(0, %r)
    logging.basicConfig(level=logging.WARNING)  # the engine's warnings (fallbacks) in a failure's stderr

    # every access to shared memory and to the kernels' arrays is recorded: two threads of a
    # block that touch the same word between two barriers, one of them writing, fail the case
    # at once (tests/simrace.py), whether or not the interleaving that Python chose this time
    # gave a wrong result (SIMRACE_STRICT=0: each case runs on and lists all it found at the end)
    sys.path.insert(0, os.path.join(%r, "tests"))
    import simrace
    simrace.install(strict=os.environ.get("SIMRACE_STRICT", "1") != "0", global_memory=True)
    # the simulated threads switch as often as Python allows: a data race between threads of
    # a kernel shows up here rather than once in a while (and the cases run faster: a thread
    # waiting at a barrier no longer holds the interpreter for 5 ms)
    sys.setswitchinterval(1e-6)
    import numpy as np
    import streamrnn as srnn
    from streamrnn.spec import (Activation, ActivationLayer, DenseLayer, GRULayer, LSTMLayer,
                                ModelSpec, RNNLayer, SoftmaxLayer)

    rng = np.random.default_rng(1234)

    def R(*shape):
        return rng.standard_normal(shape) * 0.4

    def tol(dtype):
        return dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-10, atol=1e-12)

    def close(a, b, dtype, what):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=what, **tol(dtype))

    def both(spec, dtype):
        mc = srnn.Model(spec, dtype=dtype, device="cpu")
        mg = cuda_model(spec, dtype)
        assert mg.device == "cuda" and mg._cuda is not None
        return mc, mg

    def cuda_model(spec, dtype="float32", **env):
        # a device="cuda" model built with STREAMRNN_CUDA_<key>=<value> set for its construction
        # only (the engine reads its settings there); the environment is restored, even on error
        old = {k: os.environ.get("STREAMRNN_CUDA_" + k) for k in env}
        os.environ.update({"STREAMRNN_CUDA_" + k: v for k, v in env.items()})
        try:
            return srnn.Model(spec, dtype=dtype, device="cuda")
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop("STREAMRNN_CUDA_" + k)
                else:
                    os.environ["STREAMRNN_CUDA_" + k] = v

    def refused(err, fn, *words):
        # fn() raises err, and its message holds every one of words
        try:
            fn()
        except err as e:
            assert all(w in str(e) for w in words), (words, e)
        else:
            raise AssertionError(f"expected {err.__name__} with {words}, got no error")

    def check_run(mc, mg, dtype, B=3, T=4, what=""):
        # ragged lengths (one of 0 from B = 3 on) and initial states, then a 2-D input
        I = mc.input_size
        X = rng.standard_normal((B, T, I)).astype(dtype)
        L = np.minimum(np.array([T, 2, 0, 3, 1][:B]), T)
        st0 = rng.standard_normal((B, mc.state_size)) * 0.5
        Yc, sc = mc.run(X, state=st0, lengths=L, return_state=True)
        Yg, sg = mg.run(X, state=st0, lengths=L, return_state=True)
        close(Yg, Yc, dtype, f"{what} run Y B={B}")
        close(sg.data, sc.data, dtype, f"{what} run state B={B}")
        assert Yg.dtype == np.dtype(dtype) and Yg.shape == Yc.shape
        assert (Yg[L == 0] == 0).all()  # past-length outputs are exactly zero
        # 2-D input, full lengths
        close(mg.run(X[0]), mc.run(X[0]), dtype, f"{what} run 2-D")
        # every sequence ends before T (the last steps run for none of them); no steps; no sequences
        L1 = np.maximum(L - 1, 0)
        close(mg.run(X, lengths=L1), mc.run(X, lengths=L1), dtype, f"{what} run, all shorter than T")
        for Xe in (X[:, :0], X[:0]):
            Ye = mg.run(Xe)
            assert Ye.shape == mc.run(Xe).shape == Xe.shape[:2] + (mc.output_size,), (what, Ye.shape)

    def pools_agree(mc, models, dtype, cap, sizes, what=""):
        # pool.step of the CPU model and of each (name, model) on the same frames and ids (n of
        # cap open streams, in random order, per step), then every state against the CPU's
        I = mc.input_size
        pc = mc.pool(cap)
        ic = pc.open(cap)
        pools = [(name, m.pool(cap)) for name, m in models]
        ids = [p.open(cap) for _, p in pools]
        for s, n in enumerate(sizes):
            sel = rng.permutation(cap)[:n]
            X = rng.standard_normal((n, I)).astype(dtype)
            yc = pc.step(ic[sel], X)
            for (name, p), i in zip(pools, ids):
                close(p.step(i[sel], X), yc, dtype, f"{what} {name} pool.step {s} n={n}")
        for (name, p), i in zip(pools, ids):
            for r in range(cap):
                close(p.get_state(i[r]).data, pc.get_state(ic[r]).data, dtype, f"{what} {name} state {r}")

    def check_stream(mc, mg, dtype, T=4):
        I = mc.input_size
        X = rng.standard_normal((T, I)).astype(dtype)
        sc, sg = mc.stream(), mg.stream()
        out = np.empty(mg.output_size, dtype)
        for t in range(2):
            yc = sc.step(X[t])
            yg = sg.step(X[t], out=out) if t else sg.step(X[t].tolist())
            close(yg, yc, dtype, f"stream.step {t}")
        close(sg.state.data, sc.state.data, dtype, "stream state")
        close(sg.push(X[2:]), sc.push(X[2:]), dtype, "stream.push")
        assert sg.push(X[:0]).shape == (0, mg.output_size)  # no frames: no outputs, state kept
        close(sg.state.data, sc.state.data, dtype, "stream state after push")
        # step == run on the whole sequence
        full = mc.run(X)
        sg.reset()
        ys = np.stack([sg.step(x) for x in X[:2]] + list(sg.push(X[2:])))
        close(ys, full, dtype, "stream steps vs run")
        snap = sg.state
        sg.state = snap
        close(sg.state.data, snap.data, dtype, "stream set_state")
        sg.load_state_bytes(sc.state_bytes())
        close(sg.state.data, sc.state.data, dtype, "stream load_state_bytes")
        # refused inputs change nothing
        before = sg.state.data.copy()
        bad = X[0].copy(); bad[0] = np.nan
        for x, err in ((bad, srnn.NonFiniteError), (np.zeros(I + 1), srnn.ShapeError),
                       (np.zeros((1, I)), srnn.ShapeError)):
            refused(err, lambda: sg.step(x))
        refused(srnn.NonFiniteError, lambda: sg.push(np.vstack([X[:1], bad[None]])), "frame 1")
        O = mg.output_size
        refused(srnn.ShapeError, lambda: sg.step(X[0], out=np.zeros(O + 1, dtype)), "out", f"({O + 1},)")
        if O > 1:
            refused(srnn.ShapeError, lambda: sg.step(X[0], out=np.zeros(2 * O, dtype)[::2]), "not C-contiguous")
        assert np.array_equal(sg.state.data, before)

    def check_pool(mc, mg, dtype, n=5, steps=2):
        I = mc.input_size
        pc, pg = mc.pool(8), mg.pool(8)
        ic, ig = pc.open(n), pg.open(n)
        assert np.array_equal(ic, ig)
        for s in range(steps):
            order = rng.permutation(n)
            X = rng.standard_normal((n, I)).astype(dtype)
            close(pg.step(ig[order], X), pc.step(ic[order], X), dtype, f"pool.step {s}")
        # a subset, in another order
        sub = np.array([4, 1, 2])[: max(1, n - 2)]
        X = rng.standard_normal((len(sub), I)).astype(dtype)
        close(pg.step(ig[sub], X), pc.step(ic[sub], X), dtype, "pool.step subset")
        for sid in range(n):
            close(pg.get_state(sid).data, pc.get_state(sid).data, dtype, f"pool.get_state {sid}")
        # set_state across pools and from a CPU stream, then step
        snap = pc.get_state(0)
        pg.set_state(1, snap); pc.set_state(1, snap)
        close(pg.get_state(1).data, snap.data, dtype, "pool.set_state")
        Xc = rng.standard_normal((3, I)).astype(dtype)
        close(pg.push(1, Xc), pc.push(1, Xc), dtype, "pool.push")
        X = rng.standard_normal((2, I)).astype(dtype)
        close(pg.step([1, 0], X), pc.step([1, 0], X), dtype, "pool.step after set/push")
        # lone stream == pooled stream
        pg.reset([2]); pc.reset([2])
        assert not pg.get_state(2).data.any()
        lone = mg.stream()
        Xs = rng.standard_normal((2, I)).astype(dtype)
        for t in range(2):
            y = pg.step(np.array([2]), Xs[t:t + 1])
            close(y[0], lone.step(Xs[t]), dtype, "pool vs lone stream")
        # refusals leave every state untouched
        before = np.stack([pg.get_state(i).data for i in range(n)])
        bad = rng.standard_normal((2, I)).astype(dtype); bad[1, 0] = np.inf
        pg.close(3)
        ok = np.zeros((2, I))
        cases = [
            (([0, 1], bad), srnn.NonFiniteError),
            (([0, 0], ok), srnn.StreamIdError),
            (([0, 3], ok), srnn.StreamIdError),
            (([0, 9], ok), srnn.StreamIdError),
            (([0, -1], ok), srnn.StreamIdError),
            (([0, 1], np.zeros((2, I + 1))), srnn.ShapeError),
        ]
        for (ids, X), err in cases:
            refused(err, lambda: pg.step(np.array(ids), X))
        refused(srnn.ShapeError, lambda: pg.step([0, 1], np.zeros((2, I)), out=np.empty((3, mg.output_size), dtype)))
        after = np.stack([pg.get_state(i).data for i in range(n) if i != 3])
        assert np.array_equal(after, np.delete(before, 3, axis=0)), "a refused call changed a state"
        y = pg.step(2, rng.standard_normal(I))
        assert y.shape == (mg.output_size,)
    """
    % (ROOT, ROOT)
)

_CASES = {
    # LSTM with every option + Dense head; float32
    "lstm_full": """
        I, H, P, O = 3, 8, 5, 2
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, P), R(1, 8 * H), clip=1.5,
                                    P=R(1, 3 * H), proj=R(1, P, H), input_forget=True),
                          DenseLayer(R(O, P), R(O))))
        mc, mg = both(spec, "float32")
        check_run(mc, mg, "float32")
        check_stream(mc, mg, "float32")
        check_pool(mc, mg, "float32")
    """,
    # two LSTM layers (plain, then peepholes only), tanh head; float64
    "lstm_stack64": """
        I, H, O = 2, 6, 3
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H)),
                          LSTMLayer(H, 4, R(1, 16, H), R(1, 16, 4), None, P=R(1, 12)),
                          DenseLayer(R(O, 4), R(O), Activation("Tanh"))))
        mc, mg = both(spec, "float64")
        check_run(mc, mg, "float64", B=5)
        check_stream(mc, mg, "float64")
        check_pool(mc, mg, "float64")
    """,
    # GRU linear_before_reset (PyTorch) then ONNX-default GRU, softmax head; float32
    "gru_stack": """
        I, H, O = 3, 8, 4
        spec = ModelSpec((GRULayer(I, H, R(1, 3 * H, I), R(1, 3 * H, H), R(1, 6 * H), linear_before_reset=True),
                          GRULayer(H, 5, R(1, 15, H), R(1, 15, 5), R(1, 30), clip=2.0),
                          DenseLayer(R(O, 5), R(O)), SoftmaxLayer(O)))
        mc, mg = both(spec, "float32")
        check_run(mc, mg, "float32")
        check_stream(mc, mg, "float32")
        check_pool(mc, mg, "float32")
    """,
    # ONNX GRU alone (the last layer recurrent: a separate commit kernel); float64
    "gru_onnx64": """
        I, H = 2, 7
        spec = ModelSpec((GRULayer(I, H, R(1, 3 * H, I), R(1, 3 * H, H), R(1, 6 * H)),))
        mc, mg = both(spec, "float64")
        check_run(mc, mg, "float64")
        check_stream(mc, mg, "float64")
        check_pool(mc, mg, "float64")
    """,
    # RNN relu, activation layer, Dense with LeakyRelu, LogSoftmax; float64
    "rnn_relu64": """
        I, H, O = 4, 8, 3
        spec = ModelSpec((RNNLayer(I, H, R(1, H, I), R(1, H, H), R(1, 2 * H), activations=(Activation("Relu"),)),
                          ActivationLayer(H, Activation("LeakyRelu", 0.2)),
                          DenseLayer(R(O, H), None), SoftmaxLayer(O, log=True)))
        mc, mg = both(spec, "float64")
        check_run(mc, mg, "float64")
        check_stream(mc, mg, "float64")
        check_pool(mc, mg, "float64")
    """,
    # LSTM step as a tiled GEMM (simulator tile: 8 rows x 4 units, 2x2 units per thread, 2
    # k-slices, chunks of 4, pipelined staging): 2 row blocks x 3 unit blocks (H=10: a partial
    # one), I=5 and H=10 not multiples of the chunk; vs the CPU engine, vs the row-tile kernels
    # (STREAMRNN_CUDA_GEMM=0), float32 and float64 (projection: GEMM then linear); the Dense head
    # as a tiled GEMM vs as the row-tile kernel (STREAMRNN_CUDA_DENSE=tile); profile on.
    "lstm_gemm": """
        import os
        from streamrnn.engine import cuda_tiles as ce
        from streamrnn.layers.cuda_common import GemmTile, make_gemm_accum
        os.environ["STREAMRNN_CUDA_PROFILE"] = "1"
        I, H, O = 5, 10, 3
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H)),
                          LSTMLayer(H, 6, R(1, 24, H), R(1, 24, 4), R(1, 48), proj=R(1, 4, 6), clip=1.0),
                          DenseLayer(R(O, 4), R(O))))
        for dtype in ("float32", "float64"):
            mc, mg = both(spec, dtype)
            names = [op[0].py_func.__name__ for op in mg._cuda.step_ops(1)]
            # LSTM, LSTM (its projection stays a row-tile linear), the head as a tiled GEMM
            assert names == ["lstm_gemm", "lstm_gemm", "linear", "linear_gemm"], names
            assert [op[0].py_func.__name__ for op in mg._cuda.step_ops(0)][-1] == "linear"  # one row
            gt = GemmTile(8, 4, 2, 2, 2, 4)
            assert ce._gemm_tile(1, H, 4, mg._cuda.isz) == gt
            assert make_gemm_accum(gt, I, 4 * H, H, 4, 0, False, H).staging == "pipe"
            assert make_gemm_accum(ce._gemm_tile(1, O, 1, mg._cuda.isz, dense=True), 4, O, 0, 1, 0, False,
                                   O).staging == "pipe"
            mr = cuda_model(spec, dtype, GEMM="0", DENSE="tile")
            assert [op[0].py_func.__name__ for op in mr._cuda.step_ops(1)] == ["lstm_step", "lstm_step", "linear",
                                                                              "linear"]
            pc, pg, pr = mc.pool(12), mg.pool(12), mr.pool(12)
            # every size class's kernels are built with the pool, none at its first step
            assert set(pg._cuda.core.ops) == {0, 1} and set(mg.pool(1)._cuda.core.ops) == {0}
            ic, ig, ir = pc.open(12), pg.open(12), pr.open(12)
            for s, n in enumerate((9, 12, 1, 9)):
                sel = rng.permutation(12)[:n]
                X = rng.standard_normal((n, I)).astype(dtype)
                yc = pc.step(ic[sel], X)
                close(pg.step(ig[sel], X), yc, dtype, f"gemm pool.step {s} n={n}")
                close(pr.step(ir[sel], X), yc, dtype, f"row-tile pool.step {s} n={n}")
            for sid in range(12):
                close(pg.get_state(sid).data, pc.get_state(sid).data, dtype, f"gemm state {sid}")
            prof = pg._cuda.profile()
            assert prof[9]["calls"] == 2 and prof[12]["calls"] == 1, prof
            assert all(prof[9][ph]["p50_us"] >= 0 for ph in ("pack", "launch", "sync", "copy_out", "total"))
    """,
    # frames staged by the parallel host copy (PACK_PAR_MIN lowered so tiny calls take it):
    # results, every state, and a NaN in each part of the split named by its row, nothing changed
    "pack_parallel": """
        import numba
        from streamrnn.engine import cuda_pool
        cuda_pool.PACK_PAR_MIN = 1
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        I, H, O = 3, 6, 2
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H)), DenseLayer(R(O, H), R(O))))
        for dtype in ("float32", "float64"):
            mc, mg = both(spec, dtype)
            pc, pg = mc.pool(12), mg.pool(12)
            ic, ig = pc.open(12), pg.open(12)
            assert pg._cuda.core.bad.shape[0] == numba.get_num_threads()
            for s, n in enumerate((12, 9, 1, 12)):
                sel = rng.permutation(12)[:n]
                X = rng.standard_normal((n, I)).astype(dtype)
                close(pg.step(ig[sel], X), pc.step(ic[sel], X), dtype, f"parallel-staged pool.step {s} n={n}")
            before = np.stack([pg.get_state(i).data for i in range(12)])
            for row in (0, 4, 7, 11):
                X = rng.standard_normal((12, I)).astype(dtype)
                X[row, 1] = np.nan
                X[11, 2] = np.inf  # a later bad row: the first one is named
                refused(srnn.NonFiniteError, lambda: pg.step(ig, X), f"row {row}")
            assert np.array_equal(np.stack([pg.get_state(i).data for i in range(12)]), before)
            X = rng.standard_normal((12, I)).astype(dtype)
            close(pg.step(ig, X), pc.step(ic, X), dtype, "parallel-staged pool.step after refusals")
    """,
    # the row-tile multiply with its weights loaded in batches of 3 k values (ACCUM_KB; 8 on a
    # GPU): several batches per chunk, the last one partly past the chunk's end (masked), for
    # every row-tile kernel (one-row LSTM step, GRU, RNN, projection, dense head as row tiles)
    "accum_batches": """
        import os
        from streamrnn.layers.dense import cuda as dc
        dc.ACCUM_KB = 3
        os.environ["STREAMRNN_CUDA_DENSE"] = "tile"
        I, H, O = 7, 10, 3
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, 6), R(1, 8 * H), proj=R(1, 6, H)),
                          GRULayer(6, 9, R(1, 27, 6), R(1, 27, 9), R(1, 54), linear_before_reset=True),
                          RNNLayer(9, 7, R(1, 7, 9), R(1, 7, 7), R(1, 14)),
                          DenseLayer(R(O, 7), R(O))))
        mc, mg = both(spec, "float32")
        assert mg._cuda.step_ops(1)[-1][0].py_func.__name__ == "linear"
        check_stream(mc, mg, "float32")
        pc, pg = mc.pool(8), mg.pool(8)
        ic, ig = pc.open(8), pg.open(8)
        for s, n in enumerate((7, 1, 8)):
            sel = rng.permutation(8)[:n]
            X = rng.standard_normal((n, I)).astype("float32")
            close(pg.step(ig[sel], X), pc.step(ic[sel], X), "float32", f"batched-k pool.step {s} n={n}")
        for sid in range(8):
            close(pg.get_state(sid).data, pc.get_state(sid).data, "float32", f"batched-k state {sid}")
    """,
    # pool.step in chunks (STREAMRNN_CUDA_CHUNKS=3; chunks of at least 2 rows here): results
    # and states vs the CPU engine for calls of 12, 9, 5 (2 chunks), 3 (not chunked) rows; a NaN
    # in the first / second / last chunk refuses the call by its row and leaves every state as
    # it was, though the chunks before it ran (restored from their backup); then it goes on.
    # The head of 9 outputs spans 3 unit blocks of its GEMM tile, which share the commit of the
    # LSTM's and the GRU's new states. On numba's launch path, and on a GPU's graph and driver
    # paths through tests/fakedriver.py (two streams, a graph per chunk, the backup kernel)
    "chunks": """
        import os
        os.environ["STREAMRNN_CUDA_CHUNKS"] = "3"
        I, H, O = 3, 6, 9
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H)),
                          GRULayer(H, 5, R(1, 15, H), R(1, 15, 5), R(1, 30)),
                          DenseLayer(R(O, 5), R(O))))
        import fakedriver
        for dtype, path in (("float32", "numba"), ("float64", "numba"), ("float32", "graph"), ("float64", "driver")):
            mc, mg = both(spec, dtype)
            if path != "numba":  # the launch paths of a GPU, through tests/fakedriver.py
                fakedriver.install(mg._cuda, path)
            assert mg._cuda.chunks == 3
            head = mg._cuda.step_ops(1)[-1]
            assert head[0].py_func.__name__ == "linear_gemm" and head[3](4)[1] == 3, head
            pc, pg = mc.pool(12), mg.pool(12)
            ic, ig = pc.open(12), pg.open(12)
            core = pg._cuda.core
            assert core.mode == path, (core.mode, path)  # (a failed self-test falls back)
            assert [core.chunk_count(n) for n in (12, 9, 5, 3, 1)] == [3, 3, 2, 1, 1]
            for s, n in enumerate((12, 9, 5, 3, 12, 12)):  # graphs: each chunk's on the second call of 12
                sel = rng.permutation(12)[:n]
                X = rng.standard_normal((n, I)).astype(dtype)
                close(pg.step(ig[sel], X), pc.step(ic[sel], X), dtype, f"{path} chunked pool.step {s} n={n}")
            for sid in range(12):
                close(pg.get_state(sid).data, pc.get_state(sid).data, dtype, f"{path} chunked state {sid}")
            chunk_graphs = sorted(k for k in core.graphs if isinstance(k, tuple))
            assert chunk_graphs == ([(0, 4), (4, 8), (8, 12)] if path == "graph" else []), chunk_graphs
            before = np.stack([pg.get_state(i).data for i in range(12)])
            for row in (1, 5, 11):  # chunks of rows 0-3, 4-7, 8-11
                X = rng.standard_normal((12, I)).astype(dtype)
                X[row, 2] = np.nan
                refused(srnn.NonFiniteError, lambda: pg.step(ig[::-1], X), f"row {row}")
                after = np.stack([pg.get_state(i).data for i in range(12)])
                assert np.array_equal(after, before), f"a refused chunked call (NaN in row {row}) changed a state"
            X = rng.standard_normal((12, I)).astype(dtype)
            close(pg.step(ig[::-1], X), pc.step(ic[::-1], X), dtype, f"{path} chunked pool.step after refusals")
        refused(srnn.StreamRNNError, lambda: cuda_model(spec, CHUNKS="0"), "STREAMRNN_CUDA_CHUNKS", "'0'")
    """,
    # the persistent LSTM sequence kernel (STREAMRNN_CUDA_SEQ=grid: one block under the
    # simulator, grid syncs, of numba's or the counter barrier) and the same kernel launched
    # per step over several blocks ("stepwise"): run with ragged lengths (0 included) and an initial state, push, a
    # bidirectional layer with sequences in groups of 2, peepholes + clip + input_forget,
    # float32 and float64, vs the CPU engine; the previous h loaded in batches of one value
    # (GRID_HB; 8 on a GPU), so that "stepwise" has two batches, the last one partly masked
    "lstm_seq_grid": """
        import os
        from streamrnn.layers import cuda_seqgrid
        cuda_seqgrid.GRID_HB = 1  # the previous h loaded one value per batch: "stepwise" (16 threads) runs 2
        I, H, O = 3, 6, 2
        specs = {
            "peep": ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H), clip=1.2,
                                         input_forget=True), DenseLayer(R(O, H), R(O)))),
            "bidir": ModelSpec((LSTMLayer(I, 4, R(2, 16, I), R(2, 16, 4), R(2, 32), direction="bidirectional"),
                                LSTMLayer(8, 5, R(1, 20, 8), R(1, 20, 5), R(1, 40)))),
        }
        for mode in ("grid", "stepwise", "grid-atomic"):
            for name, spec in specs.items():
                for dtype in ("float32", "float64"):
                    mg = cuda_model(spec, dtype, SEQ=mode.split("-")[0],
                                    GRIDSYNC="atomic" if mode == "grid-atomic" else "cg")
                    assert mg._cuda.grid_barrier == ("atomic" if mode == "grid-atomic" else "cg")
                    mc = srnn.Model(spec, dtype=dtype, device="cpu")
                    eng = mg._cuda
                    eng.GRID_BMAX = 6  # (the fallback case below then stays small)
                    if name == "bidir":
                        eng.GRID_GROUP = 2  # several groups of sequences per step
                    calls = []
                    orig = eng._seq_grid
                    eng._seq_grid = lambda *a: calls.append(a[0]) or orig(*a)
                    for B, T in ((3, 4), (1, 3), (5, 2)):
                        X = rng.standard_normal((B, T, I)).astype(dtype)
                        L = np.array([T, 0, 2, 1, T][:B])
                        st0 = rng.standard_normal((B, mc.state_size)) * 0.5
                        Yc, sc = mc.run(X, state=st0, lengths=L, return_state=True)
                        Yg, sg = mg.run(X, state=st0, lengths=L, return_state=True)
                        close(Yg, Yc, dtype, f"{mode} {name} run Y B={B}")
                        close(sg.data, sc.data, dtype, f"{mode} {name} run state B={B}")
                    assert calls and all(c[1] >= 1 for c in calls), (mode, name, calls)
                    if mode == "stepwise":  # several blocks of UPB = 2 units
                        assert any(c[3] > 1 for c in calls), calls
                    if name == "bidir":
                        assert any(c[2] == 2 for c in calls), calls
                    # more sequences than GRID_BMAX: the per-block kernel
                    n0 = len(calls)
                    B = eng.GRID_BMAX + 1
                    X = rng.standard_normal((B, 2, I)).astype(dtype)
                    close(mg.run(X), mc.run(X), dtype, f"{mode} {name} run B={B}")
                    assert len(calls) == n0
                    if name == "peep":
                        sc_, sg_ = mc.stream(), mg.stream()
                        Xs = rng.standard_normal((4, I)).astype(dtype)
                        close(sg_.push(Xs), sc_.push(Xs), dtype, f"{mode} push")
                        close(sg_.state.data, sc_.state.data, dtype, f"{mode} push state")
        # the default, "auto": the persistent kernel for at most GRID_AUTO_B sequences, or for
        # any count up to GRID_BMAX once H >= GRID_AUTO_H; the per-block kernel otherwise
        spec = specs["peep"]
        mg, mc = srnn.Model(spec, device="cuda"), srnn.Model(spec, device="cpu")
        eng = mg._cuda
        assert eng.seq_mode == "auto"
        eng.GRID_AUTO_B = 2
        calls = []
        orig = eng._seq_grid
        eng._seq_grid = lambda *a: calls.append(a[0]) or orig(*a)
        for B, auto_h, grid in ((2, 256, True), (3, 256, False), (3, H, True)):
            eng.GRID_AUTO_H = auto_h
            n0 = len(calls)
            X = rng.standard_normal((B, 3, I)).astype("float32")
            close(mg.run(X), mc.run(X), "float32", f"auto run B={B} GRID_AUTO_H={auto_h}")
            assert (len(calls) > n0) == grid, (B, auto_h, calls)
        # phase stamps (benchmarks): same results, the steps of the last launch counted (the
        # simulator's clock reads 0, so only the count is checked)
        eng.GRID_STAMPS = True
        X = rng.standard_normal((2, 5, I)).astype("float32")
        close(mg.run(X), mc.run(X), "float32", "run with phase stamps")
        ph = eng.grid_phases()
        assert ph["steps"] == 5 and set(ph) == {"steps", "load h", "products", "cell", "barrier"}, ph
        # the shared arrays in dynamic shared memory (STREAMRNN_CUDA_GRID_DYN=1, NOTES entry 84):
        # with a static limit that allows groups of 1 sequence, the dynamic limit groups of 4
        # (B=5: a full group and a partial one), persistent and stepwise, vs the CPU engine
        for mode in ("grid", "stepwise"):
            for dtype in ("float32", "float64"):
                for dyn in ("0", "1"):
                    mg = cuda_model(spec, dtype, SEQ=mode, GRID_DYN=dyn)
                    mc = srnn.Model(spec, dtype=dtype, device="cpu")
                    eng = mg._cuda
                    assert eng.grid_dyn == (dyn == "1")
                    isz = np.dtype(dtype).itemsize
                    UPB = H if mode == "grid" else 2
                    KS = 1 if mode == "grid" else 2
                    eng.GRID_SMEM = (H * 4 * UPB + H + KS * 4 * UPB) * isz  # room for 1 sequence
                    eng.GRID_DYN_SMEM = (H * 4 * UPB + 4 * H + 4 * KS * 4 * UPB) * isz  # for 4
                    calls = []
                    orig = eng._seq_grid
                    eng._seq_grid = lambda *a: calls.append(a[0]) or orig(*a)
                    check_run(mc, mg, dtype, B=5, T=3, what=f"{mode} dyn={dyn}")
                    want = (4, eng.GRID_DYN_SMEM) if dyn == "1" else (1, 0)
                    assert calls and (calls[0][2], calls[0][4]) == want, (mode, dyn, calls)  # the run of 5
    """,
    # the persistent sequence kernel for a PyTorch GRU (make_gru_seq_grid, NOTES entry 88): a
    # GRU (clip, HardSigmoid / Softsign) then a bidirectional one, then an ONNX GRU (per-block
    # kernel), persistent / stepwise / counter barrier / dynamic shared memory, float32 /
    # float64, ragged lengths and initial states, vs the CPU engine
    "gru_seq_grid": """
        import os
        from streamrnn.layers import cuda_seqgrid
        cuda_seqgrid.GRID_HB = 1  # several batches of h per thread in "stepwise"
        I, H = 3, 6
        acts = (Activation("HardSigmoid", 0.3, 0.45), Activation("Softsign"))
        spec = ModelSpec((GRULayer(I, H, R(1, 3 * H, I), R(1, 3 * H, H), R(1, 6 * H), linear_before_reset=True,
                                   clip=1.7, activations=acts),
                          GRULayer(H, 4, R(2, 12, H), R(2, 12, 4), R(2, 24), linear_before_reset=True,
                                   direction="bidirectional"),
                          GRULayer(8, 3, R(1, 9, 8), R(1, 9, 3), R(1, 18)),
                          DenseLayer(R(2, 3), R(2))))
        for mode, env in (("grid", {}), ("stepwise", {}), ("grid", {"GRIDSYNC": "atomic"}),
                          ("stepwise", {"GRID_DYN": "1"})):
            for dtype in ("float32", "float64"):
                mg = cuda_model(spec, dtype, SEQ=mode, **env)
                mc = srnn.Model(spec, dtype=dtype, device="cpu")
                eng = mg._cuda
                eng.GRID_GROUP = 2  # several groups of sequences per step
                calls = []
                orig = eng._seq_grid
                eng._seq_grid = lambda *a: calls.append((a[0], a[1].H, a[4])) or orig(*a)
                for B, T in ((3, 4), (1, 3), (5, 2)):
                    check_run(mc, mg, dtype, B, T, what=f"{mode} {env}")
                # the LBR layers (H=6; H=4 both directions) went through it, the ONNX GRU (H=3) not
                hs = {h for _, h, _ in calls}
                assert hs == {6, 4} and any(rev for _, h, rev in calls if h == 4), calls
                if mode == "stepwise":
                    assert any(c[3] > 1 for c, _, _ in calls), calls  # several blocks
                assert any(c[2] == 2 for c, _, _ in calls), calls  # groups of 2
                if env.get("STREAMRNN_CUDA_GRID_DYN"):
                    assert all(c[4] > 0 for c, _, _ in calls), calls
        # push (a bidirectional model does not stream: the first layer alone, the default mode)
        spec1 = ModelSpec((spec.layers[0], DenseLayer(R(2, H), R(2))))
        mg, mc = srnn.Model(spec1, device="cuda"), srnn.Model(spec1, device="cpu")
        sc_, sg2 = mc.stream(), mg.stream()
        Xs = rng.standard_normal((5, I)).astype("float32")
        close(sg2.push(Xs), sc_.push(Xs), "float32", "auto push")
        close(sg2.state.data, sc_.state.data, "float32", "auto push state")
    """,
    # simple RNN layers (NOTES entry 89): the pool step as a tiled GEMM (make_rnn_gemm; 2-3 row
    # blocks of 8, a partial unit block) vs the CPU engine and the row tiles, and run through
    # the persistent sequence kernel (make_rnn_seq_grid) in each mode; tanh with clip, then a
    # bidirectional relu layer; float32 / float64
    "rnn_gemm_grid": """
        import os
        from streamrnn.engine import cuda_tiles as ce
        I, H = 3, 10
        spec = ModelSpec((RNNLayer(I, H, R(1, H, I), R(1, H, H), R(1, 2 * H), clip=1.3),
                          DenseLayer(R(2, H), R(2))))
        bi = ModelSpec((RNNLayer(I, H, R(1, H, I), R(1, H, H), R(1, 2 * H), clip=1.3),
                        RNNLayer(H, 5, R(2, 5, H), R(2, 5, 5) * 0.5, R(2, 10), direction="bidirectional",
                                 activations=(Activation("Relu"), Activation("Relu"))),
                        DenseLayer(R(2, 10), R(2))))
        for dtype in ("float32", "float64"):
            mc, mg = srnn.Model(spec, dtype=dtype, device="cpu"), srnn.Model(spec, dtype=dtype, device="cuda")
            mr = cuda_model(spec, dtype, GEMM="0")
            names = [op[0].py_func.__name__ for op in mg._cuda.step_ops(1)]
            assert names == ["rnn_gemm", "linear_gemm"], names
            assert mg._cuda.step_ops(1)[0][0].staging == "pipe"
            assert [op[0].py_func.__name__ for op in mr._cuda.step_ops(1)][0] == "rnn_step"
            pools_agree(mc, [("gemm", mg), ("row-tile", mr)], dtype, 20, (19, 20, 3), "rnn")
            for mode, env in (("grid", {}), ("stepwise", {}), ("stepwise", {"GRID_DYN": "1"})):
                mg = cuda_model(bi, dtype, SEQ=mode, **env)
                mcb = srnn.Model(bi, dtype=dtype, device="cpu")
                eng = mg._cuda
                eng.GRID_GROUP = 2
                calls = []
                orig = eng._seq_grid
                eng._seq_grid = lambda *a: calls.append((a[0], a[1].H)) or orig(*a)
                for B, T in ((3, 4), (5, 2)):
                    check_run(mcb, mg, dtype, B, T, what=f"rnn {mode} {env}")
                assert {h for _, h in calls} == {H, 5} and any(c[2] == 2 for c, _ in calls), calls
    """,
    # the GEMM's unpipelined staging: STREAMRNN_CUDA_STAGE=loop on a tile that could pipeline,
    # and a tile whose thread count does not divide its staged tiles (loop staging whatever
    # the setting): pool.step against the CPU engine, odd row counts, 5 unit blocks
    "gemm_loop_stage": """
        import os
        from streamrnn.engine import cuda_tiles as ce
        from streamrnn.layers.cuda_common import GemmTile, make_gemm_accum
        I, H, O = 5, 10, 3
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H)),
                          DenseLayer(R(O, H), R(O))))
        odd = GemmTile(4, 2, 2, 1, 2, 6)  # 8 threads, 6-deep chunks: 8 does not divide 6
        assert make_gemm_accum(odd, I, 4 * H, H, 4, 0, False, H).staging == "loop"
        # 4 rows x 4 units per thread: the epilogue loads the state of 2 rows at a time, twice
        grouped = GemmTile(8, 8, 4, 4, 1, 4)
        assert make_gemm_accum(GemmTile(8, 4, 2, 2, 2, 4), I, 4 * H, H, 4, 0, False, H, False).staging == "loop"
        for dtype in ("float32", "float64"):
            mc = srnn.Model(spec, dtype=dtype, device="cpu")
            ml = cuda_model(spec, dtype, STAGE="loop")
            mo = srnn.Model(spec, dtype=dtype, device="cuda")
            assert ml._cuda.stage == "loop" and mo._cuda.stage == "pipe"
            for what, mg, tiles in (("loop staging", ml, None), ("odd tile", mo, [None, odd]),
                                    ("epilogue in row groups", mo, [None, grouped])):
                ce.GEMM_TILES = tiles  # the kernels are built when a pool is created
                k0 = mg._cuda.step_ops(1)[0][0]
                assert k0.py_func.__name__ == "lstm_gemm"
                if tiles is not None:
                    assert k0.epilogue_rows == (2 if tiles[1] is grouped else tiles[1].TM), k0.epilogue_rows
                pc, pg = mc.pool(12), mg.pool(12)
                ic, ig = pc.open(12), pg.open(12)
                for s, n in enumerate((9, 12, 2, 7)):
                    sel = rng.permutation(12)[:n]
                    X = rng.standard_normal((n, I)).astype(dtype)
                    close(pg.step(ig[sel], X), pc.step(ic[sel], X), dtype, f"{what} pool.step {s} n={n}")
                for sid in range(12):
                    close(pg.get_state(sid).data, pc.get_state(sid).data, dtype, f"{what} state {sid}")
                ce.GEMM_TILES = None
        # an unknown setting is refused by name, not silently replaced by the default
        for var in ("STAGE", "SEQ", "GRIDSYNC", "DENSE", "GRID_DYN"):
            refused(srnn.StreamRNNError, lambda: cuda_model(spec, **{var: "bogus"}), "STREAMRNN_CUDA_" + var, "bogus")
    """,
    # the LSTM GEMM in the vector layout (STREAMRNN_CUDA_GEMM_VEC=1, NOTES entry 83: a thread's
    # rows in runs of 4, B unit-major, A's pitch BM + 4): pipelined staging (4 rows per thread)
    # and loop staging (8 rows per thread, two runs of 4), 2-3 row blocks and a partial unit
    # block, float32 / float64, vs the CPU engine; a tile of 2 rows per thread keeps the old layout
    "gemm_vec": """
        import os
        from streamrnn.engine import cuda_tiles as ce
        from streamrnn.layers.cuda_common import GemmTile, gemm_a_pitch, make_gemm_accum, make_gemm_row
        I, H, O = 5, 10, 3
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H), clip=2.0),
                          DenseLayer(R(O, H), R(O))))
        pipe4, loop8, two = GemmTile(8, 2, 4, 1, 2, 4), GemmTile(16, 2, 8, 1, 1, 4), GemmTile(8, 4, 2, 2, 2, 4)
        assert make_gemm_accum(pipe4, I, 4 * H, H, 4, 0, False, H, True, True).staging == "pipe"
        assert make_gemm_accum(loop8, I, 4 * H, H, 4, 0, False, H, True, True).staging == "loop"
        assert gemm_a_pitch(loop8, True) == 20 and gemm_a_pitch(loop8) == 17
        # rows of thread ty = 1 of 2 (TY = 2): runs of 4 from 4 ty, the second run 4 TY further
        row = make_gemm_row(loop8, True)
        assert [row(1, q) for q in range(8)] == [4, 5, 6, 7, 12, 13, 14, 15]
        refused(ValueError, lambda: make_gemm_accum(two, I, 4 * H, H, 4, 0, False, H, True, True), "TM a multiple of 4")
        for dtype in ("float32", "float64"):
            mc = srnn.Model(spec, dtype=dtype, device="cpu")
            mv = cuda_model(spec, dtype, GEMM_VEC="1")
            assert mv._cuda.gemm_vec and not srnn.Model(spec, dtype=dtype, device="cuda")._cuda.gemm_vec
            for gt, vec in ((pipe4, True), (loop8, True), (two, False)):
                ce.GEMM_TILES = [None, gt]  # the kernels are built when a pool is created
                k0 = mv._cuda.step_ops(1)[0][0]
                assert k0.py_func.__name__ == "lstm_gemm" and k0.vec == vec, (gt, k0.vec)
                pools_agree(mc, [("vec", mv)], dtype, 24, (19, 24, 3, 17), str(gt))
                ce.GEMM_TILES = None
        refused(srnn.StreamRNNError, lambda: cuda_model(spec, GEMM_VEC="yes"), "STREAMRNN_CUDA_GEMM_VEC", "yes")
    """,
    # a PyTorch GRU (linear_before_reset) step as a tiled GEMM (make_gru_gemm, NOTES entry 87):
    # the pipelined tile of the simulator (12 rows x 4 units, 2 k-slices) and a loop-staged
    # one, 2-3 row blocks, a partial unit block (H=10), clip and other activations, as the
    # first layer and after an LSTM, float32 / float64, vs the CPU engine and vs the row-tile
    # kernel (STREAMRNN_CUDA_GEMM=0); an ONNX GRU (no linear_before_reset) stays a row tile
    "gru_gemm": """
        import os
        from streamrnn.engine import cuda_tiles as ce
        from streamrnn.layers.cuda_common import GemmTile, make_gemm_accum
        I, H, O = 5, 10, 3
        acts = (Activation("HardSigmoid", 0.3, 0.45), Activation("Softsign"))
        specs = {
            "gru": ModelSpec((GRULayer(I, H, R(1, 3 * H, I), R(1, 3 * H, H), R(1, 6 * H), linear_before_reset=True,
                                       clip=1.5, activations=acts), DenseLayer(R(O, H), R(O)))),
            "lstm+gru": ModelSpec((LSTMLayer(I, 6, R(1, 24, I), R(1, 24, 6), R(1, 48)),
                                   GRULayer(6, H, R(1, 3 * H, 6), R(1, 3 * H, H), R(1, 6 * H),
                                            linear_before_reset=True),
                                   GRULayer(H, 4, R(1, 12, H), R(1, 12, 4), R(1, 24)))),
        }
        pipe, loop = GemmTile(12, 4, 2, 2, 2, 4), GemmTile(8, 4, 2, 2, 2, 4)
        assert ce._gru_gemm_tiles()[1] == pipe
        assert make_gemm_accum(pipe, I, 3 * H, H, 3, 0, False, H, True, False, 4).staging == "pipe"
        assert make_gemm_accum(loop, I, 3 * H, H, 3, 0, False, H, True, False, 4, 2).staging == "loop"
        refused(ValueError, lambda: make_gemm_accum(pipe, I, 3 * H, H, 3, 0, False, H, True, False, 3, 2), "GA")
        for name, spec in specs.items():
            for dtype in ("float32", "float64"):
                mc = srnn.Model(spec, dtype=dtype, device="cpu")
                mg = srnn.Model(spec, dtype=dtype, device="cuda")
                mr = cuda_model(spec, dtype, GEMM="0")
                for tiles in (None, [None, loop]):
                    ce.GRU_GEMM_TILES = tiles  # the kernels are built when a pool is created
                    names = [op[0].py_func.__name__ for op in mg._cuda.step_ops(1)]
                    want = ["lstm_gemm", "gru_gemm", "gru_step", "gru_step2", "commit_kernel"] if name == "lstm+gru" \
                        else ["gru_gemm", "linear_gemm"]
                    assert names == want, names
                    k0 = mg._cuda.step_ops(1)[1 if name == "lstm+gru" else 0][0]
                    assert k0.staging == ("pipe" if tiles is None else "loop"), k0.staging
                    assert "gru_gemm" not in [op[0].py_func.__name__ for op in mr._cuda.step_ops(1)]
                    assert "gru_gemm" not in [op[0].py_func.__name__ for op in mg._cuda.step_ops(0)]  # one row
                    pools_agree(mc, [("gemm", mg), ("row-tile", mr)], dtype, 30, (25, 30, 2, 13), f"{name} {tiles}")
                    ce.GRU_GEMM_TILES = None
    """,
    # A GPU's launch paths (graph: the default there; driver), which the simulator never takes,
    # through tests/fakedriver.py: the pool's self-test against numba's path, steps of several
    # sizes (a graph captured on a size's second call; outputs in mapped memory), the whole
    # pool / stream check (state access, push, reset, refusals), and the graph cache past its
    # size (evicted graphs destroyed, recaptured later), float32 and float64, vs the CPU engine;
    # a pool's graph step as one njit call (STREAMRNN_CUDA_HOSTCALL=njit) through the fake's
    # C entry points; no graph outlives its pool's self-test
    "driver_paths": """
        import gc
        import fakedriver
        from streamrnn.engine import cuda_tiles
        from fakedriver import CALLS
        I, H, O = 3, 6, 2
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H)),
                          GRULayer(H, 5, R(1, 15, H), R(1, 15, 5), R(1, 30), linear_before_reset=True),
                          DenseLayer(R(O, 5), R(O))))
        for dtype, path, hostcall in (("float32", "graph", False), ("float64", "graph", False),
                                      ("float32", "driver", False), ("float64", "graph", True)):
            gc.collect()
            assert fakedriver.live() == 0  # the pools before: their graphs destroyed with them
            mc, mg = both(spec, dtype)
            fakedriver.install(mg._cuda, path, hostcall)
            CALLS.clear()
            pc, pg = mc.pool(12), mg.pool(12)
            core = pg._cuda.core
            assert core.mode == path and core.mapped and core.hout_m is not None, (core.mode, core.mapped)
            assert (core.fused is not None) == hostcall  # its self-test passed
            assert CALLS["cuGraphLaunch"] == (1 if path == "graph" else 0)  # the self-test's
            assert CALLS["entry cuGraphLaunch"] == (1 if hostcall else 0)
            assert fakedriver.live() == 0, "a graph of the self-test outlived it"
            ic, ig = pc.open(12), pg.open(12)
            sizes = (5, 5, 12, 12, 1, 1, 5, 3, 3)
            for s, n in enumerate(sizes):
                sel = rng.permutation(12)[:n]
                X = rng.standard_normal((n, I)).astype(dtype)
                close(pg.step(ig[sel], X), pc.step(ic[sel], X), dtype, f"{path} pool.step {s} n={n}")
            for sid in range(12):
                close(pg.get_state(sid).data, pc.get_state(sid).data, dtype, f"{path} state {sid}")
            if path == "graph":  # captured on the second consecutive call of a size, then replayed
                assert sorted(core.graphs) == [1, 3, 5, 12], sorted(core.graphs)
                # replays (5, 12, 1, 5, 3) through cuda-bindings, or through the njit step's entry
                # point once a size's graph exists before the call (5 the third time)
                assert (CALLS["cuGraphLaunch"], CALLS["entry cuGraphLaunch"]) == ((1 + 4, 1 + 1) if hostcall
                                                                                 else (1 + 5, 0)), CALLS
                core.GRAPHS = 2  # a small cache: sizes evict each other, and are captured again
                made, gone = CALLS["cuGraphInstantiate"], CALLS["cuGraphExecDestroy"]
                for s, n in enumerate((2, 2, 4, 4, 2, 2, 3, 3)):
                    sel = rng.permutation(12)[:n]
                    X = rng.standard_normal((n, I)).astype(dtype)
                    close(pg.step(ig[sel], X), pc.step(ic[sel], X), dtype, f"small graph cache step {s} n={n}")
                # captured: 2, 4 (2 is still cached on its next calls), 3; destroyed: 3 of the 4
                # cached sizes at the first capture, then one per capture. The njit graph step
                # does not reorder the cache (it evicts in capture order): 2 goes, not 4
                assert list(core.graphs) == ([4, 3] if hostcall else [2, 3]), list(core.graphs)
                assert (CALLS["cuGraphInstantiate"] - made, CALLS["cuGraphExecDestroy"] - gone) == (3, 5), CALLS
            else:
                assert not core.graphs and CALLS["cuGraphLaunch"] == 0 and CALLS["cuLaunchKernel"] > 0
            # the device time of each operation of a step (bench/gpu_check.py; the simulator's
            # events time nothing): the copy in, then the step's kernels in launch order
            kt = pg._cuda.kernel_times(5, reps=2)
            ops = core._ops(cuda_tiles._bucket(5))
            assert [r["op"] for r in kt] == ["copy in"] + [d.py_func.__name__ for d, *_ in ops], kt
            assert kt[1]["grid"] == list(ops[0][3](5)) and kt[1]["block"] == ops[0][2], kt
            check_pool(mc, mg, dtype)
            check_stream(mc, mg, dtype)
            pc = pg = core = None
    """,
    # the commit of new hidden states to the state arena (make_commit) on its own: rows in
    # groups of NR over NY blocks each, one or two committed segments per row, batches of loads
    # (several per thread where a group has more values than its threads), rows past n untouched
    "commit": """
        from numba import cuda
        from streamrnn.layers.dense.cuda import COMMIT_BATCH, make_commit
        cap, F = 11, 16
        cases = (  # NT, NR, NY, flat (feature col, arena col, size) triples, rows n
            (2, 3, 1, (1, 0, 4, 9, 5, 3), 7),   # 3 rows x 7 values over 2 threads: 2 batches of 8
            (4, 3, 2, (1, 0, 5, 9, 5, 3), 8),
            (2, 1, 1, (0, 2, 7), 4),
            (3, 4, 3, (2, 1, 6), 9),
            (8, 2, 1, (4, 3, 2), 3),            # fewer values than threads: a batch of 1
        )
        for dtype in ("float32", "float64"):
            for NT, NR, NY, COMMIT, n in cases:
                commit = make_commit(dtype, NT, NR, NY, COMMIT)

                @cuda.jit
                def kern(ids, dst, arena, n):
                    commit(ids, dst, arena, cuda.blockIdx.x * NR, n, cuda.threadIdx.x, cuda.blockIdx.y)

                ids = rng.permutation(cap)[:n].astype(np.int64)
                dst = rng.standard_normal((n, F)).astype(dtype)
                arena = rng.standard_normal((cap, 10)).astype(dtype)
                want = arena.copy()
                for r in range(n):
                    for c in range(len(COMMIT) // 3):
                        c0, h0, size = COMMIT[3 * c: 3 * c + 3]
                        want[ids[r], h0:h0 + size] = dst[r, c0:c0 + size]
                d_arena = cuda.to_device(arena)
                kern[(-(-n // NR), NY), NT](cuda.to_device(ids), cuda.to_device(dst), d_arena, n)
                got = d_arena.copy_to_host()
                assert np.array_equal(got, want), (NT, NR, NY, COMMIT, n, dtype)
        assert COMMIT_BATCH == 8
    """,
    # bidirectional LSTM + reverse GRU: run only; float32
    "bidir_run": """
        I, H, O = 3, 4, 2
        spec = ModelSpec((LSTMLayer(I, H, R(2, 4 * H, I), R(2, 4 * H, H), R(2, 8 * H), direction="bidirectional"),
                          GRULayer(2 * H, 3, R(1, 9, 2 * H), R(1, 9, 3), R(1, 18), direction="reverse"),
                          DenseLayer(R(O, 3), R(O))))
        mc, mg = both(spec, "float32")
        check_run(mc, mg, "float32")
        refused(srnn.StreamRNNError, lambda: mg.stream())
    """,
    # the per-block sequence kernels (STREAMRNN_CUDA_SEQ=block: make_lstm_seq / make_gru_seq /
    # make_rnn_seq and their shared row moves, layers/cuda_seqblock.py) for every cell kind, in
    # both directions: 2 sequences a block in the simulator, so B = 3 and 5 leave a block's
    # second row past the batch; ragged lengths (0 included), initial states, push; vs the CPU
    # engine; the persistent grid kernel never runs
    "seq_block": """
        I, H = 3, 5
        acts = (Activation("HardSigmoid", 0.3, 0.45), Activation("Softsign"))
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H), clip=1.2,
                                    input_forget=True),
                          LSTMLayer(H, 4, R(2, 16, H), R(2, 16, 3), R(2, 32), proj=R(2, 3, 4),
                                    direction="bidirectional"),
                          GRULayer(6, 4, R(1, 12, 6), R(1, 12, 4), R(1, 24), linear_before_reset=True, clip=1.7,
                                   activations=acts),
                          GRULayer(4, 3, R(1, 9, 4), R(1, 9, 3), R(1, 18), direction="reverse"),
                          RNNLayer(3, 4, R(2, 4, 3), R(2, 4, 4), R(2, 8), direction="bidirectional",
                                   activations=(Activation("Relu"), Activation("Tanh"))),
                          DenseLayer(R(2, 8), R(2))))
        fwd = ModelSpec((GRULayer(I, H, R(1, 3 * H, I), R(1, 3 * H, H), R(1, 6 * H), linear_before_reset=True),
                         RNNLayer(H, 4, R(1, 4, H), R(1, 4, 4), R(1, 8)),
                         LSTMLayer(4, 3, R(1, 12, 4), R(1, 12, 3), None)))
        for dtype in ("float32", "float64"):
            mg = cuda_model(spec, dtype, SEQ="block")
            mc = srnn.Model(spec, dtype=dtype, device="cpu")
            eng = mg._cuda
            assert eng._seq_cfg(eng.layers[0], 5) == (4, 2)
            calls = []
            orig = eng._seq_grid
            eng._seq_grid = lambda *a: calls.append(a[0]) or orig(*a)
            for B, T in ((3, 4), (5, 3), (1, 2)):
                check_run(mc, mg, dtype, B, T, what=f"block B={B}")
            mg = cuda_model(fwd, dtype, SEQ="block")
            mc = srnn.Model(fwd, dtype=dtype, device="cpu")
            mg._cuda._seq_grid = lambda *a: calls.append(a[0]) or orig(*a)
            check_run(mc, mg, dtype, B=5, T=3, what="block forward stack")
            sc, sg = mc.stream(), mg.stream()
            Xs = rng.standard_normal((4, I)).astype(dtype)
            close(sg.push(Xs[:3]), sc.push(Xs[:3]), dtype, "block push")
            close(sg.push(Xs[3:]), sc.push(Xs[3:]), dtype, "block push 2")
            close(sg.state.data, sc.state.data, dtype, "block push state")
            assert not calls, calls
    """,
    # models whose last layer writes the outputs itself (``LAST``): a PyTorch GRU alone (nn.GRU
    # without a head: its row-tile step at one row, its tiled GEMM at more) and an elementwise
    # activation after an LSTM; float32 / float64, streams, pools of 1-30 rows, run. No case
    # had either as the last layer before (bench/sim_coverage.py, NOTES entry 106)
    "last_layer": """
        I, H = 4, 10
        specs = {
            "gru": ModelSpec((GRULayer(I, H, R(1, 3 * H, I), R(1, 3 * H, H), R(1, 6 * H), linear_before_reset=True,
                                       clip=1.5),)),
            "act": ModelSpec((LSTMLayer(I, 6, R(1, 24, I), R(1, 24, 6), R(1, 48)),
                              ActivationLayer(6, Activation("Tanh")))),
        }
        want = {"gru": (["gru_step", "commit_kernel"], ["gru_gemm", "commit_kernel"]),
                "act": (["lstm_step", "rowwise"], ["lstm_gemm", "rowwise"])}
        for name, spec in specs.items():
            for dtype in ("float32", "float64"):
                mc, mg = both(spec, dtype)
                for b in (0, 1):
                    names = [op[0].py_func.__name__ for op in mg._cuda.step_ops(b)]
                    assert names == want[name][b], (name, b, names)
                check_stream(mc, mg, dtype)
                check_pool(mc, mg, dtype)
                pools_agree(mc, [("cuda", mg)], dtype, 30, (1, 25, 30, 13), name)
                check_run(mc, mg, dtype, B=5, T=3, what=name)
    """,
    # model.run / push with STREAMRNN_CUDA_SEQ=gemm (engine/cuda.py ``_sequence_gemm``, NOTES
    # 102): a pool's step ops over all running sequences per time step, sequences sorted by
    # length (ragged, one of 0; initial states), every layer kind the step has, a recurrent last
    # layer (the commit kernel); more sequences than one block's rows; a bidirectional model
    # keeps the sequence kernels
    "seq_gemm": """
        specs = [
            ("float32", ModelSpec((LSTMLayer(3, 8, R(1, 32, 3), R(1, 32, 8), R(1, 64)), DenseLayer(R(2, 8), R(2))))),
            ("float64", ModelSpec((LSTMLayer(3, 8, R(1, 32, 3), R(1, 32, 5), R(1, 64), P=R(1, 24),
                                             proj=R(1, 5, 8)),
                                   GRULayer(5, 6, R(1, 18, 5), R(1, 18, 6), R(1, 36), linear_before_reset=True),
                                   DenseLayer(R(4, 6), R(4)), SoftmaxLayer(4)))),
            ("float32", ModelSpec((GRULayer(2, 7, R(1, 21, 2), R(1, 21, 7), R(1, 42)),
                                   RNNLayer(7, 5, R(1, 5, 7), R(1, 5, 5), R(1, 10)),
                                   ActivationLayer(5, Activation("LeakyRelu", 0.2)),
                                   DenseLayer(R(3, 5), None), SoftmaxLayer(3, log=True)))),
            ("float64", ModelSpec((RNNLayer(4, 6, R(1, 6, 4), R(1, 6, 6), R(1, 12)),))),
        ]
        for k, (dtype, spec) in enumerate(specs):
            mc = srnn.Model(spec, dtype=dtype, device="cpu")
            mg = cuda_model(spec, dtype, SEQ="gemm")
            assert mg._cuda.gemm_seq
            for B in (3, 5):
                check_run(mc, mg, dtype, B=B, T=5, what=f"gemm model {k}")
            check_stream(mc, mg, dtype)
        # 11 sequences of full length, lengths in a shuffled order: several blocks of rows per step
        dtype, spec = specs[0]
        mc, mg = srnn.Model(spec, dtype=dtype, device="cpu"), cuda_model(spec, dtype, SEQ="gemm")
        X = rng.standard_normal((11, 4, 3)).astype(dtype)
        L = np.array([4, 1, 3, 4, 2, 0, 4, 3, 1, 2, 4])
        st0 = rng.standard_normal((11, mc.state_size)) * 0.5
        Yc, sc = mc.run(X, state=st0, lengths=L, return_state=True)
        Yg, sg = mg.run(X, state=st0, lengths=L, return_state=True)
        close(Yg, Yc, dtype, "gemm run of 11 ragged sequences")
        close(sg.data, sc.data, dtype, "gemm run of 11: states")
        # a GPU's path through the driver (tests/fakedriver.py): parameters packed once per call,
        # the frames' and outputs' rows repacked per step, one cuLaunchKernel per op and step
        import fakedriver
        for dtype, spec in (specs[0], specs[1]):
            mc, mg = srnn.Model(spec, dtype=dtype, device="cpu"), cuda_model(spec, dtype, SEQ="gemm")
            fakedriver.install(mg._cuda, "driver")
            n0 = fakedriver.CALLS["cuLaunchKernel"]
            X = rng.standard_normal((5, 4, mc.input_size)).astype(dtype)
            L = np.array([2, 4, 0, 3, 4])
            st0 = rng.standard_normal((5, mc.state_size)) * 0.5
            Yc, sc = mc.run(X, state=st0, lengths=L, return_state=True)
            Yg, sg = mg.run(X, state=st0, lengths=L, return_state=True)
            close(Yg, Yc, dtype, "gemm run, driver launches")
            close(sg.data, sc.data, dtype, "gemm run, driver launches: states")
            nops = len(mg._cuda._seq_ops[next(iter(mg._cuda._seq_ops))])
            assert fakedriver.CALLS["cuLaunchKernel"] - n0 == 4 * nops, (fakedriver.CALLS, nops)  # 4 steps
            check_stream(mc, mg, dtype)
        bi = ModelSpec((LSTMLayer(3, 4, R(2, 16, 3), R(2, 16, 4), R(2, 32), direction="bidirectional"),
                        DenseLayer(R(2, 8), R(2))))
        mc, mg = srnn.Model(bi, device="cpu"), cuda_model(bi, SEQ="gemm")
        assert not mg._cuda.gemm_seq
        check_run(mc, mg, "float32", what="bidirectional, SEQ=gemm")
    """,
    # The command line on the GPU path: `streamrnn stream --device cuda` prints what the CPU
    # engine's stream gives for the same frames (.npy and CSV), `streamrnn bench --device cuda`
    # times stream.step and pool.step (JSON) on it
    "cli": """
        import contextlib, io, json, tempfile
        from streamrnn.cli import main

        def cli(*argv):
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                rc = main(list(argv))
            return rc, buf.getvalue()

        loaded = []  # the models the commands load: on the GPU, not only numerically equal
        _load = srnn.load
        srnn.load = lambda *a, **k: loaded.append(_load(*a, **k)) or loaded[-1]
        d = tempfile.mkdtemp()
        path = os.path.join(d, "demo.srnn")
        assert cli("demo", "-o", path, "--input-size", "3", "--hidden-size", "6", "--output-size", "2",
                   "--seed", str(int(rng.integers(1 << 30))))[0] == 0
        mc = _load(path)
        X = rng.standard_normal((4, 3)).astype(np.float32)
        np.save(os.path.join(d, "x.npy"), X)
        want = mc.stream().push(X)
        rc, out = cli("stream", path, "-i", os.path.join(d, "x.npy"), "--device", "cuda")
        assert rc == 0, out
        close(np.loadtxt(io.StringIO(out), delimiter=",", ndmin=2), want, "float32", "stream --device cuda (npy)")
        with open(os.path.join(d, "x.csv"), "w") as f:
            f.write("\\n".join(",".join(repr(float(v)) for v in x) for x in X) + "\\n")
        rc, out = cli("stream", path, "-i", os.path.join(d, "x.csv"), "--device", "cuda", "--dtype", "float64")
        assert rc == 0, out
        want64 = _load(path, dtype="float64").stream().push(X.astype(np.float64))
        close(np.loadtxt(io.StringIO(out), delimiter=",", ndmin=2), want64, "float64", "stream --device cuda (csv)")
        for n in (1, 3):
            rc, out = cli("bench", path, "--device", "cuda", "--streams", str(n), "--steps", "3", "--warmup", "1",
                          "--json", "--no-progress")
            assert rc == 0, out
            res = json.loads(out)
            assert res["device"] == "cuda" and res["streams"] == n and res["steps"] == 3, res
            assert ("pool.step" if n > 1 else "stream.step") in res["method"], res
        assert [m.device for m in loaded] == ["cuda"] * 4, [m.device for m in loaded]
        srnn.load = _load
    """,
    # the CUDA pool's bookkeeping under any sequence of calls (tests/test_pool_stateful.py's
    # hypothesis machine, derandomized): open past capacity, close, reset, steps of 1-12 ids
    # (several row buckets), refused steps, push, set_state; every pooled stream against a lone
    # CPU stream after every call
    "pool_stateful": """
        import test_pool_stateful as tps
        I, H = 3, 4
        spec = ModelSpec((LSTMLayer(I, H, R(1, 4 * H, I), R(1, 4 * H, H), R(1, 8 * H), P=R(1, 3 * H)),
                          GRULayer(H, 3, R(1, 9, H), R(1, 9, 3), R(1, 18), linear_before_reset=True),
                          DenseLayer(R(2, 3), R(2))))
        mc, mg = both(spec, "float32")
        tps.run_machine(mg, oracle=mc, examples=20, steps=25)
    """,
    # ONNX models on the GPU (from_onnx(..., device="cuda")), which no other case loads: a chain
    # (LSTM + MatMul / Add head: the fused model) and a graph that is not a chain (a residual
    # Add: a graph model whose LSTM node runs on a CUDA model), against onnxruntime and the
    # CPU loads of the same file: run (ragged, with states, empty), stream, pool, refusals;
    # float32 and float64
    "onnx_cuda": """
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        from streamrnn.converters.graph_model import GraphModel
        I = H = 3
        O = 2

        def lstm_onnx(residual):
            f = lambda a, n: numpy_helper.from_array(a.astype(np.float32), n)
            inits = [f(R(1, 4 * H, I), "W"), f(R(1, 4 * H, H), "R"), f(R(1, 8 * H), "B"), f(R(H, O), "Wo"),
                     f(R(O), "bo"), numpy_helper.from_array(np.array([1], np.int64), "ax")]
            nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["Y"], hidden_size=H),
                     helper.make_node("Squeeze", ["Y", "ax"], ["ys"])]
            last = "ys"
            if residual:
                nodes.append(helper.make_node("Add", ["ys", "x"], ["r"]))
                last = "r"
            nodes += [helper.make_node("MatMul", [last, "Wo"], ["m"]), helper.make_node("Add", ["m", "bo"], ["y"])]
            g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B", O])], inits)
            return helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])

        so = ort.SessionOptions()
        so.log_severity_level = 3
        for residual in (False, True):
            proto = lstm_onnx(residual)
            sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
            X = rng.standard_normal((2, 4, I)).astype(np.float32)  # (B, T, I); the graph's layout is (T, B, I)
            want = sess.run(None, {"x": X.transpose(1, 0, 2)})[0].transpose(1, 0, 2)
            for dtype in ("float32", "float64"):
                what = f"residual={residual} {dtype}"
                mc = srnn.from_onnx(proto, dtype=dtype)
                mg = srnn.from_onnx(proto, dtype=dtype, device="cuda")
                assert isinstance(mg, GraphModel) == isinstance(mc, GraphModel) == residual, what
                assert mg.device == "cuda"
                cuda_part = mg.plan.rec[0].model if residual else mg
                assert cuda_part.device == "cuda" and cuda_part._cuda is not None, what
                close(mg.run(X), want, "float32", f"{what} run vs onnxruntime")
                s = mg.stream()
                close(np.stack([s.step(x) for x in X[1]]), want[1], "float32", f"{what} stream vs onnxruntime")
                p = mg.pool(3)
                ids = p.open(2)
                close(np.stack([p.step(ids, X[:, t]) for t in range(4)], 1), want, "float32", f"{what} pool vs onnxruntime")
                check_run(mc, mg, dtype, what=what)
                check_stream(mc, mg, dtype)
                check_pool(mc, mg, dtype)
            # onnxruntime's providers list picks the CUDA engine for the session's recurrent nodes
            from streamrnn.engine.cuda import CudaEngine
            calls = []
            run0 = CudaEngine.run
            CudaEngine.run = lambda self, *a, **k: calls.append(1) or run0(self, *a, **k)
            try:
                sg = srnn.InferenceSession(proto, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
                assert sg.get_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
                close(sg.run(None, {"x": X.transpose(1, 0, 2)})[0], want.transpose(1, 0, 2), "float32",
                      f"residual={residual} InferenceSession on CUDA vs onnxruntime")
                assert calls, "the session's LSTM did not run on the CUDA engine"
            finally:
                CudaEngine.run = run0
        # a step export: x (B, I) whose rows are streams (the LSTM fed x[None]), h / c in and out,
        # a residual; on the CUDA engine (the general path, a frame at a time) as on the CPU
        f = lambda a, n: numpy_helper.from_array(a.astype(np.float32), n)
        inits = [f(R(1, 4 * H, I), "W"), f(R(1, 4 * H, H), "R"), f(R(1, 8 * H), "B"), f(R(H, O), "Wo"),
                 numpy_helper.from_array(np.array([0], np.int64), "a0"), numpy_helper.from_array(np.array([0, 1], np.int64), "a01")]
        nodes = [helper.make_node("Unsqueeze", ["x", "a0"], ["xs"]),
                 helper.make_node("LSTM", ["xs", "W", "R", "B", "", "h", "c"], ["Y", "hn", "cn"], hidden_size=H),
                 helper.make_node("Squeeze", ["Y", "a01"], ["ys"]), helper.make_node("Add", ["ys", "x"], ["r"]),
                 helper.make_node("MatMul", ["r", "Wo"], ["y"])]  # residual: a graph model, not a chain
        vi = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
        g = helper.make_graph(nodes, "step", [vi("x", ["b", I]), vi("h", [1, "b", H]), vi("c", [1, "b", H])],
                              [vi("y", ["b", O]), vi("hn", [1, "b", H]), vi("cn", [1, "b", H])], inits)
        proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        for dtype in ("float32", "float64"):
            mc, mg = srnn.from_onnx(proto, dtype=dtype), srnn.from_onnx(proto, dtype=dtype, device="cuda")
            assert mg.plan.frame_rows and mg.plan.rec[0].model._cuda is not None and mg.frame_step["planned"] is False
            check_run(mc, mg, dtype, what=f"step export {dtype}")
            check_stream(mc, mg, dtype)
            check_pool(mc, mg, dtype)
    """,
    # The persistent step kernel (STREAMRNN_CUDA_PERSIST=1, engine/persist.py): one-row steps
    # served by one launch that runs every layer's row-tile body over that layer's grid (in the
    # simulator one block runs them all in turn); steps of several rows, state access and push
    # stop it and take the other path. Every layer kind the one-row step has: LSTM (projection,
    # peepholes) + Dense; GRU (both variants) + Dense + Softmax; RNN + activation + Dense +
    # LogSoftmax; a recurrent last layer (the commit kernel); float32 and float64.
    "persist": """
        os.environ["STREAMRNN_CUDA_PERSIST"] = "1"
        from streamrnn.engine import persist as ps
        specs = [
            ("float32", ModelSpec((LSTMLayer(3, 8, R(1, 32, 3), R(1, 32, 5), R(1, 64), P=R(1, 24),
                                             proj=R(1, 5, 8)), DenseLayer(R(2, 5), R(2))))),
            ("float64", ModelSpec((GRULayer(3, 8, R(1, 24, 3), R(1, 24, 8), R(1, 48), linear_before_reset=True),
                                   GRULayer(8, 5, R(1, 15, 8), R(1, 15, 5), R(1, 30)),
                                   DenseLayer(R(4, 5), R(4)), SoftmaxLayer(4)))),
            ("float32", ModelSpec((RNNLayer(4, 8, R(1, 8, 4), R(1, 8, 8), R(1, 16)),
                                   ActivationLayer(8, Activation("LeakyRelu", 0.2)),
                                   DenseLayer(R(3, 8), None), SoftmaxLayer(3, log=True)))),
            ("float64", ModelSpec((GRULayer(2, 7, R(1, 21, 2), R(1, 21, 7), R(1, 42)),))),
        ]
        for dtype, spec in specs:
            mc, mg = both(spec, dtype)
            I = mc.input_size
            sc, sg = mc.stream(), mg.stream()
            srv = sg._cuda.core.server
            assert srv is not None, "no persistent kernel"
            n0 = srv.launches  # the self-test's
            for t in range(3):
                x = rng.standard_normal(I).astype(dtype)
                close(sg.step(x), sc.step(x), dtype, f"persistent stream.step {t}")
            assert srv.launches == n0 + 3 and srv.seq >= 3  # one simulated launch per command
            close(sg.state.data, sc.state.data, dtype, "state after persistent steps")
            X = rng.standard_normal((2, I)).astype(dtype)
            close(sg.push(X), sc.push(X), dtype, "push after persistent steps")
            x = rng.standard_normal(I).astype(dtype)
            close(sg.step(x), sc.step(x), dtype, "persistent step after push")
            # a pool: one-row steps (persistent) between steps of several rows (the other path)
            pc, pg = mc.pool(4), mg.pool(4)
            ic, ig = pc.open(3), pg.open(3)
            assert pg._cuda.core.server is not None
            for s, ids in enumerate(([1], [0, 2, 1], [2], [0], [1, 0])):
                X = rng.standard_normal((len(ids), I)).astype(dtype)
                close(pg.step(ig[ids], X), pc.step(ic[ids], X), dtype, f"pool step {s} {ids}")
            pg.reset([0]); pc.reset([0])
            pg.set_state(2, pc.get_state(1)); pc.set_state(2, pc.get_state(1))
            for s in range(2):
                X = rng.standard_normal((1, I)).astype(dtype)
                close(pg.step(ig[[s * 2]], X), pc.step(ic[[s * 2]], X), dtype, f"pool step after reset {s}")
            for sid in range(3):
                close(pg.get_state(sid).data, pc.get_state(sid).data, dtype, f"pool state {sid}")
            # a refused one-row call changes nothing and sends no command
            seq = pg._cuda.core.server.seq
            bad = np.full((1, I), np.nan, dtype)
            refused(srnn.NonFiniteError, lambda: pg.step(ig[[0]], bad))
            assert pg._cuda.core.server.seq == seq
        # a kernel that does not answer: the step is served by the other path (no state changed
        # by the lost command), the core drops the kernel; a pool whose self-test gets no answer
        # never uses one
        pc2, pg2 = mc.pool(2), mg.pool(2)
        ic2, ig2 = pc2.open(2), pg2.open(2)
        core = pg2._cuda.core
        assert core.server is not None
        orig = ps.Server._launch
        ps.Server._launch = lambda self, once: None
        try:
            for t in range(2):
                X = rng.standard_normal((1, I)).astype(dtype)
                close(pg2.step(ig2[[1]], X), pc2.step(ic2[[1]], X), dtype, f"step after a lost command {t}")
            assert core.server is None
            close(pg2.get_state(1).data, pc2.get_state(1).data, dtype, "state after a lost command")
            assert mg.pool(1)._cuda.core.server is None
        finally:
            ps.Server._launch = orig
        # STREAMRNN_CUDA_PERSIST=onchip: LSTM layers without projection keep their weights in
        # the kernel's shared memory (make_lstm_onchip); a projection LSTM stays a row-tile body
        os.environ["STREAMRNN_CUDA_PERSIST"] = "onchip"
        for dtype, spec, n_on in [
            ("float32", ModelSpec((LSTMLayer(3, 8, R(1, 32, 3), R(1, 32, 8), R(1, 64)),
                                   LSTMLayer(8, 6, R(1, 24, 8), R(1, 24, 6), R(1, 48), P=R(1, 18), clip=1.5),
                                   DenseLayer(R(2, 6), R(2)))), 2),
            ("float64", ModelSpec((LSTMLayer(4, 5, R(1, 20, 4), R(1, 20, 5), R(1, 40), input_forget=True),)), 1),
            ("float32", specs[0][1], 0),
        ]:
            mc, mg = both(spec, dtype)
            I = mc.input_size
            sc, sg = mc.stream(), mg.stream()
            srv = sg._cuda.core.server
            assert srv is not None and srv.onchip == n_on, (srv, n_on)
            for t in range(3):
                x = rng.standard_normal(I).astype(dtype)
                close(sg.step(x), sc.step(x), dtype, f"on-chip stream.step {t}")
            close(sg.state.data, sc.state.data, dtype, "on-chip state")
            pc, pg = mc.pool(3), mg.pool(3)
            ic, ig = pc.open(3), pg.open(3)
            for s, ids in enumerate(([2], [0, 2], [2], [1])):
                X = rng.standard_normal((len(ids), I)).astype(dtype)
                close(pg.step(ig[ids], X), pc.step(ic[ids], X), dtype, f"on-chip pool step {s}")
        os.environ["STREAMRNN_CUDA_PERSIST"] = "1"
        # the device-side phase stamps of a benchmark kernel (the simulator's clock reads 0:
        # only the count of steps is checked) and the protocol alone (no layer)
        core = mg.pool(1)._cuda.core
        core.quiesce()
        ops = mg._cuda.one_row_ops()
        st = ps.Server(core, ops, 50.0, stamps=True)
        for _ in range(3):
            st.step(1)
        ph = st.phases()
        assert ph["steps"] == 3 and set(ph) == {"steps", "staged", "all done"} | {
            f"layer {k} done" for k in range(len(ops) - 1)}, ph
        bare = ps.Server(core, ops, 50.0, layers=0)
        bare.step(1)
        assert bare.seq == 1 and st.phases()["steps"] == 3
        # bad settings are refused, naming the variable
        for var, bad in (("PERSIST", "maybe"), ("PERSIST_IDLE_MS", "0")):
            refused(srnn.StreamRNNError, lambda: cuda_model(specs[0][1], **{var: bad}), "STREAMRNN_CUDA_" + var)
        assert os.environ["STREAMRNN_CUDA_PERSIST"] == "1"  # restored
    """,
    # The host half of the persistent step kernel's protocol (engine/persist.py: the fused
    # host step ``row_step``, Server.step / _wait, the fallback), which the simulator's one
    # launch per command never runs: a thread (njit, GIL released) stands in for the resident
    # kernel. It serves a command by writing f(frame, command) to the mapped output row, and
    # can answer late, exit when idle, exit before serving, or never answer.
    "persist_host": """
        os.environ["STREAMRNN_CUDA_PERSIST"] = "1"
        import threading, time
        from numba import njit
        from streamrnn.engine import persist as ps
        from streamrnn.engine.hostsync import load_acquire, store_release

        @njit(nogil=True)
        def device(ctl, ack, h64, hf, off, I, hout, delay, serve_max, skip):
            last = ack[0]
            served = 0
            store_release(ack, 1, 2)  # resident
            while True:
                v = load_acquire(ctl, 0)
                if v == -1:
                    break
                if v > last:
                    if skip:  # leaves before it serves this command
                        break
                    for _ in range(delay):  # answers late (loads the compiler keeps)
                        load_acquire(ctl, 1)
                    if serve_max == 0:  # never answers
                        continue
                    ok = ctl[1] == 1  # one row
                    tot = 1000.0 * h64[0, 0]  # the stream id staged with it
                    for k in range(I):
                        tot += hf[0, off + k]
                    for k in range(hout.shape[1]):
                        hout[0, k] = (tot * (k + 1) + v) if ok else np.nan
                    last = v
                    store_release(ack, 0, v)
                    served += 1
                    if served == serve_max:
                        break  # idle exit
            store_release(ack, 1, 0)

        class Sync:  # the kernel's stream: synchronize() waits for the thread
            t = None
            def synchronize(self):
                if self.t is not None:
                    self.t.join()

        spec = ModelSpec((LSTMLayer(3, 8, R(1, 32, 3), R(1, 32, 8), R(1, 64)), DenseLayer(R(2, 8), R(2))))
        mc, mg = both(spec, "float32")
        sg = mg.stream()
        core = sg._cuda.core
        srv = core.server
        assert srv is not None and sg._cuda._row is not None
        plan = {"delay": 0, "serve_max": -1, "skip": 0}

        def launch(self, once):  # Server._launch with the thread for the kernel
            self.ack_h[1] = 1
            self.ack_h[0] = self.seq
            c = self.core
            t = threading.Thread(target=device, args=(self.ctl_h, self.ack_h, c.h64, c.hf, c.c0, 3,
                                                      c.hout, plan["delay"], plan["serve_max"], plan["skip"]),
                                 daemon=True)
            plan["skip"] = 0
            self.stream.t = t
            t.start()
            self.launches += 1
            self.running = True

        def patch(srv):
            srv.sim = False
            srv.START_TIMEOUT = 5.0  # a loaded CI machine may start a thread late
            srv.stream = Sync()
            srv._launch = launch.__get__(srv)

        c = np.array([-1, 0], np.int64)  # compile it here: a launch must become resident in 20 ms
        device(c, np.zeros(2, np.int64), core.h64, core.hf, core.c0, 3, core.hout, 0, -1, 0)
        patch(srv)
        O, I = 2, 3

        def step(what, launches):
            x = rng.standard_normal(I).astype(np.float32)
            s = srv.seq + 1
            y = sg.step(x)
            want = np.array([x.sum(dtype=np.float32) * (k + 1) + s for k in range(O)], np.float32)
            close(y, want, "float32", what)
            assert srv.seq == s and srv.launches == launches, (what, srv.seq, s, srv.launches, launches)

        n0 = srv.launches
        step("first step: launches the kernel", n0 + 1)
        for t in range(5):  # served by the fused step alone: no launch
            step(f"served {t}", n0 + 1)
        out = np.empty(O, np.float32)
        x = rng.standard_normal(I).astype(np.float32)
        assert sg.step(x, out=out) is out
        # an answer that takes as long as a real step (~6 µs here) is awaited by the fused
        # call itself: it spins for SPIN_CYCLES, not for a count of ~1 ns polls (4096 of them
        # gave up after ~2 µs). A budget of seconds: on a loaded CI machine the stand-in
        # thread may wait for a core for milliseconds
        waits = []
        wait0 = srv._wait
        srv._wait = lambda s_: (waits.append(s_), wait0(s_))[1]
        srv.SPIN_CYCLES = 1 << 33
        srv.bind()
        srv.stop()
        plan["delay"] = 50000
        step("an answer after ~6 µs", n0 + 2)  # (launched by Server.step: the Python spin)
        waits.clear()
        step("again", n0 + 2)
        step("and again", n0 + 2)
        assert waits == [], waits
        # late answers: the fused step hands the wait to Server._wait
        srv.SPIN, srv.SPIN_CYCLES = 4, 1000
        srv.bind()
        srv.stop()
        plan["delay"] = 20000
        step("late answer", n0 + 3)  # (relaunched by Server.step)
        waits.clear()
        step("late answer again", n0 + 3)  # the fused call gives up, Server._wait gets it
        assert waits == [srv.seq], waits
        # idle exit after two commands: the next step relaunches
        srv.stop()
        plan.update(delay=0, serve_max=2)
        step("after stop", n0 + 4)
        step("second", n0 + 4)
        srv.stream.synchronize()  # it has left
        plan["serve_max"] = -1
        step("relaunched after the idle exit", n0 + 5)
        # it leaves after the command was sent, before serving it: _wait relaunches
        srv.stop()
        plan["skip"] = 1
        # the fused step finds no kernel: Server.step launches one, which leaves; relaunched
        step("first launch leaves at once", n0 + 7)
        srv.stop()
        plan["skip"] = 1
        srv.running = True  # as if the kernel were serving: the fused step sends the command
        srv.ack_h[1] = 2
        srv.stream.t = None
        seq = srv.seq
        t0 = threading.Thread(target=device, args=(srv.ctl_h, srv.ack_h, core.h64, core.hf, core.c0, 3,
                                                   core.hout, 0, -1, 1), daemon=True)
        srv.stream.t = t0
        t0.start()
        plan["skip"] = 0
        step("sent, then the kernel left: relaunched", n0 + 8)
        # refused frames send nothing and change nothing
        for bad, err in ((np.array([0.0, np.nan, 1.0], np.float32), srnn.NonFiniteError),
                         (np.zeros(4, np.float32), srnn.StreamRNNError)):
            ctl0 = int(srv.ctl_h[0])
            refused(err, lambda: sg.step(bad), "x")
            assert srv.seq == ctl0 == int(srv.ctl_h[0])
        # another dtype and a list are converted (the general path), then served
        x64 = rng.standard_normal(I)
        s = srv.seq + 1
        close(sg.step(x64), [np.float32(x64).sum(dtype=np.float32) * (k + 1) + s for k in range(O)], "float32", "float64 x")
        s += 1
        close(sg.step([1.0, 2.0, 3.0]), [6.0 * (k + 1) + s for k in range(O)], "float32", "list x")
        # a pool's one-row steps: the stream id staged with the frame; refused ids send nothing
        pg = mg.pool(4)
        ig = pg.open(3)
        pg.close(ig[1])
        ps_ = pg._cuda.core.server
        assert ps_ is not None and pg._cuda._row is not None
        patch(ps_)
        for t, sid in enumerate((0, 2, 2, 0)):
            X = rng.standard_normal((1, I)).astype(np.float32)
            s = ps_.seq + 1
            want = [(1000.0 * ig[sid] + X.sum(dtype=np.float32)) * (k + 1) + s for k in range(O)]
            close(pg.step(ig[[sid]], X), [want], "float32", f"pool one-row step {t}")
            assert ps_.seq == s and ps_.launches == 2, (ps_.seq, s, ps_.launches)
        for ids, err in (([ig[1]], srnn.StreamIdError), ([7], srnn.StreamIdError), ([-1], srnn.StreamIdError)):
            refused(err, lambda: pg.step(np.array(ids), rng.standard_normal((1, I))), "ids")
            assert ps_.seq == s == int(ps_.ctl_h[0])
        X = rng.standard_normal((1, I))  # float64 frames for a float32 pool: converted first
        s += 1
        want = [(1000.0 * ig[2] + X.astype(np.float32).sum(dtype=np.float32)) * (k + 1) + s for k in range(O)]
        close(pg.step(ig[[2]], X), [want], "float32", "pool one-row step, float64 frames")
        ps_.stop()
        # a kernel that never answers: the step is served by numba's launches instead, with the
        # state the lost command never touched (the thread wrote no state: zero), and the core
        # drops the kernel
        srv.stop()
        plan["serve_max"] = 0
        srv.TIMEOUT = 0.2
        sc = mc.stream()
        for t in range(2):
            x = rng.standard_normal(I).astype(np.float32)
            close(sg.step(x), sc.step(x), "float32", f"after a lost command {t}")
        assert core.server is None and sg._cuda._row is None
        srv.ctl_h[0] = -1
        srv.stream.synchronize()
    """,
}


_EPILOGUE = "\nassert simrace.accesses() > 0, 'the race checker recorded no access'\nsimrace.check()\nprint('OK')\n"


def _start(code: str, sim: bool = True) -> subprocess.Popen:
    env = dict(os.environ)
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _finish(p: subprocess.Popen, timeout: int = 600):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
    return p.returncode, out, err


#: simulator cases run at once. Each is one process, busy on one core at a time in effect (the
#: simulator's threads take turns); more processes than cores only add switching, and on a
#: clean clone each of them compiled the CPU engine on its own before the first one had
#: cached it (all 24 at once on 2 cores: 872 s; 2 at a time: see bench/NOTES.md entry 107)
SIM_JOBS = max(1, int(os.environ.get("STREAMRNN_SIM_JOBS", "0")) or os.cpu_count() or 2)


@pytest.fixture(scope="module")
def sim_runs():
    """Every simulator case, SIM_JOBS at a time in worker threads, the slowest first; each test
    waits for its own. Cases not started when the module ends are cancelled, running ones
    killed."""
    from concurrent.futures import ThreadPoolExecutor

    live, stop = {}, []

    def run(case):
        if stop:
            return -9, "", "cancelled"
        p = live[case] = _start(_PRELUDE + textwrap.dedent(_CASES[case]) + _EPILOGUE)
        return _finish(p, 900)

    order = sorted(_CASES, key=lambda c: (_SLOW.index(c) if c in _SLOW else len(_SLOW), c))
    pool = ThreadPoolExecutor(SIM_JOBS)
    futures = {case: pool.submit(run, case) for case in order}
    yield futures
    stop.append(True)
    for p in list(live.values()):
        if p.poll() is None:
            p.kill()
    pool.shutdown(wait=True, cancel_futures=True)


#: the cases that take longest, longest first (seconds each on a 2-vCPU VM, 2 at a time, warm
#: cache: 87, 53, 48, 37, 35, 34, 26, 23, 23, 21): started first, so that no long case is left
#: running alone at the end
_SLOW = ("gru_gemm", "driver_paths", "lstm_seq_grid", "gru_seq_grid", "last_layer", "chunks", "seq_gemm",
         "rnn_gemm_grid", "gemm_vec", "seq_block")


@pytest.mark.parametrize("case", sorted(_CASES))
def test_cuda_matches_cpu_on_simulator(sim_runs, case):
    rc, out, err = sim_runs[case].result()
    assert rc == 0 and out.strip().endswith("OK"), out[-3000:] + err[-6000:]


def test_cuda_without_gpu_raises():
    code = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, %r)
        import numpy as np
        from numba import cuda
        import streamrnn as srnn
        from streamrnn.spec import DenseLayer, ModelSpec
        if cuda.is_available():
            print("SKIP: a GPU is present")
            raise SystemExit(0)
        spec = ModelSpec((DenseLayer(np.ones((2, 3))),))
        try:
            srnn.Model(spec, device="cuda")
        except srnn.StreamRNNError as e:
            assert "device: expected a CUDA GPU for device='cuda', got none" in str(e), e
        else:
            raise AssertionError("no error without a GPU")
        # the command line: a usage error (exit 2) that names the device, for each command
        import contextlib, io, tempfile
        from streamrnn.cli import main
        path = tempfile.mkdtemp() + "/demo.srnn"
        assert main(["demo", "-o", path]) == 0
        np.save(path + ".npy", np.ones((2, 8), np.float32))
        for argv in (["stream", path, "-i", path + ".npy", "--device", "cuda"],
                     ["bench", path, "--device", "cuda", "--steps", "2"]):
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv)
            assert rc == 2 and "device: expected a CUDA GPU" in err.getvalue(), (argv, rc, err.getvalue())
        print("OK")
        """
        % ROOT
    )
    rc, out, err = _finish(_start(code, sim=False))
    assert rc == 0, out[-3000:] + err[-6000:]
    if "SKIP" in out:
        pytest.skip("a GPU is present")
