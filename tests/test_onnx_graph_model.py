"""Model-level ONNX semantics (API.md): roles of inputs / outputs, layouts, state pairing, and
graphs that are not chains, which run as graph models (run / stream / pool)."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph_model import GraphModel  # noqa: E402

FLOAT = TensorProto.FLOAT


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _export(net, x, dyn):
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), f, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": dyn, "y": dyn}, dynamo=False, opset_version=17)
    return f.getvalue()


class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(4, 4, batch_first=True), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0] + x)


class ResidualStep(torch.nn.Module):  # one frame of Residual, h / c in and out: the streaming export
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(4, 4, batch_first=True), torch.nn.Linear(4, 3)

    def forward(self, x, h, c):
        y, (h2, c2) = self.rnn(x, (h, c))
        return self.fc(y + x), h2, c2


class Parallel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.GRU(4, 5, batch_first=True), torch.nn.LSTM(4, 3, num_layers=2, batch_first=True)

    def forward(self, x):
        return torch.cat([self.a(x)[0], torch.tanh(self.b(x)[0])], -1)


class BiGated(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.GRU(4, 5, batch_first=True, bidirectional=True)

    def forward(self, x):
        y = self.a(x)[0]
        return y[..., :5] * y[..., 5:]


class SoftmaxOverTime(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.RNN(4, 5, batch_first=True)

    def forward(self, x):
        return torch.softmax(self.a(x)[0], 1)


class Unbatched(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = torch.nn.LSTM(4, 5), torch.nn.Linear(5, 2)

    def forward(self, x):  # x (T, I): no batch axis
        return self.fc(self.a(x)[0])


def _torch(net, X, unbatched=False):
    with torch.no_grad():
        if unbatched:
            return np.stack([net(torch.from_numpy(x)).numpy() for x in X])
        return net(torch.from_numpy(X)).numpy()


@pytest.mark.parametrize("cls", [Residual, Parallel])
def test_graph_model_runs_and_streams(cls):
    torch.manual_seed(0)
    net = cls()
    model = srnn.from_onnx(_export(net, torch.randn(2, 7, 4), {0: "b", 1: "t"}))
    assert isinstance(model, GraphModel) and model.streamable
    assert (model.input_size, model.output_size) == (4, net(torch.randn(1, 1, 4)).shape[-1])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 9, 4)).astype(np.float32)
    y = _torch(net, X)
    np.testing.assert_allclose(model.run(X), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.run(X[1]), y[1], rtol=1e-5, atol=1e-5)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[0]]), y[0], rtol=1e-5, atol=1e-5)
    snap = s.state
    blob = s.state_bytes()
    s.reset()
    np.testing.assert_allclose(np.concatenate([s.push(X[0][:4]), s.push(X[0][4:])]), y[0], rtol=1e-5, atol=1e-5)
    s.state = snap
    s2 = model.stream()
    s2.load_state_bytes(blob)
    x = rng.normal(size=4).astype(np.float32)
    np.testing.assert_allclose(s.step(x), s2.step(x), rtol=1e-6)
    pool = model.pool(5)
    ids = pool.open(3)
    out = np.stack([pool.step(ids, X[:, t]) for t in range(X.shape[1])], axis=1)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)
    # run with a state == continuing a stream
    Y1, st = model.run(X[:, :5], return_state=True)
    np.testing.assert_allclose(np.concatenate([Y1, model.run(X[:, 5:], state=st)], 1), y, rtol=1e-5, atol=1e-5)
    with pytest.raises(srnn.UnsupportedError, match="save"):
        model.save("/tmp/never.srnn")


def test_pool_errors_leave_state():
    torch.manual_seed(1)
    model = srnn.from_onnx(_export(Residual(), torch.randn(2, 7, 4), {0: "b", 1: "t"}))
    pool = model.pool(2)
    a, b = pool.open(), pool.open()
    with pytest.raises(srnn.CapacityError):
        pool.open()
    before = pool.get_state(a).data.copy()
    with pytest.raises(srnn.StreamIdError):
        pool.step([a, 7], np.zeros((2, 4), np.float32))
    with pytest.raises(srnn.NonFiniteError):
        pool.step([a, b], np.array([[0, 0, 0, np.nan]] * 2, np.float32))
    with pytest.raises(srnn.ShapeError):
        pool.step([a, b], np.zeros((2, 4), np.float32), out=np.zeros((3, 3), np.float32))
    np.testing.assert_array_equal(pool.get_state(a).data, before)
    pool.close(b)
    with pytest.raises(srnn.StreamIdError):
        pool.close(b)
    assert len(pool) == 1


@pytest.mark.parametrize("cls,why", [(BiGated, "bidirectional"), (SoftmaxOverTime, "causal")])
def test_graph_model_that_cannot_stream(cls, why):
    torch.manual_seed(2)
    net = cls()
    model = srnn.from_onnx(_export(net, torch.randn(2, 7, 4), {0: "b", 1: "t"}))
    assert isinstance(model, GraphModel) and not model.streamable
    X = np.random.default_rng(3).normal(size=(2, 6, 4)).astype(np.float32)
    np.testing.assert_allclose(model.run(X), _torch(net, X), rtol=1e-5, atol=1e-5)
    with pytest.raises(srnn.StreamRNNError, match=why):
        model.stream()
    with pytest.raises(srnn.StreamRNNError, match=why):
        model.pool(3)


def test_unbatched_export():
    torch.manual_seed(3)
    net = Unbatched()
    model = srnn.from_onnx(_export(net, torch.randn(7, 4), {0: "t"}))
    X = np.random.default_rng(4).normal(size=(3, 6, 4)).astype(np.float32)
    y = _torch(net, X, unbatched=True)
    np.testing.assert_allclose(model.run(X), y, rtol=1e-5, atol=1e-5)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[2]]), y[2], rtol=1e-5, atol=1e-5)


# -- handmade graphs -----------------------------------------------------------------------------

def _lstm_graph(rng, *, layout=0, states=True, learned_h0=False, lens_input=False, hidden_out=False, I=3, H=4):
    """X -> LSTM -> (Squeeze) -> Gemm head; h0/c0 inputs paired with hn/cn outputs."""
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(size=(1, 8 * H)).astype(np.float32), "B"),
             numpy_helper.from_array(rng.normal(size=(2, H)).astype(np.float32), "fcW"),
             numpy_helper.from_array(np.array([1 if layout == 0 else 2], np.int64), "ax")]
    xs = ["T", "N", I] if layout == 0 else ["N", "T", I]
    ins = [helper.make_tensor_value_info("x", FLOAT, xs)]
    sshape = [1, "N", H] if layout == 0 else ["N", 1, H]
    h0, c0 = "", ""
    if states:
        ins += [helper.make_tensor_value_info("h0", FLOAT, sshape), helper.make_tensor_value_info("c0", FLOAT, sshape)]
        h0, c0 = "h0", "c0"
    pre = []
    if learned_h0:  # h_learned (1, 1, H) expanded to (1, N, H) as exporters do
        inits.append(numpy_helper.from_array(rng.normal(size=(1, 1, H)).astype(np.float32), "h_learned"))
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "i1"))
        inits.append(numpy_helper.from_array(np.array([1, 1, H], np.int64), "ones"))
        pre = [helper.make_node("Shape", ["x"], ["xs"]),
               helper.make_node("Gather", ["xs", "i1"], ["nb"]),
               helper.make_node("Concat", ["i1", "nb", "i1"], ["eshape"], axis=0),
               helper.make_node("Expand", ["h_learned", "eshape"], ["h_exp"])]
        h0 = "h_exp"
    lens = ""
    if lens_input:
        ins.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["N"]))
        lens = "lens"
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B", lens, h0, c0], ["Y", "Y_h", "Y_c"], hidden_size=H,
                              **({"layout": 1} if layout else {})),
             helper.make_node("Squeeze", ["Y", "ax"], ["ys"]),
             helper.make_node("MatMul", ["ys", "fcWt"], ["y"]),
             helper.make_node("Transpose", ["fcW"], ["fcWt"])]
    nodes = pre + [nodes[0], nodes[1], nodes[3], nodes[2]]
    outs = [helper.make_tensor_value_info("y", FLOAT, None)]
    if states:
        if hidden_out:  # the pairing hidden behind arithmetic: hn = Y_h * 1
            inits.append(numpy_helper.from_array(np.ones(1, np.float32), "one"))
            nodes.append(helper.make_node("Mul", ["Y_h", "one"], ["hn"]))
            outs = [helper.make_tensor_value_info("hn", FLOAT, None)] + outs
        else:
            nodes.append(helper.make_node("Identity", ["Y_h"], ["hn"]))
            outs.append(helper.make_tensor_value_info("hn", FLOAT, None))
        nodes.append(helper.make_node("Identity", ["Y_c"], ["cn"]))
        outs.append(helper.make_tensor_value_info("cn", FLOAT, None))
    g = helper.make_graph(nodes, "handmade", ins, outs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    m.ir_version = 8
    return m


def _ort_y(m, X, layout, lens=None, states=True, H=4):
    """onnxruntime's y for frames X (B, T, I) with zero states (layout 1 run as layout 0)."""
    B, T = X.shape[:2]
    if layout == 1:  # onnxruntime refuses layout=1: run the equivalent layout-0 graph
        m2 = onnx.ModelProto()
        m2.CopyFrom(m)
        n = m2.graph.node[0]
        for a in list(n.attribute):
            if a.name == "layout":
                n.attribute.remove(a)
        m2.graph.initializer[4].CopyFrom(numpy_helper.from_array(np.array([1], np.int64), "ax"))
        for vi in m2.graph.input:
            vi.type.tensor_type.ClearField("shape")
        return _ort_y(m2, X, 0, lens, states, H)
    feeds = {"x": X.transpose(1, 0, 2).copy()}
    if states:
        feeds["h0"] = feeds["c0"] = np.zeros((1, B, H), np.float32)
    if lens is not None:
        feeds["lens"] = lens.astype(np.int32)
    names = [o.name for o in m.graph.output]
    y = _ort(m, feeds)[names.index("y")]  # (T, B, O)
    return y.transpose(1, 0, 2)


