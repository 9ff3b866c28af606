"""ONNX files from torch.onnx.export(..., dynamo=True), the default exporter of the pinned torch
(2.13): opset 20, weights under generated names, initial states built by Shape / Concat /
Expand, the sequence length sometimes baked into Reshape nodes. Each export is loaded and
checked against the PyTorch module it came from (fresh random weights and inputs)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the dynamo exporter's dependency (in the test extra)

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph_model import GraphModel  # noqa: E402

AUTO = torch.export.Dim.AUTO  # named Dims got the sequence length specialised in some exports
TOL = dict(rtol=1e-5, atol=1e-6)


def _export(net, args, dynamic_shapes) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(net.eval(), args, dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
    return prog.model_proto.SerializeToString()


class Head(torch.nn.Module):
    def __init__(self, cls, residual=False, **kw):
        super().__init__()
        self.rnn = cls(4, 4 if residual else 6, **kw)
        D_ = 2 if kw.get("bidirectional") else 1
        self.fc = torch.nn.Linear((4 if residual else 6) * D_, 3)
        self.residual = residual

    def forward(self, x):
        y = self.rnn(x)[0]
        return self.fc(y + x if self.residual else y)


CASES = {
    # name: (module, x shape as traced, dynamic axes of x (names: documentation), batch-first,
    # chain model expected)
    "lstm batch_first": (lambda: Head(torch.nn.LSTM, batch_first=True), (2, 5, 4), {0: "b", 1: "t"}, True, True),
    "gru 2 layers": (lambda: Head(torch.nn.GRU, batch_first=True, num_layers=2), (2, 5, 4), {0: "b", 1: "t"}, True, True),
    "lstm bidirectional": (lambda: Head(torch.nn.LSTM, batch_first=True, bidirectional=True), (2, 5, 4),
                           {0: "b", 1: "t"}, True, True),
    "lstm residual": (lambda: Head(torch.nn.LSTM, residual=True, batch_first=True), (2, 5, 4), {0: "b", 1: "t"},
                      True, False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_dynamo_export_runs_and_streams_as_pytorch(name):
    make, shape, dyn, batch_first, chain = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    net = make().eval()
    model = srnn.from_onnx(_export(net, (torch.randn(*shape),), ({k: AUTO for k in dyn},)))
    assert isinstance(model, GraphModel) != chain, type(model)
    X = np.random.default_rng(len(name)).normal(size=shape).astype(np.float32)  # the traced sizes
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    Xb, Yb = (X, want) if batch_first else (X.transpose(1, 0, 2), want.transpose(1, 0, 2))  # (B, T, .)
    np.testing.assert_allclose(model.run(Xb), Yb, **TOL)
    if "bidirectional" in name:
        assert not model.streamable
        return
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in Xb[1]]), Yb[1], **TOL)
    pool = model.pool(4)
    ids = pool.open(2)
    np.testing.assert_allclose(np.stack([pool.step(ids, Xb[:, t]) for t in range(Xb.shape[1])], 1), Yb, **TOL)


def test_dynamo_step_export_with_state_streams():
    """The streaming export: one frame, h / c in and out, y = Linear(LSTM(x) + x); a graph model
    whose stream and pool step equal PyTorch on the whole sequence."""
    from test_onnx_graph_model import ResidualStep

    torch.manual_seed(41)
    net = ResidualStep().eval()
    z = torch.zeros(1, 2, 4)
    model = srnn.from_onnx(_export(net, (torch.randn(2, 1, 4), z, z), ({0: AUTO}, {1: AUTO}, {1: AUTO})))
    assert isinstance(model, GraphModel) and model.streamable and model.frame_step["planned"]
    X = np.random.default_rng(42).normal(size=(3, 7, 4)).astype(np.float32)
    z3 = torch.zeros(1, 3, 4)
    with torch.no_grad():
        want = net(torch.from_numpy(X), z3, z3)[0].numpy()
    np.testing.assert_allclose(model.run(X), want, **TOL)
    s = model.stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X[2]]), want[2], **TOL)
    pool = model.pool(3)
    ids = pool.open(3)
    np.testing.assert_allclose(np.stack([pool.step(ids, X[:, t]) for t in range(7)], 1), want, **TOL)


def test_dynamo_export_with_the_length_baked_in_is_refused_with_the_reason():
    """nn.LSTM time-major (batch_first=False, its default): the exporter (torch 2.13, onnxscript
    0.7.2) declares x (T, B, 4) with T free but reshapes the LSTM's output to (5, -1, 6), the
    traced length; onnxruntime runs it on 5 frames only. The load refuses it with the reason and
    what to do instead; the same module exported with dynamo=False loads and runs."""
    import io

    torch.manual_seed(43)
    net = Head(torch.nn.LSTM).eval()
    x = torch.randn(5, 2, 4)
    with pytest.raises(srnn.UnsupportedError, match=r"fix a size .* leaves free .*dynamo=False"):
        srnn.from_onnx(_export(net, (x,), ({0: AUTO, 1: AUTO},)))
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), f, input_names=["x"], output_names=["y"], dynamo=False, opset_version=17,
                          dynamic_axes={"x": {0: "t", 1: "b"}, "y": {0: "t", 1: "b"}})
    model = srnn.from_onnx(f.getvalue())
    X = np.random.default_rng(44).normal(size=(7, 3, 4)).astype(np.float32)  # (T, B, I), another length
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.run(X.transpose(1, 0, 2)), want.transpose(1, 0, 2), **TOL)


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # torch's own
def test_dynamo_export_of_an_lstm_with_projection_is_refused_with_the_reason(tmp_path):
    """nn.LSTM(proj_size=3): the exporter writes a plain LSTM of hidden_size 3 (no projection in
    ONNX's LSTM) fed an initial c of size 6; onnxruntime fails when it runs. It used to load as
    a chain and run a different model (max error 0.2 against PyTorch, no error). Now FormatError
    with what to do; the PyTorch checkpoint of the same module loads and matches."""
    torch.manual_seed(45)
    net = Head(torch.nn.LSTM, batch_first=True, proj_size=3)
    net.fc = torch.nn.Linear(3, 3)
    net.eval()
    with pytest.raises(srnn.FormatError, match=r"initial_c: .*proj_size.*PyTorch checkpoint"):
        srnn.from_onnx(_export(net, (torch.randn(2, 5, 4),), ({0: AUTO, 1: AUTO},)))
    path = tmp_path / "lstmp.pt"
    torch.save(net.state_dict(), path)
    model = srnn.load(path)
    X = np.random.default_rng(46).normal(size=(2, 5, 4)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.run(X), want, **TOL)
