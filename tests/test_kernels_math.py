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


@pytest.mark.parametrize("H", [1, 16, 40, 128])
def test_lstm_vector_gates_against_float64(H):
    """The 512-bit LSTM gate kernel (``_lstm_gates_v``, reciprocal estimate + Newton step where
    AVX-512 exists) plus the scalar tail, through ``_lstm_gates``, against float64 numpy."""
    from numba import njit

    from streamrnn.layers.cpu_common import _lstm_gates_v

    @njit
    def run(g, c, h):
        return _lstm_gates_v(g, c, h, np.int64(c.shape[0]))

    rng = np.random.default_rng(H)
    g = (rng.standard_normal(4 * H) * 4).astype(np.float32)
    g[: min(4 * H, 8)] = [20, -20, 8, -8, 0, 1e-7, 7.9, -7.95][: min(4 * H, 8)]  # clamp edges
    c0 = (rng.standard_normal(H) * 2).astype(np.float32)
    c, h = c0.copy(), np.full(H, np.nan, np.float32)
    done = run(g.copy(), c, h)
    assert done == H // 16 * 16
    g64, cc = g.astype(np.float64), c0.astype(np.float64)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    i, o, f, z = sig(g64[:H]), sig(g64[H : 2 * H]), sig(g64[2 * H : 3 * H]), np.tanh(g64[3 * H :])
    c_ref = f * cc + i * z
    h_ref = o * np.tanh(c_ref)
    # sigmoid = tanh(x/2)/2 + 1/2 has an absolute error bound (~1e-7, like the scalar form), so c
    # is checked absolutely, scaled by the state it multiplies
    assert np.all(np.abs(c[:done] - c_ref[:done]) <= 5e-7 * (np.abs(cc[:done]) + 1))
    assert np.all(np.abs(h[:done] - h_ref[:done]) <= 5e-7)
    assert np.all(np.isnan(h[done:]))  # the tail is the caller's (scalar loop)


def test_kernels_inlined_in_numba_ir_compile_with_the_njit_options():
    """A kernel inlined into its callers in numba's IR (config.NJIT_INLINE) is compiled with its
    caller's options, so only kernels whose own options equal NJIT's may be inlined (a kernel
    with, e.g., reassociation would silently lose it). Also: the inlined set is what cuts the
    cold compile (bench/NOTES.md entry 59), so it must not be empty."""
    import importlib
    import pkgutil

    from numba.core.registry import CPUDispatcher

    import streamrnn
    from streamrnn.config import NJIT

    keys = ("fastmath", "error_model", "boundscheck", "_nrt")
    inlined = []
    for info in pkgutil.walk_packages(streamrnn.__path__, "streamrnn."):
        if not (info.name.endswith(".cpu") or info.name.endswith("cpu_common")):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in vars(mod).items():
            if isinstance(obj, CPUDispatcher) and obj.targetoptions.get("inline") == "always":
                inlined.append(f"{info.name}.{name}")
                got = {k: obj.targetoptions.get(k) for k in keys}
                assert got == {k: NJIT[k] for k in keys}, (info.name, name, got)
    assert "streamrnn.engine.cpu._stack_core" in inlined and len(inlined) >= 10, inlined