@pytest.mark.parametrize("layout", [0, 1])
def test_single_node_model_level(layout):
    """States paired automatically (h0->hn, c0->cn), Y the first other output; run takes (B, T, I)
    whatever the layout, and (T, I)."""
    rng = np.random.default_rng(10)
    m = _lstm_graph(rng, layout=layout)
    model = srnn.from_onnx(m)
    assert isinstance(model, srnn.Model)
    X = rng.normal(size=(2, 5, 3)).astype(np.float32)
    want = _ort_y(m, X, layout)
    np.testing.assert_allclose(model.run(X), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.run(X[1]), want[1], rtol=1e-5, atol=1e-5)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[0]]), want[0], rtol=1e-5, atol=1e-5)


def test_hidden_pairing_needs_state_map():
    rng = np.random.default_rng(11)
    m = _lstm_graph(rng, hidden_out=True)  # outputs: hn (hidden), y, cn
    with pytest.raises(srnn.UnsupportedError, match="'hn'.*time axis"):
        srnn.from_onnx(m)
    model = srnn.from_onnx(m, state_map={"h0": "hn", "c0": "cn"})
    X = rng.normal(size=(2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(model.run(X), _ort_y(m, X, 0), rtol=1e-5, atol=1e-5)


def test_sequence_lens_input_is_lengths():
    rng = np.random.default_rng(12)
    m = _lstm_graph(rng, lens_input=True)
    model = srnn.from_onnx(m)
    X = rng.normal(size=(3, 6, 3)).astype(np.float32)
    lens = np.array([6, 2, 0])
    want = _ort_y(m, X, 0, lens)
    got = model.run(X, lengths=lens)
    for b, n in enumerate(lens):
        np.testing.assert_allclose(got[b, :n], want[b, :n], rtol=1e-5, atol=1e-5)
        assert not got[b, n:].any()  # exactly 0 past the length, after the head
    np.testing.assert_allclose(model.run(X), _ort_y(m, X, 0, np.array([6, 6, 6])), rtol=1e-5, atol=1e-5)


def test_learned_initial_state_runs_as_graph():
    """A constant (learned) initial_h is not a zero state: not a chain; fresh streams start from it."""
    rng = np.random.default_rng(13)
    m = _lstm_graph(rng, states=False, learned_h0=True)
    model = srnn.from_onnx(m)
    assert isinstance(model, GraphModel) and model.streamable
    X = rng.normal(size=(2, 5, 3)).astype(np.float32)
    want = _ort_y(m, X, 0, states=False)
    np.testing.assert_allclose(model.run(X), want, rtol=1e-5, atol=1e-5)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[1]]), want[1], rtol=1e-5, atol=1e-5)
    s.reset()
    np.testing.assert_allclose(s.push(X[0]), want[0], rtol=1e-5, atol=1e-5)


