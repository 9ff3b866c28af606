"""Models exported by torch.onnx.export (legacy exporter) load with srnn.load as fused chains
and match PyTorch in run, in stepping, in chunked pushing and in a pool; the session matches
onnxruntime on the same files with non-zero state inputs."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import streamrnn as srnn  # noqa: E402

I, H, O = 4, 5, 3


class Net(torch.nn.Module):
    """An nn.LSTM / GRU / RNN with a Linear head, optionally h/c state inputs and outputs."""

    def __init__(self, kind, layers, bi, batch_first, state_io, head_act):
        super().__init__()
        self.kind, self.state_io, self.head_act = kind, state_io, head_act
        cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[kind]
        self.rnn = cls(I, H, num_layers=layers, bidirectional=bi, batch_first=batch_first)
        self.fc = torch.nn.Linear(H * (2 if bi else 1), O)

    def head(self, y):
        y = self.fc(y)
        return {"none": y, "relu": torch.relu(y), "logsoftmax": torch.log_softmax(y, -1)}[self.head_act]

    def forward(self, x, h0=None, c0=None):
        if not self.state_io:
            y, _ = self.rnn(x)
            return self.head(y)
        if self.kind == "LSTM":
            y, (h, c) = self.rnn(x, (h0, c0))
            return self.head(y), h, c
        y, h = self.rnn(x, h0)
        return self.head(y), h


CONFIGS = [
    # kind, layers, bidirectional, batch_first, state inputs/outputs, head activation, dynamic axes
    ("LSTM", 1, False, False, True, "none", True),
    ("LSTM", 2, False, True, True, "relu", True),
    ("LSTM", 3, False, False, False, "logsoftmax", True),
    ("LSTM", 2, True, True, True, "none", True),
    ("GRU", 1, False, True, False, "none", True),
    ("GRU", 2, False, False, True, "relu", True),
    ("GRU", 3, True, False, True, "none", True),
    ("RNN", 1, False, False, True, "none", True),
    ("RNN", 2, False, True, False, "relu", True),
    ("RNN", 3, True, True, True, "none", True),
    ("LSTM", 2, False, True, False, "none", False),  # fixed shapes (no dynamic axes)
]
IDS = [f"{c[0]}-L{c[1]}-{'bi' if c[2] else 'uni'}-{'bf' if c[3] else 'tf'}-{'state' if c[4] else 'nostate'}-{c[5]}-{'dyn' if c[6] else 'fixed'}" for c in CONFIGS]


def _export(cfg, tmp_path):
    kind, layers, bi, bf, state_io, act, dyn = cfg
    torch.manual_seed(hash(cfg) % 2**31)
    net = Net(kind, layers, bi, bf, state_io, act).eval()
    D = 2 if bi else 1
    x = torch.randn(3, 7, I) if bf else torch.randn(7, 3, I)
    h = torch.randn(layers * D, 3, H)
    args = (x,) if not state_io else ((x, h, h.clone()) if kind == "LSTM" else (x, h))
    names = ["x", "h0", "c0"][: len(args)]
    outs = ["y", "hn", "cn"][: len(args)] if state_io else ["y"]
    axes = None
    if dyn:
        axes = {"x": {0: "d0", 1: "d1"}, "y": {0: "d0", 1: "d1"}, "h0": {1: "b"}, "c0": {1: "b"}, "hn": {1: "b"}, "cn": {1: "b"}}
        axes = {k: v for k, v in axes.items() if k in names + outs}
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, str(path), input_names=names, output_names=outs, dynamic_axes=axes,
                          dynamo=False, opset_version=17)
    return net, path


def _torch_run(net, cfg, X, state=None):
    """X (B, T, I) numpy -> torch's Y (B, T, O) and final states, from zero or given h0 / c0."""
    kind, layers, bi, bf = cfg[:4]
    D = 2 if bi else 1
    B = X.shape[0]
    xt = torch.from_numpy(X if bf else X.transpose(1, 0, 2).copy())
    h0 = torch.zeros(layers * D, B, H) if state is None else torch.from_numpy(state[0])
    c0 = torch.zeros(layers * D, B, H) if state is None else torch.from_numpy(state[1])
    with torch.no_grad():
        if kind == "LSTM":
            y, (h, c) = net.rnn(xt, (h0, c0))
        else:
            y, h = net.rnn(xt, h0)
            c = None
        y = net.head(y).numpy()
    return (y if bf else y.transpose(1, 0, 2)), h.numpy(), None if c is None else c.numpy()


def _state_from_torch(model, kind, h, c):
    """torch h0 / c0 (L*D, B, H) -> the chain model's flat (B, S) state."""
    B = h.shape[1]
    data = np.zeros((B, model.state_size), np.float32)
    rec = [i for i, _ in model.spec.recurrent()]
    for li, d, k, off, n in model.spec.state_slots():
        layer = rec.index(li)
        D = model.spec.layers[li].num_directions
        src = h if k == "h" else c
        data[:, off : off + n] = src[layer * D + d]
    return data


@pytest.fixture(params=CONFIGS, ids=IDS)
def exported(request, tmp_path):
    cfg = request.param
    net, path = _export(cfg, tmp_path)
    return cfg, net, path


