"""Every CPU kernel path (run, step, push, pool) against the numpy reference (ONNX semantics)."""
from __future__ import annotations

import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.reference import run_reference

from conftest import assert_close, rand_layer, rand_spec


def reference(spec, X, dtype, **kw):
    """The float64 oracle on the weights and inputs as the model sees them (rounded to dtype)."""
    return run_reference(spec.astype(dtype), np.asarray(X).astype(dtype), **kw)

SEEDS = range(12)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("seed", range(4))
def test_single_layer_run_matches_reference(kind, direction, seed, dtype):
    rng = np.random.default_rng(1000 * seed + hash((kind, direction)) % 997)
    I, H = int(rng.integers(1, 6)), int(rng.integers(1, 9))
    spec = srnn.ModelSpec((rand_layer(rng, kind, I, H, direction=direction, exotic=True),))
    model = srnn.Model(spec, dtype=dtype)
    B, T = 3, 7
    X = rng.standard_normal((B, T, I))
    lengths = np.array([T, 0, int(rng.integers(1, T))])
    st0 = rng.standard_normal((B, spec.state_size())) * 0.5
    Y, st = model.run(X, state=st0, lengths=lengths, return_state=True)
    Yr, str_ = reference(spec, X, dtype, lengths=lengths, state=st0.astype(dtype))
    assert Y.dtype == dtype and Y.shape == (B, T, spec.output_size)
    assert_close(Y, Yr, dtype)
    assert_close(st.data, str_, dtype)
    assert np.all(Y[1] == 0) and np.all(Y[2, lengths[2]:] == 0)  # exactly zero past a length
    assert_close(st.data[1], st0[1], dtype)  # length 0 keeps the initial state


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_rec", [1, 2, 3])
def test_stacks_run_step_push_pool_match_reference(seed, n_rec, dtype):
    rng = np.random.default_rng(seed * 31 + n_rec)
    spec = rand_spec(rng, n_rec=n_rec)
    model = srnn.Model(spec, dtype=dtype)
    T = 9
    X = rng.standard_normal((2, T, spec.input_size))
    Yr, str_ = reference(spec, X, dtype)
    # offline, batched
    Y, st = model.run(X, return_state=True)
    assert_close(Y, Yr, dtype)
    assert_close(st.data, str_, dtype)
    # one stream, frame by frame, and into a caller's buffer
    s = model.stream()
    out = np.empty(spec.output_size, dtype)
    for t in range(T):
        y = s.step(X[0, t])
        assert_close(y, Yr[0, t], dtype)
        s2 = s.state
        assert y is not out
    assert_close(s.state.data, str_[0], dtype)
    s.reset()
    for t in range(T):
        r = s.step(X[0, t], out=out)
        assert r is out
        assert_close(out, Yr[0, t], dtype)
    # chunked push in random chunkings
    s.reset()
    cuts = np.sort(rng.choice(np.arange(1, T), size=2, replace=False))
    parts = [s.push(c) for c in np.split(X[0], cuts)]
    assert_close(np.concatenate(parts), Yr[0], dtype)
    assert_close(s2.data, str_[0], dtype)
    # pool, two streams stepped together
    pool = model.pool(capacity=4)
    ids = pool.open(2)
    Yp = np.stack([pool.step(ids, X[:, t]) for t in range(T)], axis=1)
    assert_close(Yp, Yr, dtype)
    assert_close(pool.get_state(ids[1]).data, str_[1], dtype)
    # pool.push on a chunk
    sid = pool.open()
    assert_close(pool.push(sid, X[1]), Yr[1], dtype)


@pytest.mark.parametrize("seed", range(6))
def test_run_2d_input_and_state_roundtrip(seed, dtype):
    rng = np.random.default_rng(seed)
    spec = rand_spec(rng, n_rec=2, exotic=False)
    model = srnn.Model(spec, dtype=dtype)
    X = rng.standard_normal((8, spec.input_size))
    Y1, st1 = model.run(X[:5], return_state=True)
    assert Y1.shape == (5, spec.output_size) and st1.batch is None
    Y2 = model.run(X[5:], state=st1)
    Yall = model.run(X)
    assert_close(np.concatenate([Y1, Y2]), Yall, dtype)
    # a one-stream state broadcasts over a batch
    Yb = model.run(np.stack([X[5:], X[5:]]), state=st1)
    assert_close(Yb[1], Y2, dtype)


def test_float_inputs_of_any_dtype_are_cast(dtype):
    rng = np.random.default_rng(5)
    spec = rand_spec(rng, n_rec=1, exotic=False)
    model = srnn.Model(spec, dtype=dtype)
    X = rng.standard_normal((4, spec.input_size))
    ref = model.run(X)
    for src in (np.float16, np.float32, np.float64):
        Xs = X.astype(src)
        s = model.stream()
        y = np.stack([s.step(x) for x in Xs])
        assert y.dtype == dtype
        assert_close(y, model.run(Xs.astype(np.float64)), dtype)
    assert model.run(X.astype(np.float32)).dtype == dtype
    # non-contiguous input
    s = model.stream()
    Xn = np.asfortranarray(X)
    assert_close(np.stack([s.step(Xn[t]) for t in range(4)]), ref, dtype)


def test_lstm_projection_and_peepholes_exercised():
    """Guard: the random generator above really produces the rare options."""
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        layer = rand_layer(rng, "lstm", 3, 5, exotic=True)
        seen |= {k for k, v in [("P", layer.P is not None), ("proj", layer.proj is not None),
                                ("if", layer.input_forget), ("clip", layer.clip is not None)] if v}
    assert seen == {"P", "proj", "if", "clip"}
