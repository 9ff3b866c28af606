"""A pool against lone streams, driven by hypothesis: any sequence of open / close / reset /
step / push / set_state, refused calls included, leaves every pooled stream where a lone
``model.stream()`` fed the same frames would be (API.md: "Streams never see each other's
state"; "Opening past capacity raises and opens nothing"; "A failed call leaves every stream's
state exactly as it was"). Shrinking reduces a failure to its shortest sequence of calls.
Run for a chain model and for a graph model (an ONNX graph that is not a chain)."""
from __future__ import annotations

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule  # noqa: E402

import streamrnn as srnn  # noqa: E402

from conftest import rand_spec  # noqa: E402

CAP = 12  # a step of 8 or more streams takes the batched (GEMM) path


def _close(a, b, what):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=what)


class PoolVsLoneStreams(RuleBasedStateMachine):
    model: srnn.Model  # set by each subclass below
    oracle: srnn.Model | None = None  # makes the lone streams (None: the model itself)

    def __init__(self):
        super().__init__()
        self.pool = self.model.pool(CAP)
        self.lone: dict[int, srnn.Stream] = {}  # open id -> a lone stream fed the same frames

    def _frames(self, n, seed):
        return np.random.default_rng(seed).standard_normal((n, self.model.input_size)).astype(np.float32)

    def _ids(self, data, min_size=1):
        live = sorted(self.lone)
        return data.draw(st.lists(st.sampled_from(live), min_size=min_size, max_size=len(live), unique=True)
                         if live else st.just([]))

    @initialize(n=st.integers(1, CAP))
    def open_first(self, n):
        self.open(n)

    @rule(n=st.integers(0, 4))
    def open(self, n):
        free = CAP - len(self.lone)
        if n > free:
            with pytest.raises(srnn.CapacityError):
                self.pool.open(n)
            return
        ids = self.pool.open(n)
        assert len(ids) == n and not set(ids.tolist()) & set(self.lone)
        for i in ids.tolist():
            assert 0 <= i < CAP
            self.lone[i] = (self.oracle or self.model).stream()

    @precondition(lambda self: self.lone)
    @rule(data=st.data())
    def close(self, data):
        ids = self._ids(data)
        self.pool.close(ids)
        for i in ids:
            del self.lone[i]

    @rule(sid=st.integers(-2, CAP + 1))
    def close_not_open(self, sid):
        if sid in self.lone:
            return
        with pytest.raises(srnn.StreamIdError):
            self.pool.close(sid)

    @precondition(lambda self: self.lone)
    @rule(data=st.data())
    def reset(self, data):
        ids = self._ids(data)
        self.pool.reset(ids)
        for i in ids:
            self.lone[i].reset()

    @precondition(lambda self: self.lone)
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def step(self, data, seed):
        ids = self._ids(data)
        X = self._frames(len(ids), seed)
        Y = self.pool.step(np.array(ids), X)
        for k, i in enumerate(ids):
            _close(Y[k], self.lone[i].step(X[k]), f"pool.step of stream {i} (row {k} of {ids})")

    @precondition(lambda self: len(self.lone) >= 2)
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def step_many(self, data, seed):
        """A step of most open streams (8 or more when there are: the batched path)."""
        ids = data.draw(st.permutations(sorted(self.lone)))[: max(len(self.lone) - 2, min(8, len(self.lone)))]
        X = self._frames(len(ids), seed)
        Y = self.pool.step(np.array(ids), X)
        for k, i in enumerate(ids):
            _close(Y[k], self.lone[i].step(X[k]), f"pool.step of stream {i} (row {k} of {ids})")

    @precondition(lambda self: self.lone)
    @rule(data=st.data(), seed=st.integers(0, 2**16))
    def step_refused(self, data, seed):
        ids = self._ids(data)
        X = self._frames(len(ids), seed)
        X[data.draw(st.integers(0, len(ids) - 1)), 0] = np.nan
        with pytest.raises(srnn.NonFiniteError):
            self.pool.step(np.array(ids), X)
        if len(ids) < len(self.lone) or len(self.lone) < CAP:  # an id that is not open, among open ones
            bad = next(i for i in range(CAP + 1) if i not in self.lone)
            with pytest.raises(srnn.StreamIdError):
                self.pool.step(np.array(ids + [bad]), self._frames(len(ids) + 1, seed))

    @precondition(lambda self: self.lone)
    @rule(data=st.data(), T=st.integers(0, 5), seed=st.integers(0, 2**16))
    def push(self, data, T, seed):
        sid = data.draw(st.sampled_from(sorted(self.lone)))
        X = self._frames(T, seed)
        _close(self.pool.push(sid, X), self.lone[sid].push(X), f"pool.push of stream {sid}")

    @precondition(lambda self: self.lone)
    @rule(data=st.data())
    def set_state_from_another(self, data):
        dst, src = data.draw(st.sampled_from(sorted(self.lone))), data.draw(st.sampled_from(sorted(self.lone)))
        snap = self.pool.get_state(src)
        self.pool.set_state(dst, snap)
        self.lone[dst].state = snap

    @invariant()
    def every_stream_where_its_lone_twin_is(self):
        assert len(self.pool) == len(self.lone)
        for i, s in self.lone.items():
            _close(self.pool.get_state(i).data, s.state.data, f"state of stream {i}")


def run_machine(model, oracle=None, examples: int = 25, steps: int = 25) -> None:
    """Drive a pool of ``model`` against lone streams of ``oracle`` (default: the model): the same
    sequences on every run (derandomized: CI stays deterministic), nothing written to disk.
    ``tests/test_cuda_sim.py`` runs it for the CUDA engine."""
    machine = type("Machine", (PoolVsLoneStreams,), {"model": model, "oracle": oracle})
    hypothesis.stateful.run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=True, database=None,
        suppress_health_check=list(HealthCheck)))


def _chain() -> srnn.Model:
    return srnn.Model(rand_spec(np.random.default_rng(21), n_rec=2, exotic=False))


def _graph():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import io
    import warnings

    class Residual(torch.nn.Module):  # y = fc(gru(x) + x): not a chain
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = torch.nn.GRU(3, 3, batch_first=True), torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.rnn(x)[0] + x)

    torch.manual_seed(22)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Residual().eval(), (torch.randn(2, 5, 3),), f, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "y": {0: "b", 1: "t"}}, dynamo=False,
                          opset_version=17)
    model = srnn.from_onnx(f.getvalue())
    assert model.spec is None  # a graph model
    return model


@pytest.mark.parametrize("make", [_chain, _graph], ids=["chain", "graph"])
def test_pool_equals_lone_streams_under_any_sequence_of_calls(make):
    run_machine(make())