def test_loads_as_fused_chain(exported):
    cfg, net, path = exported
    model = srnn.load(path)
    assert isinstance(model, srnn.Model)
    kinds = [type(l).__name__ for l in model.spec.layers]
    assert kinds.count(f"{cfg[0]}Layer") == cfg[1]
    assert model.input_size == I and model.output_size == O
    assert model.streamable == (not cfg[2])


def test_run_matches_torch(exported):
    cfg, net, path = exported
    model = srnn.load(path)
    rng = np.random.default_rng(0)
    B, T = (3, 7) if not cfg[6] else (2, 9)
    X = rng.normal(size=(B, T, I)).astype(np.float32)
    y, h, c = _torch_run(net, cfg, X)
    np.testing.assert_allclose(model.run(X), y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.run(X[0]), y[0], rtol=1e-5, atol=1e-5)
    # with an initial state: outputs and final states as torch (h0/c0 -> hn/cn pairing)
    D = 2 if cfg[2] else 1
    h0 = rng.normal(size=(cfg[1] * D, B, H)).astype(np.float32)
    c0 = rng.normal(size=(cfg[1] * D, B, H)).astype(np.float32)
    y, h, c = _torch_run(net, cfg, X, (h0, c0))
    Y, st = model.run(X, state=_state_from_torch(model, cfg[0], h0, c0), return_state=True)
    np.testing.assert_allclose(Y, y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(st.data, _state_from_torch(model, cfg[0], h, c if c is not None else h), rtol=1e-5, atol=1e-5)


def test_float64(exported):
    cfg, net, path = exported
    model = srnn.load(path, dtype="float64")
    X = np.random.default_rng(1).normal(size=(2, 7, I))
    Y = model.run(X)
    assert Y.dtype == np.float64
    net64 = net.double()
    kind, layers, bi, bf = cfg[:4]
    xt = torch.from_numpy(X if bf else X.transpose(1, 0, 2).copy())
    with torch.no_grad():
        y = net64.head(net64.rnn(xt)[0]).numpy()
    np.testing.assert_allclose(Y, y if bf else y.transpose(1, 0, 2), rtol=1e-10, atol=1e-10)


def test_stream_step_push_pool_match_torch(exported):
    cfg, net, path = exported
    model = srnn.load(path)
    if cfg[2]:
        with pytest.raises(srnn.StreamRNNError, match="bidirectional"):
            model.stream()
        with pytest.raises(srnn.StreamRNNError):
            model.pool(4)
        return
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2, 11, I)).astype(np.float32)
    y, _, _ = _torch_run(net, cfg, X)
    s = model.stream()
    steps = np.stack([s.step(x) for x in X[0]])
    np.testing.assert_allclose(steps, y[0], rtol=1e-5, atol=1e-5)
    s.reset()
    chunks = np.concatenate([s.push(X[0][a:b]) for a, b in ((0, 1), (1, 5), (5, 6), (6, 11))])
    np.testing.assert_allclose(chunks, y[0], rtol=1e-5, atol=1e-5)
    pool = model.pool(4)
    ids = pool.open(2)
    out = np.stack([pool.step(ids, X[:, t]) for t in range(X.shape[1])], axis=1)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)


def test_session_matches_onnxruntime(exported):
    """The exported file through srnn.InferenceSession == onnxruntime, state inputs included."""
    cfg, net, path = exported
    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    sess = srnn.InferenceSession(str(path))
    assert [(i.name, i.type) for i in sess.get_inputs()] == [(i.name, i.type) for i in ref.get_inputs()]
    assert [o.name for o in sess.get_outputs()] == [o.name for o in ref.get_outputs()]
    rng = np.random.default_rng(3)
    feeds = {i.name: rng.normal(size=[d if isinstance(d, int) else 3 for d in i.shape]).astype(np.float32)
             for i in ref.get_inputs()}
    for g, w in zip(sess.run(None, feeds), ref.run(None, feeds)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamic_batch", [True, False])
def test_single_step_export_generalises(tmp_path, dynamic_batch):
    """A 'stateful' export of one time step (T fixed to 1, h/c in and out) loads as a chain that
    runs any number of frames and streams."""

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = torch.nn.LSTM(I, H, num_layers=2), torch.nn.Linear(H, O)

        def forward(self, x, h, c):
            y, (h2, c2) = self.rnn(x, (h, c))
            return self.fc(y), h2, c2

    torch.manual_seed(5)
    net = Step().eval()
    path = tmp_path / "step.onnx"
    axes = {"x": {1: "b"}, "h": {1: "b"}, "c": {1: "b"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 1, I), torch.zeros(2, 1, H), torch.zeros(2, 1, H)), str(path),
                          input_names=["x", "h", "c"], output_names=["y", "hn", "cn"], dynamic_axes=axes,
                          dynamo=False, opset_version=17)
    model = srnn.load(path)
    assert isinstance(model, srnn.Model)
    X = np.random.default_rng(6).normal(size=(3, 8, I)).astype(np.float32)
    with torch.no_grad():
        y = net.fc(net.rnn(torch.from_numpy(X.transpose(1, 0, 2).copy()))[0]).numpy().transpose(1, 0, 2)
    np.testing.assert_allclose(model.run(X), y, rtol=1e-5, atol=1e-5)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[1]]), y[1], rtol=1e-5, atol=1e-5)
