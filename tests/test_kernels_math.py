"""The vectorised float32 activations against float64 numpy (the accuracy the docs claim)."""
from __future__ import annotations

import numpy as np
import pytest

from streamrnn.layers.cpu_common import _act, _vact
from streamrnn.spec import ACTIVATION_IDS, Activation
from streamrnn.activations import apply


def test_fast_tanh_and_sigmoid_accuracy():
    x = np.concatenate([np.linspace(-20, 20, 400001), np.geomspace(1e-8, 5, 20000)]).astype(np.float32)
    x = np.concatenate([x, -x])
    ref = np.tanh(x.astype(np.float64))
    y = x.copy()
    _vact(y, ACTIVATION_IDS["Tanh"], np.float32(0), np.float32(0), 1)
    rel = np.abs(y - ref) / np.maximum(np.abs(ref), 1e-30)
    assert rel.max() < 3e-7
    ys = x.copy()
    _vact(ys, ACTIVATION_IDS["Sigmoid"], np.float32(0), np.float32(0), 1)
    refs = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert np.abs(ys - refs).max() < 2e-7  # absolute: 0.5 * tanh error


@pytest.mark.parametrize("name", sorted(ACTIVATION_IDS))
def test_every_activation_scalar_and_vector_match_numpy(name):
    rng = np.random.default_rng(0)
    act = Activation(name, float(rng.uniform(0.2, 1.5)), float(rng.uniform(-1, 1)))
    x = rng.standard_normal(1000) * 4
    ref = apply(act, x)
    y = np.array([_act(v, act.id, act.alpha, act.beta) for v in x])
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-15)
    y64 = x.copy()
    _vact(y64, act.id, act.alpha, act.beta, 0)
    np.testing.assert_allclose(y64, ref, rtol=1e-13, atol=1e-15)
    y32 = x.astype(np.float32)
    _vact(y32, act.id, np.float32(act.alpha), np.float32(act.beta), 1)
    np.testing.assert_allclose(y32, ref, rtol=2e-6, atol=1e-6)
