"""Nothing is compiled in a real-time call: every kernel a stream or a pool can reach is compiled
when the model, the stream or the pool is made (explicit signatures, numba's cache), never in
``step`` / ``push``. Each case records numba's compilations during its calls and expects none."""
from __future__ import annotations

import numba.core.dispatcher as nbd
import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.benchutil import random_lstm_spec
from streamrnn.config import GIL_STEP_MAX_WEIGHTS
from streamrnn.engine import cpu


@pytest.fixture
def compiles(monkeypatch):
    """The list of (function, signature) numba compiles from now on."""
    seen = []
    orig = nbd.Dispatcher.compile

    def compile(self, sig):
        seen.append((self.py_func.__qualname__, str(sig)))
        return orig(self, sig)

    monkeypatch.setattr(nbd.Dispatcher, "compile", compile)
    return seen


# (H, dtype, weights): the four one-stream step groups of cpu.step_group, float64 included
CASES = [(16, "float32", "float"), (16, "float64", "float"), (16, "float32", "bfloat16"),
         (260, "float32", "float"), (260, "float32", "bfloat16")]


@pytest.mark.parametrize("H,dt,weights", CASES)
def test_stream_and_pool_calls_compile_nothing(H, dt, weights, request):
    model = srnn.Model(random_lstm_spec(H, H, 4, seed=H), dtype=dt, weights=weights)
    large = model._packed.W.size > GIL_STEP_MAX_WEIGHTS
    assert large == (H == 260), "the cases must cover both sides of GIL_STEP_MAX_WEIGHTS"
    stream, pool = model.stream(), model.pool(capacity=24)
    ids = pool.open(20)
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((2 * cpu.PUSH_GEMM_MIN_FRAMES, H)).astype(dt)
    seen = request.getfixturevalue("compiles")
    stream.step(frames[0])
    stream.push(frames[:3])  # a short chunk: the push kernel
    stream.push(frames)  # a long one: the run path of one sequence
    for n in (1, 2, 5, 8, 20):  # every pool path: per stream, the batch, on the team or not
        pool.step(ids[:n], rng.standard_normal((n, H)).astype(dt))
    pool.push(int(ids[0]), frames[:3])
    assert seen == [], f"compiled in a real-time call: {sorted({name for name, _ in seen})}"
