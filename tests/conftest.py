"""Shared test helpers: random model specs over every option, tolerance checks."""
from __future__ import annotations

import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.spec import ACTIVATION_IDS, Activation

TOL = {np.float32: dict(rtol=1e-5, atol=1e-6), np.float64: dict(rtol=1e-10, atol=1e-12)}
ACT_NAMES = sorted(ACTIVATION_IDS)


def assert_close(actual, expected, dtype=np.float32, **kw) -> None:
    """Elementwise ``|a - e| <= atol + rtol * |e|`` (TOL by dtype), where atol is at least
    rtol times the largest ``|e|``: rounding errors scale with the magnitudes that flow through
    a recurrence, not with each output, so an element that is small because large terms
    cancelled (unbounded activations reach ~25 in these random models) carries the error of the
    large ones. Elementwise alone, ~0.3% of random float32 layers failed at rtol 1e-5 on float32
    rounding; the worst of 2,700 drawn cases stays under half of this bound."""
    tol = dict(TOL[np.dtype(dtype).type])
    tol.update(kw)
    e = np.asarray(expected, np.float64)
    if e.size:
        tol["atol"] = max(tol["atol"], tol["rtol"] * float(np.nanmax(np.abs(e), initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, np.float64), e, **tol)


def rand_act(rng, bounded: bool = False) -> Activation:
    """A random activation with random alpha/beta; bounded=True keeps to saturating ones."""
    names = ["Sigmoid", "Tanh", "HardSigmoid", "ScaledTanh", "Softsign"] if bounded else ACT_NAMES
    name = names[rng.integers(len(names))]
    return Activation(name, float(rng.uniform(0.2, 1.2)), float(rng.uniform(-0.5, 0.7)))


def rand_layer(rng, kind: str, I: int, H: int, *, direction="forward", exotic=False, scale=0.4):
    D = 2 if direction == "bidirectional" else 1
    w = lambda *s: rng.standard_normal(s) * scale  # noqa: E731
    clip = float(rng.uniform(0.5, 2.0)) if (exotic and rng.random() < 0.5) else None
    bias = w(D, 2 * {"lstm": 4, "gru": 3, "rnn": 1}[kind] * H) if rng.random() < 0.85 else None
    if kind == "lstm":
        proj = int(rng.integers(2, H)) if (exotic and rng.random() < 0.4 and H > 2) else 0
        Hr = proj or H
        acts = None
        if exotic and rng.random() < 0.6:
            acts = tuple(rand_act(rng, bounded=(s == 0)) for s in range(3)) * D
        return srnn.LSTMLayer(
            I, H, w(D, 4 * H, I), w(D, 4 * H, Hr), bias, direction=direction, activations=acts, clip=clip,
            P=w(D, 3 * H) if (exotic and rng.random() < 0.5) else None,
            proj=w(D, proj, H) if proj else None,
            input_forget=bool(exotic and rng.random() < 0.3),
        )
    if kind == "gru":
        acts = tuple(rand_act(rng, bounded=(s == 0)) for s in range(2)) * D if (exotic and rng.random() < 0.6) else None
        return srnn.GRULayer(I, H, w(D, 3 * H, I), w(D, 3 * H, H), bias, direction=direction, activations=acts,
                             clip=clip, linear_before_reset=bool(rng.random() < 0.5))
    acts = (rand_act(rng, bounded=True),) * D if (exotic and rng.random() < 0.7) else None
    return srnn.RNNLayer(I, H, w(D, H, I), w(D, H, H), bias, direction=direction, activations=acts, clip=clip)


def rand_spec(rng, n_rec: int = 1, kinds=("lstm", "gru", "rnn"), *, I=None, direction="forward",
              exotic=True, head=True, between=True) -> srnn.ModelSpec:
    """A random stack: n_rec recurrent layers (random kinds/options), optional activations between,
    a Dense head with optional activation and an optional softmax."""
    I = I or int(rng.integers(1, 7))
    layers, size = [], I
    for k in range(n_rec):
        kind = kinds[rng.integers(len(kinds))]
        H = int(rng.integers(1, 9))
        layer = rand_layer(rng, kind, size, H, direction=direction, exotic=exotic)
        layers.append(layer)
        size = layer.output_size
        if between and k < n_rec - 1 and rng.random() < 0.3:
            layers.append(srnn.ActivationLayer(size, rand_act(rng)))
    if head:
        O = int(rng.integers(1, 5))
        act = rand_act(rng) if rng.random() < 0.4 else None
        layers.append(srnn.DenseLayer(rng.standard_normal((O, size)) * 0.5,
                                      rng.standard_normal(O) * 0.1 if rng.random() < 0.8 else None, act))
        if rng.random() < 0.3:
            layers.append(srnn.SoftmaxLayer(O, log=bool(rng.random() < 0.5)))
    return srnn.ModelSpec(tuple(layers))


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture
def use_team(monkeypatch):
    """A function (nworkers, spin_us, futex) -> a fresh spinning team (engine/team.py) that pool.step
    uses from now on, on any machine: pools made afterwards step with nworkers + 1 threads and
    send every float32 step of at least 2 rows to it. Stopped at the end."""
    from streamrnn.engine import cpu, team

    made = []

    def make(nworkers: int = 1, spin: float = 500.0, futex: bool = team.FUTEX):
        tm = team.Team(nworkers, cpu._team_loop, spin, futex=futex)
        made.append(tm)
        monkeypatch.setattr(team, "_team", tm)
        monkeypatch.setattr(cpu.BatchedStep, "TEAM_MIN", 0)
        monkeypatch.setattr(cpu.BatchedStep, "TEAM_MIN_ROWS", 2)
        monkeypatch.setattr(cpu.BatchedStep, "THREADS", nworkers + 1)
        return tm

    yield make
    for tm in made:
        tm.stop()
        assert not any(th.is_alive() for th in tm._threads)