def test_output_without_time_axis_refused():
    rng = np.random.default_rng(14)
    H, I = 3, 2
    inits = [numpy_helper.from_array(rng.normal(size=(1, 3 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 3 * H, H)).astype(np.float32), "R")]
    g = helper.make_graph([helper.make_node("GRU", ["X", "W", "R"], ["", "Y_h"], hidden_size=H)], "g",
                          [helper.make_tensor_value_info("X", FLOAT, ["T", "B", I])],
                          [helper.make_tensor_value_info("Y_h", FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(srnn.UnsupportedError, match="time axis"):
        srnn.from_onnx(m)
    sess = srnn.InferenceSession(m)  # still fine as a session
    X = rng.normal(size=(4, 2, I)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"X": X})[0], _ort(m, {"X": X})[0], rtol=1e-5, atol=1e-6)


def test_load_path_and_repr(tmp_path):
    torch.manual_seed(4)
    p = tmp_path / "res.onnx"
    p.write_bytes(_export(Residual(), torch.randn(2, 7, 4), {0: "b", 1: "t"}))
    model = srnn.load(p)
    assert isinstance(model, GraphModel)
    assert "LSTM" in str(model) and "GraphModel" in repr(model)
    with pytest.raises(srnn.ShapeError, match="X"):
        model.run(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(srnn.NonFiniteError):
        model.run(np.full((2, 3, 4), np.nan, np.float32))


def test_graph_model_edges_as_a_chain_model():
    """What tests/test_errors.py and test_streams_and_pool.py check of a chain model, for a graph
    model: no frames give no outputs and keep every state; an empty id list is no ids; one int id
    takes one frame (input_size,) and writes ``out``; get_state / set_state / push take one id;
    the first non-finite value is reported at its index in the array as passed."""
    torch.manual_seed(2)
    model = srnn.from_onnx(_export(Residual(), torch.randn(2, 7, 4), {0: "b", 1: "t"}))
    assert isinstance(model, GraphModel)
    rng = np.random.default_rng(7)
    I, O, S = model.input_size, model.output_size, model.state_size
    X = rng.normal(size=(2, 5, I)).astype(np.float32)
    _, st = model.run(X, return_state=True)
    assert st.data.any()
    for Xe in (X[:, :0], X[:0], X[0, :0]):
        Y, fin = model.run(Xe, state=st if Xe.shape[0] == 2 and Xe.ndim == 3 else None, return_state=True)
        assert Y.shape == Xe.shape[:-1] + (O,) and Y.dtype == np.float32
        assert fin.data.shape == Xe.shape[:-2] + (S,)
    _, fin = model.run(X[:, :0], state=st, return_state=True)
    np.testing.assert_array_equal(fin.data, st.data)  # T = 0: the initial state
    bad = X[1].copy()
    bad[3, 2] = np.nan
    with pytest.raises(srnn.NonFiniteError, match=r"at index \(3, 2\) "):
        model.run(bad)
    s = model.stream()
    s.push(X[0, :2])
    before = s.state.data.copy()
    assert s.push(X[0, :0]).shape == (0, O)
    np.testing.assert_array_equal(s.state.data, before)
    pool = model.pool(4)
    a, b = pool.open(2)
    pool.close([])
    pool.reset([])
    assert pool.step([], np.zeros((0, I), np.float32)).shape == (0, O)
    assert pool.push(a, X[0, :0]).shape == (0, O) and len(pool) == 2
    with pytest.raises(srnn.ShapeError, match=rf"X: expected shape \({I},\) with one int stream id, got \(1, 1, {I}\)"):
        pool.step(a, X[0, :1, None])
    for call in (lambda: pool.get_state([a, b]), lambda: pool.push([a, b], X[0, :2]),
                 lambda: pool.set_state([a, b], model.stream().state),
                 lambda: pool.get_state([])):
        with pytest.raises(srnn.StreamIdError, match="sid: expected one stream id"):
            call()
    with pytest.raises(srnn.StreamIdError, match="got bool"):
        pool.step(True, X[0, :1])
    with pytest.raises(srnn.ShapeError, match=rf"out: expected a C-contiguous float32 array of shape \({O},\), got float64"):
        pool.step(a, X[0, 0], out=np.zeros(O))
    assert not pool.get_state(a).data.any() and not pool.get_state(b).data.any()  # nothing stepped
    lone = model.stream()
    out = np.full(O, np.nan, np.float32)
    for t in range(3):
        y = pool.step(np.int64(b), X[1, t], out=out)
        assert y is out
        np.testing.assert_allclose(out, lone.step(X[1, t]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool.get_state([b]).data, lone.state.data, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_single_step_export_of_a_graph_streams(dynamic_batch):
    """A graph that is not a chain (a residual connection), exported as one time step (T fixed
    to 1, h / c in and out; the natural export for streaming): before, stream() and pool()
    refused it ("time dimension is fixed to 1") and run() took T = 1 only. Now it runs frame
    by frame, the state carried: run over any T (ragged lengths too), stream, push, pool, all
    equal to PyTorch on the whole sequence."""
    torch.manual_seed(12)
    net = ResidualStep().eval()
    f = io.BytesIO()
    axes = {"x": {0: "b"}, "h": {1: "b"}, "c": {1: "b"}, "y": {0: "b"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 1, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)), f,
                          input_names=["x", "h", "c"], output_names=["y", "hn", "cn"], dynamic_axes=axes,
                          dynamo=False, opset_version=17)
    model = srnn.from_onnx(f.getvalue(), state_map={"h": "hn", "c": "cn"})
    assert isinstance(model, GraphModel) and model.plan.fixed_T == 1 and model.streamable
    X = np.random.default_rng(13).normal(size=(3, 7, 4)).astype(np.float32)
    z = torch.zeros(1, 3, 4)
    with torch.no_grad():
        want = net(torch.from_numpy(X), z, z)[0].numpy()
    np.testing.assert_allclose(model.run(X), want, rtol=1e-5, atol=1e-5)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[1]]), want[1], rtol=1e-5, atol=1e-5)
    s.reset()
    np.testing.assert_allclose(np.concatenate([s.push(X[1, :3]), s.push(X[1, 3:])]), want[1], rtol=1e-5, atol=1e-5)
    pool = model.pool(4)
    ids = pool.open(3)
    Y = np.stack([pool.step(ids, X[:, t]) for t in range(7)], axis=1)
    np.testing.assert_allclose(Y, want, rtol=1e-5, atol=1e-5)
    L = np.array([7, 2, 0])
    Yl, st = model.run(X, lengths=L, return_state=True)
    np.testing.assert_allclose(Yl[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(Yl[1, :2], want[1, :2], rtol=1e-5, atol=1e-5)
    assert not Yl[1, 2:].any() and not Yl[2].any() and not st.data[2].any()
    _, st1 = model.run(X[1, :2], return_state=True)
    np.testing.assert_allclose(st.data[1], st1.data, rtol=1e-5, atol=1e-6)


def test_graph_without_recurrent_nodes_and_a_fixed_time_axis():
    """A graph with no recurrent node and x declared (b, 3, I): what torch.onnx.export(dynamo=True)
    makes of nn.RNN (the recurrence unrolled over the traced frames). No node shows which axis
    is time; of a fixed and a free axis the fixed one is. Before, axis 0 was taken as time: batch
    and time mixed and run() returned wrong values without an error. Now run() equals onnxruntime,
    refuses another number of frames, and stream() refuses with the reason."""
    rng = np.random.default_rng(31)
    I, O = 4, 2
    inits = [numpy_helper.from_array(rng.normal(size=(I, O)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([1], np.int64), "s1"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["first"]),  # x[:, 0:1]: frame 0 of each sequence
             helper.make_node("Mul", ["x", "first"], ["m"]), helper.make_node("Tanh", ["m"], ["t"]),
             helper.make_node("MatMul", ["t", "W"], ["y"])]
    graph = helper.make_graph(nodes, "unrolled", [helper.make_tensor_value_info("x", FLOAT, ["b", 3, I])],
                              [helper.make_tensor_value_info("y", FLOAT, ["b", 3, O])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = srnn.from_onnx(proto.SerializeToString())
    X = rng.normal(size=(2, 3, I)).astype(np.float32)
    want = _ort(proto, {"x": X})[0]
    np.testing.assert_allclose(model.run(X), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.run(X[1]), want[1], rtol=1e-5, atol=1e-6)
    with pytest.raises(srnn.ShapeError, match="expected 3 frames"):
        model.run(X[:, :2])
    with pytest.raises(srnn.StreamRNNError, match="fixed to 3"):
        model.stream()


def test_unbatched_graph_probed_with_several_frames():
    """A graph of x (T, I) whose output puts time last, y (1, O, T). The load-time probes of
    rank-2 graphs ran with one frame (T = 1), so y's time axis could not be told from its
    leading size-1 axis: axis 0 was taken, and run() returned y's data transposed. Now the
    probes run 5 and 4 frames, as for rank-3 graphs; run() equals onnxruntime."""
    rng = np.random.default_rng(33)
    I, H, O = 3, 4, 2
    inits = [numpy_helper.from_array(rng.normal(size=(1, 3 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 3 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(size=(H, O)).astype(np.float32), "Wo"),
             numpy_helper.from_array(np.array([1], np.int64), "a1"), numpy_helper.from_array(np.array([0], np.int64), "a0")]
    nodes = [helper.make_node("Unsqueeze", ["x", "a1"], ["x3"]),  # (T, 1, I)
             helper.make_node("GRU", ["x3", "W", "R"], ["Y"], hidden_size=H),  # (T, 1, 1, H)
             helper.make_node("Reshape", ["Y", "shp"], ["h"]),  # (T, H)
             helper.make_node("MatMul", ["h", "Wo"], ["m"]),  # (T, O)
             helper.make_node("Add", ["m", "h2"], ["s"]),  # + a residual: not a chain
             helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0]),  # (O, T)
             helper.make_node("Unsqueeze", ["st", "a0"], ["y"])]  # (1, O, T)
    inits.append(numpy_helper.from_array(np.array([-1, H], np.int64), "shp"))
    nodes.insert(4, helper.make_node("Slice", ["h", "s0", "s2", "a1"], ["h2"]))  # h[:, :O]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "s0"), numpy_helper.from_array(np.array([O], np.int64), "s2")]
    graph = helper.make_graph(nodes, "time_last", [helper.make_tensor_value_info("x", FLOAT, ["T", I])],
                              [helper.make_tensor_value_info("y", FLOAT, [1, O, "T"])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model = srnn.from_onnx(proto.SerializeToString())
    assert isinstance(model, GraphModel)
    X = rng.normal(size=(6, I)).astype(np.float32)
    want = _ort(proto, {"x": X})[0][0].T  # (T, O)
    np.testing.assert_allclose(model.run(X), want, rtol=1e-5, atol=1e-6)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X]), want, rtol=1e-5, atol=1e-6)


def test_a_graph_that_fixes_the_length_its_input_leaves_free_is_refused_with_the_reason():
    """x declared (T, I) with T free, but a Reshape to (5, H) inside: what the dynamo exporter
    makes of an unbatched GRU (the traced length baked in). It runs on 5 frames only (so does
    onnxruntime); the load refuses it, saying it ran on 5 frames and how to export instead."""
    rng = np.random.default_rng(35)
    I, H = 3, 4
    inits = [numpy_helper.from_array(rng.normal(size=(1, 3 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 3 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([1], np.int64), "a1"),
             numpy_helper.from_array(np.array([5, H], np.int64), "shp")]
    nodes = [helper.make_node("Unsqueeze", ["x", "a1"], ["x3"]),
             helper.make_node("GRU", ["x3", "W", "R"], ["Y"], hidden_size=H),
             helper.make_node("Reshape", ["Y", "shp"], ["h"]),
             helper.make_node("Add", ["h", "h"], ["y"])]
    graph = helper.make_graph(nodes, "baked", [helper.make_tensor_value_info("x", FLOAT, ["T", I])],
                              [helper.make_tensor_value_info("y", FLOAT, ["T", H])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    assert _ort(proto, {"x": rng.normal(size=(5, I)).astype(np.float32)})[0].shape == (5, H)
    with pytest.raises(srnn.UnsupportedError, match=r"it ran on X of shape \(5, 3\); .*dynamo=False"):
        srnn.from_onnx(proto.SerializeToString())


@pytest.mark.parametrize("how", ["computed zeros", "constant"])
def test_initial_state_of_another_size_is_refused(how):
    """An LSTM of hidden_size 3 given initial_c of size 6: as zeros built from x's shape (what the
    dynamo exporter makes of an LSTM with proj_size: the projection dropped, c kept at 6), or as
    a constant. onnxruntime refuses it when it runs; the load took the zeros for a fresh state
    and ran a different model (a constant raised a bare numpy ValueError). Now FormatError
    naming the node, the input and both shapes."""
    rng = np.random.default_rng(37)
    I, H = 4, 3
    f = lambda a, n: numpy_helper.from_array(np.asarray(a), n)  # noqa: E731
    inits = [f(rng.normal(size=(1, 4 * H, I)).astype(np.float32), "W"),
             f(rng.normal(size=(1, 4 * H, H)).astype(np.float32), "R"),
             f(np.array([1], np.int64), "one"), f(np.array([6], np.int64), "six"),
             f(np.array([1], np.int64), "s1"), f(np.array([2], np.int64), "s2"), f(np.array(0, np.float32), "z")]
    nodes = []
    if how == "constant":
        inits.append(f(np.zeros((1, 1, 6), np.float32), "c0"))
    else:  # zeros (1, B, 6), B from x (T, B, I)
        nodes += [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Slice", ["shp", "s1", "s2"], ["b"]),
                  helper.make_node("Concat", ["one", "b", "six"], ["dims"], axis=0),
                  helper.make_node("Expand", ["z", "dims"], ["c0"])]
    nodes += [helper.make_node("LSTM", ["x", "W", "R", "", "", "", "c0"], ["Y"], hidden_size=H),
              helper.make_node("Squeeze", ["Y", "one"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", FLOAT, ["T", "B", I])],
                              [helper.make_tensor_value_info("y", FLOAT, ["T", "B", H])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(Exception, match="initial_c"):  # onnxruntime: "Input initial_c must have shape"
        _ort(proto, {"x": rng.normal(size=(2, 2, I)).astype(np.float32)})
    with pytest.raises(srnn.FormatError, match=r"initial_c: expected shape \(1, batch, 3\), got \(1, \w+, 6\)"):
        srnn.from_onnx(proto.SerializeToString())
