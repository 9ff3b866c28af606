"""A chain model (``streamrnn.Model``) and a graph model (an ONNX graph that is not a chain of
layers, ``converters/graph_model.py``) implement the same API twice. Every edge call below must
end the same way on both: the same exception class, or success with outputs of the same rank and
leading dimensions. (Found by such a probe: the graph model crashed on empty inputs, refused
an empty id list, and dropped ``out=`` for one int id; NOTES 111.)"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph_model import GraphModel  # noqa: E402

I = 4


class _Residual(torch.nn.Module):  # y = fc(lstm(x) + x): a graph, not a chain
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(I, I, batch_first=True), torch.nn.Linear(I, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0] + x)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(11)
    net = _Residual().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 5, I),), f, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b", 1: "t"}, "y": {0: "b", 1: "t"}}, dynamo=False,
                          opset_version=17)
    graph = srnn.from_onnx(f.getvalue())
    chain = srnn.from_torch({"rnn." + k: v for k, v in net.rnn.state_dict().items()}
                            | {"fc." + k: v for k, v in net.fc.state_dict().items()})
    assert isinstance(graph, GraphModel) and not isinstance(chain, GraphModel)
    assert graph.input_size == chain.input_size == I
    return chain, graph


def _pooled(f):
    def call(m, other):
        p = m.pool(4)
        return f(m, p, p.open(2), other)
    return call


def _out_written(m, p, ids, other):
    out = np.zeros(m.output_size, np.float32)
    y = p.step(int(ids[0]), np.ones(I), out=out)
    assert np.shares_memory(y, out) and out.any()
    return y


_Z = np.zeros
CALLS = {
    "run B=0": lambda m, o: m.run(_Z((0, 3, I))),
    "run T=0": lambda m, o: m.run(_Z((2, 0, I))),
    "run T=0 2-D": lambda m, o: m.run(_Z((0, I))),
    "run T=0 state": lambda m, o: m.run(_Z((2, 0, I)), return_state=True)[1].data,
    "run lengths 0": lambda m, o: m.run(np.ones((2, 3, I)), lengths=[0, 0]),
    "run lengths > T": lambda m, o: m.run(np.ones((2, 3, I)), lengths=[4, 0]),
    "run lengths float": lambda m, o: m.run(np.ones((2, 3, I)), lengths=[1.0, 2.0]),
    "run lengths uint8": lambda m, o: m.run(np.ones((2, 3, I)), lengths=np.array([1, 2], np.uint8)),
    "run inf": lambda m, o: m.run(np.where(np.arange(3 * I).reshape(3, I) == 5, np.inf, 0.0)),
    "run float16": lambda m, o: m.run(np.ones((2, 3, I), np.float16)),
    "run int": lambda m, o: m.run(np.ones((2, 3, I), np.int64)),
    "run Fortran": lambda m, o: m.run(np.asfortranarray(np.ones((2, 3, I)))),
    "run list": lambda m, o: m.run(np.ones((3, I)).tolist()),
    "run complex": lambda m, o: m.run(np.ones((3, I), complex)),
    "run rank 1": lambda m, o: m.run(np.ones(I)),
    "run rank 4": lambda m, o: m.run(np.ones((1, 2, 3, I))),
    "run state of other": lambda m, o: m.run(np.ones((1, 2, I)), state=o.stream().state),
    "stream push empty": lambda m, o: m.stream().push(_Z((0, I))),
    "stream push 1-D": lambda m, o: m.stream().push(_Z(I)),
    "stream step 2-D": lambda m, o: m.stream().step(_Z((1, I))),
    "stream step list": lambda m, o: m.stream().step([0.1] * I),
    "stream step nan": lambda m, o: m.stream().step(np.full(I, np.nan)),
    "stream step out float64": lambda m, o: m.stream().step(_Z(I), out=_Z(m.output_size)),
    "stream step out strided": lambda m, o: m.stream().step(_Z(I), out=_Z(2 * m.output_size, np.float32)[::2]),
    "stream step out list": lambda m, o: m.stream().step(_Z(I), out=[0.0] * m.output_size),
    "stream state None": lambda m, o: setattr(m.stream(), "state", None),
    "stream state of other": lambda m, o: setattr(m.stream(), "state", o.stream().state),
    "stream bytes of other": lambda m, o: m.stream().load_state_bytes(o.stream().state_bytes()),
    "stream bytes junk": lambda m, o: m.stream().load_state_bytes(b"junk"),
    "pool(0)": lambda m, o: m.pool(0),
    "pool(1.5)": lambda m, o: m.pool(1.5),
    "open(0)": _pooled(lambda m, p, i, o: p.open(0)),
    "open(-1)": _pooled(lambda m, p, i, o: p.open(-1)),
    "open past capacity": _pooled(lambda m, p, i, o: p.open(3)),
    "open(2.0)": _pooled(lambda m, p, i, o: p.open(2.0)),
    "close([])": _pooled(lambda m, p, i, o: p.close([])),
    "reset([])": _pooled(lambda m, p, i, o: p.reset([])),
    "close twice": _pooled(lambda m, p, i, o: (p.close(i[0]), p.close(i[0]))),
    "close repeated": _pooled(lambda m, p, i, o: p.close([i[0], i[0]])),
    "reset closed": _pooled(lambda m, p, i, o: (p.close(i[0]), p.reset(i[0]))),
    "step([])": _pooled(lambda m, p, i, o: p.step([], _Z((0, I)))),
    "step rows != ids": _pooled(lambda m, p, i, o: p.step(i, _Z((0, I)))),
    "step one id, X (1, 1, I)": _pooled(lambda m, p, i, o: p.step(int(i[0]), _Z((1, 1, I)))),
    "step one id, out written": _pooled(_out_written),
    "step one id, out float64": _pooled(lambda m, p, i, o: p.step(int(i[0]), _Z(I), out=_Z(m.output_size))),
    "step True": _pooled(lambda m, p, i, o: p.step(True, _Z((1, I)))),
    "step uint64 past int64": _pooled(lambda m, p, i, o: p.step(np.array([2**63 + 1], np.uint64), _Z((1, I)))),
    "step int32 ids": _pooled(lambda m, p, i, o: p.step(i.astype(np.int32), _Z((2, I)))),
    "step repeated": _pooled(lambda m, p, i, o: p.step([0, 0], _Z((2, I)))),
    "step negative": _pooled(lambda m, p, i, o: p.step([-1], _Z((1, I)))),
    "step 2-D ids": _pooled(lambda m, p, i, o: p.step(np.array([[0, 1]]), _Z((2, I)))),
    "step float ids": _pooled(lambda m, p, i, o: p.step(np.array([0.0, 1.0]), _Z((2, I)))),
    "step out Fortran": _pooled(lambda m, p, i, o: p.step(i, _Z((2, I)), out=np.zeros((2, m.output_size), np.float32, order="F"))),
    "step out float64": _pooled(lambda m, p, i, o: p.step(i, _Z((2, I)), out=_Z((2, m.output_size)))),
    "step nan row": _pooled(lambda m, p, i, o: p.step(i, np.array([[0.0] * I, [np.nan] * I]))),
    "push closed": _pooled(lambda m, p, i, o: (p.close(1), p.push(1, _Z((2, I))))),
    "push [sid]": _pooled(lambda m, p, i, o: p.push(np.array([0]), _Z((2, I)))),
    "push two ids": _pooled(lambda m, p, i, o: p.push([0, 1], _Z((2, I)))),
    "push empty": _pooled(lambda m, p, i, o: p.push(0, _Z((0, I)))),
    "get_state [sid]": _pooled(lambda m, p, i, o: p.get_state([0]).data),
    "get_state two ids": _pooled(lambda m, p, i, o: p.get_state([0, 1])),
    "get_state []": _pooled(lambda m, p, i, o: p.get_state([])),
    "get_state True": _pooled(lambda m, p, i, o: p.get_state(True)),
    "set_state bytes": _pooled(lambda m, p, i, o: p.set_state(0, m.stream().state_bytes())),
    "set_state of other": _pooled(lambda m, p, i, o: p.set_state(0, o.stream().state)),
    "len / capacity": _pooled(lambda m, p, i, o: (len(p), p.capacity)),
}


def _outcome(fn, m, other):
    try:
        r = fn(m, other)
    except Exception as e:  # noqa: BLE001 - the class is the outcome
        return type(e).__name__
    if isinstance(r, np.ndarray):  # rank and every axis but the last (sizes of the models differ)
        return ("ok", r.ndim, r.shape[:-1], r.dtype.str)
    return ("ok", type(r).__name__)


@pytest.mark.parametrize("name", list(CALLS))
def test_chain_and_graph_models_end_each_call_the_same_way(models, name):
    chain, graph = models
    got = _outcome(CALLS[name], chain, graph), _outcome(CALLS[name], graph, chain)
    assert got[0] == got[1], f"{name}: chain model {got[0]}, graph model {got[1]}"


def test_both_models_name_the_first_non_finite_frame_row_or_feature(models, step_export):
    x = np.zeros(I)
    x[2] = np.nan
    X = np.zeros((3, I))
    X[1, 3] = np.inf
    for m in models + step_export[1:]:
        p = m.pool(4)
        ids = p.open(3)
        for call, where in ((lambda: m.stream().step(x), "x: .* at feature 2"), (lambda: m.stream().push(X), "X: .* at frame 1"),
                            (lambda: p.step(ids, X), "X: .* at row 1"), (lambda: p.push(ids[0], X), "X: .* at frame 1"),
                            (lambda: m.run(X[None]), r"X: .* at index \(0, 1, 3\)")):
            with pytest.raises(srnn.NonFiniteError, match=where):
                call()
        assert not any(p.get_state(i).data.any() for i in ids)


def test_both_models_reuse_ids_in_the_same_order(models):
    """README: a fresh pool hands out 0, 1, 2, ...; closed ids come back first, the most recently
    closed first."""
    for m in models:
        p = m.pool(10)
        assert p.open(10).tolist() == list(range(10))
        p.close([5, 2])
        p.close(7)
        assert [p.open(), p.open()] == [7, 5] and p.open(1).tolist() == [2]  # within one close: in list order
        assert len(p) == 10


class _CellStep(torch.nn.Module):  # a hand-written cell exported as one step, h in and out
    def __init__(self):
        super().__init__()
        self.l, self.fc = torch.nn.Linear(I + 5, 5), torch.nn.Linear(5, 3)

    def forward(self, x, h):
        h = torch.tanh(self.l(torch.cat([x, h], 1)))
        return self.fc(h) + x[:, :3], h


@pytest.fixture(scope="module")
def step_export(models):
    """The third implementation of a stream: a graph whose state goes out and back in as graph
    outputs / inputs (states fed back, converters/graph_plan.py)."""
    torch.manual_seed(12)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_CellStep().eval(), (torch.randn(2, I), torch.zeros(2, 5)), f, input_names=["x", "h"],
                          output_names=["y", "hn"], dynamo=False, opset_version=17,
                          dynamic_axes={k: {0: "b"} for k in ("x", "h", "y", "hn")})
    m = srnn.from_onnx(f.getvalue())
    assert isinstance(m, GraphModel) and m.plan.feedback and m.plan.frame_rows
    return models[0], m


@pytest.mark.parametrize("name", list(CALLS))
def test_chain_models_and_step_exports_end_each_call_the_same_way(step_export, name):
    chain, step = step_export
    got = _outcome(CALLS[name], chain, step), _outcome(CALLS[name], step, chain)
    assert got[0] == got[1], f"{name}: chain model {got[0]}, step export {got[1]}"
