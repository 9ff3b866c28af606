"""Opt-in bfloat16 recurrent weights: every path agrees; the error against float32 is bounded."""
from __future__ import annotations

import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.engine.pack import to_bfloat16
from streamrnn.reference import run_reference

from conftest import assert_close, rand_spec


def test_rounding_is_nearest_even():
    x = np.array([1.0, 1.00390625, 1.005859375, -2.5e-3, 3.0e38], np.float32)
    y = to_bfloat16(x)
    assert np.all((y.view(np.uint32) & 0xFFFF) == 0)
    assert np.all(np.abs(y - x) <= np.abs(x) * 2.0**-8)
    assert y[1] == 1.0  # a tie rounds to even


@pytest.mark.parametrize("seed", range(6))
def test_paths_agree_and_error_vs_float32_is_bounded(seed):
    rng = np.random.default_rng(seed)
    spec = rand_spec(rng, n_rec=1 + seed % 3, exotic=seed % 2 == 0)
    model = srnn.Model(spec, weights="bfloat16")
    assert model._packed.Wh.size == model._packed.W.size  # the per-frame paths read bf16 bits
    f32 = srnn.Model(spec)
    T = 24
    X = rng.standard_normal((3, T, spec.input_size))
    Y = model.run(X)
    # the bf16 model is exactly the spec with its recurrent matrices rounded: oracle on that
    rounded = srnn.ModelSpec(tuple(
        l.astype(np.float64).__class__(**{**{f: getattr(l, f) for f in l.__dataclass_fields__},
                                          "W": to_bfloat16(l.W), "R": to_bfloat16(l.R)})
        if isinstance(l, (srnn.LSTMLayer, srnn.GRULayer, srnn.RNNLayer)) else l
        for l in spec.layers))
    Yr, _ = run_reference(rounded.astype(np.float32), X.astype(np.float32))
    assert_close(Y, Yr)
    s = model.stream()
    assert_close(np.stack([s.step(x) for x in X[0]]), Y[0])
    s.reset()
    assert_close(np.concatenate([s.push(X[0, :3]), s.push(X[0, 3:])]), Y[0])
    pool = model.pool(4)
    ids = pool.open(3)
    assert_close(np.stack([pool.step(ids, X[:, t]) for t in range(T)], 1), Y)
    # documented accuracy: against the float32 model, errors stay at the weight-rounding level
    err = np.abs(Y - f32.run(X)).max() / max(1.0, np.abs(f32.run(X)).max())
    assert err < 3e-2, err


def test_bfloat16_argument_checks():
    spec = rand_spec(np.random.default_rng(0), n_rec=1)
    with pytest.raises(srnn.StreamRNNError, match="weights"):
        srnn.Model(spec, dtype="float64", weights="bfloat16")
    with pytest.raises(srnn.StreamRNNError, match="weights"):
        srnn.Model(spec, weights="int4")
