"""The column-panel weight copies (float32, engine/pack.py) against the numpy reference.

The random specs of the other tests are small (H < 9), below one panel (128 columns; 16 for a
Dense layer): these sizes make every kernel read whole panels AND a remainder of columns from
the row-major copy, in the step, push, pool and run (recurrence) paths.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.engine.pack import K_PAN, PANEL_MAX_BYTES, pack
from streamrnn.reference import run_reference

from conftest import assert_close as _assert_close
from conftest import rand_act, rand_layer


def assert_close(actual, ref):
    """rtol 1e-5, and the absolute floor scaled to the outputs: with fan-ins of 100+ float32
    terms, values near zero carry ~1e-6 absolute rounding error in any float32 engine (measured
    the same with and without panels, and in the axpy form)."""
    _assert_close(actual, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def _spec(rng, kinds, I, sizes, O, direction="forward"):
    layers, size = [], I
    for kind, H in zip(kinds, sizes):
        layer = rand_layer(rng, kind, size, H, direction=direction, exotic=True, scale=0.15)
        layers.append(layer)
        size = layer.output_size
    layers.append(srnn.DenseLayer(rng.standard_normal((O, size)) * 0.2, rng.standard_normal(O) * 0.1,
                                  rand_act(rng, bounded=True) if rng.random() < 0.5 else None))
    return srnn.ModelSpec(tuple(layers))


CASES = [  # (kinds, input size, hidden sizes, head outputs): 4H / 3H / H columns = panels + rest
    (("lstm",), 130, (40,), 40),          # 160 cols: 1 panel + 32; head 2 panels + 8
    (("gru",), 20, (90,), 16),            # z,r 180 cols: 1 panel + 52; lbr: 270 = 2 + 14
    (("rnn",), 7, (130,), 33),            # 130 cols: 1 panel + 2
    (("lstm", "gru", "rnn"), 129, (64, 50, 128), 17),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("seed", range(3))
def test_panel_paths_match_reference(case, seed):
    kinds, I, sizes, O = CASES[case]
    rng = np.random.default_rng(100 * case + seed)
    spec = _spec(rng, kinds, I, sizes, O)
    model = srnn.Model(spec, dtype=np.float32)
    meta = model._packed.meta
    for li, layer in enumerate(spec.layers):  # guard: the panels really exist here
        if isinstance(layer, srnn.DenseLayer):
            assert meta[li, K_PAN] >= 0
        elif 3 * layer.hidden_size >= 128 or isinstance(layer, srnn.LSTMLayer):
            assert meta[li, K_PAN + 1] >= 0, (li, layer)
    T = 6
    X = rng.standard_normal((2, T, I))
    Yr, str_ = run_reference(spec.astype(np.float32), X.astype(np.float32))
    Y, st = model.run(X, return_state=True)
    assert_close(Y, Yr)
    assert_close(st.data, str_)
    s = model.stream()
    out = np.empty(O, np.float32)
    for t in range(T):
        assert_close(s.step(X[0, t], out=out), Yr[0, t])
    s.reset()
    assert_close(np.concatenate([s.push(X[0, :2]), s.push(X[0, 2:])]), Yr[0])
    pool = model.pool(capacity=3)
    ids = pool.open(2)[::-1]
    Yp = np.stack([pool.step(ids, X[::-1, t]) for t in range(T)], axis=1)
    assert_close(Yp[::-1], Yr)


def test_panels_bidirectional_run():
    rng = np.random.default_rng(7)
    spec = _spec(rng, ("lstm", "gru"), 33, (40, 45), 20, direction="bidirectional")
    model = srnn.Model(spec, dtype=np.float32)
    assert (model._packed.meta[0, K_PAN : K_PAN + 4] >= 0).all()
    X = rng.standard_normal((3, 5, 33))
    lengths = np.array([5, 2, 4])
    Yr, _ = run_reference(spec.astype(np.float32), X.astype(np.float32), lengths=lengths)
    assert_close(model.run(X, lengths=lengths), Yr)


def test_no_panels_for_float64_bfloat16_or_large_matrices():
    rng = np.random.default_rng(3)
    spec = _spec(rng, ("lstm",), 16, (64,), 16)
    assert (pack(spec, np.float64).meta[:, K_PAN : K_PAN + 4] == -1).all()
    assert (pack(spec, np.float32, weights="bfloat16").meta[:, K_PAN : K_PAN + 4] == -1).all()
    H = 800  # Rt: 800 x 3200 float32 = 10 MB > PANEL_MAX_BYTES
    assert H * 4 * H * 4 > PANEL_MAX_BYTES
    big = srnn.ModelSpec((srnn.LSTMLayer(4, H, rng.standard_normal((1, 4 * H, 4)), rng.standard_normal((1, 4 * H, H))),))
    m = pack(big, np.float32).meta
    assert m[0, K_PAN] >= 0 and m[0, K_PAN + 1] == -1  # Wt (4 x 1200) small, Rt not


@pytest.mark.parametrize("chunk", [None, 12])  # 12: several chunks per thread, a short last one
@pytest.mark.parametrize("B", [41, 44])  # rows past the 6-row tiles: 4 + 1 (41), 2 (44)
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("case", range(len(CASES) + 1))
def test_pool_gemm_on_panels_matches_reference(case, parallel, B, chunk, monkeypatch, use_team):
    """pool.step with >= GEMM_MIN_STREAMS streams (the fused panel GEMM: 6-row tiles, single
    rows, columns past the last panel, serially or on the spinning team, one or several row
    chunks) in arbitrary id order; and a model whose Rt is too large for the model's panels
    (the pool makes its own)."""
    from streamrnn.engine.cpu import BatchedStep

    if chunk:
        monkeypatch.setattr(BatchedStep, "CHUNK", chunk)
    if parallel:
        use_team(1)
    else:
        monkeypatch.setattr(BatchedStep, "TEAM_MIN", 1 << 62)
    rng = np.random.default_rng(50 + case)
    if case < len(CASES):
        kinds, I, sizes, O = CASES[case]
        spec = _spec(rng, kinds, I, sizes, O)
    else:  # Rt 800 x 3200 > PANEL_MAX_BYTES: the pool makes its own panels
        I, O = 5, 16
        spec = _spec(rng, ("lstm",), I, (800,), O)
        assert srnn.Model(spec, dtype=np.float32)._packed.meta[0, K_PAN + 1] == -1
    model = srnn.Model(spec, dtype=np.float32)
    T = 3
    X = rng.standard_normal((B, T, I))
    Yr, str_ = run_reference(spec.astype(np.float32), X.astype(np.float32))
    pool = model.pool(capacity=B + 5)
    ids = pool.open(B)
    perm = rng.permutation(B)
    for t in range(T):
        Y = pool.step(ids[perm], X[perm, t])
        assert_close(Y, Yr[perm, t])
    assert_close(np.stack([pool.get_state(i).data for i in ids]), str_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind,I,H,direction", [
    ("lstm", 300, 301, "forward"),  # Wt and Rt 1.4 MB: float32 panels (float64: rows) back to front
    ("lstm", 20, 301, "bidirectional"),
    ("gru", 20, 350, "forward"),
    ("rnn", 20, 603, "forward"),
    ("lstm", 20, 805, "forward"),  # Rt 10 MB > PANEL_MAX_BYTES: rows back to front in float32 too
])
def test_matrices_larger_than_l2_alternate_row_order(kind, I, H, direction, dtype):
    """Recurrent (and input) matrices over 1 MiB: every other step reads them back to front
    (cache reuse between steps); run, push and step, over odd and even steps, with and without
    lengths, match the reference. H % 4 != 0 (a short row block); 4H % 128 != 0 for the GRU and
    RNN (columns past the last panel)."""
    from conftest import assert_close as close

    rng = np.random.default_rng(90)
    layer = rand_layer(rng, kind, I, H, direction=direction, exotic=False, scale=0.05)
    if kind == "gru":  # the reversed order applies with linear_before_reset only
        layer = dataclasses.replace(layer, linear_before_reset=True)
    spec = srnn.ModelSpec((layer, srnn.DenseLayer(rng.standard_normal((7, layer.output_size)) * 0.1)))
    model = srnn.Model(spec, dtype=dtype)
    T = 7
    X = rng.standard_normal((2, T, I))
    lengths = np.array([T, T - 2])
    Yr, str_ = run_reference(spec.astype(dtype), X.astype(dtype), lengths=lengths)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    check = (lambda a, r: assert_close(a, r)) if dtype == np.float32 else (lambda a, r: close(a, r, rtol=rtol))
    Y, st = model.run(X, lengths=lengths, return_state=True)
    check(Y[0], Yr[0])
    check(Y[1, : T - 2], Yr[1, : T - 2])
    check(st.data, str_)
    if direction == "forward":
        s = model.stream()
        for t in range(T):
            check(s.step(X[0, t]), Yr[0, t])
        s.reset()
        check(np.concatenate([s.push(X[0, :3]), s.push(X[0, 3:])]), Yr[0])


def test_bfloat16_matrices_larger_than_l2_alternate_row_order():
    """As above for bfloat16 weights (Wt and Rt of 363 x 1452 bfloat16 > 1 MiB): step and push
    against the reference on the rounded weights."""
    from streamrnn.engine.pack import to_bfloat16

    rng = np.random.default_rng(91)
    H = I = 363
    layer = rand_layer(rng, "lstm", I, H, direction="forward", exotic=False, scale=0.05)
    dense = srnn.DenseLayer(rng.standard_normal((5, H)) * 0.1)
    model = srnn.Model(srnn.ModelSpec((layer, dense)), weights="bfloat16")
    rounded = srnn.ModelSpec((srnn.LSTMLayer(I, H, to_bfloat16(layer.W), to_bfloat16(layer.R), layer.B), dense))
    T = 7
    X = rng.standard_normal((1, T, I))
    Yr, _ = run_reference(rounded.astype(np.float32), X.astype(np.float32))
    s = model.stream()
    for t in range(T):
        assert_close(s.step(X[0, t]), Yr[0, t])
    s.reset()
    assert_close(np.concatenate([s.push(X[0, :3]), s.push(X[0, 3:])]), Yr[0])
