"""Step exports: ONNX graphs of ONE frame whose state goes in and out through graph inputs and
outputs, the usual way to export a model for streaming.

* X (B, I) with no time axis, a recurrent node behind the state (``nn.LSTM`` / ``nn.GRU`` fed
  ``x[None]``): the rows of X are streams, not frames. Before, the rows were taken as frames of
  one sequence; the load failed with a bare numpy ValueError.
* No recurrent node at all (``nn.LSTMCell`` / ``nn.GRUCell`` / a hand-written cell): the graph
  computes the state itself, and the model feeds each output back to its input (paired by name,
  or by ``state_map``). Before, such graphs were refused.
* Silero-VAD-shaped graphs: a framewise feature extractor (reflect Pad, Conv STFT, Conv1d
  encoder) in front of an LSTM whose state is packed as (2, B, H).

Every case is checked against PyTorch run frame by frame with the state fed back, over
``run`` (several streams, ragged lengths), ``stream`` (step and push) and ``pool``.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph_model import GraphModel  # noqa: E402

from conftest import assert_close  # noqa: E402

I, H, O = 5, 6, 3


class LSTMStep(torch.nn.Module):
    """nn.LSTM on one frame of B streams: x (B, I), h / c (L, B, H)."""

    def __init__(self, layers=1):
        super().__init__()
        self.rnn, self.fc = torch.nn.LSTM(I, H, num_layers=layers), torch.nn.Linear(H, O)

    def forward(self, x, h, c):
        y, (h, c) = self.rnn(x[None], (h, c))
        return self.fc(y[0]), h, c


class GRUStepPacked(torch.nn.Module):
    """Two-layer nn.GRU, one frame, its state named "state" / "stateN"."""

    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.GRU(I, H, num_layers=2), torch.nn.Linear(H, O)

    def forward(self, x, state):
        y, s = self.rnn(x[None], state)
        return torch.tanh(self.fc(y[0])), s


class LSTMCellStep(torch.nn.Module):
    """nn.LSTMCell: no recurrent ONNX node, the graph computes the state itself."""

    def __init__(self):
        super().__init__()
        self.cell, self.fc = torch.nn.LSTMCell(I, H), torch.nn.Linear(H, O)

    def forward(self, x, h, c):
        h, c = self.cell(x, (h, c))
        return self.fc(h), h, c


class GRUCellStep(torch.nn.Module):
    """nn.GRUCell: written out as plain ops by the exporters, fused back into a GRU node."""

    def __init__(self):
        super().__init__()
        self.cell, self.fc = torch.nn.GRUCell(I, H), torch.nn.Linear(H, O)

    def forward(self, x, h):
        h = self.cell(x, h)
        return self.fc(h), h


class RNNCellStep(torch.nn.Module):
    """nn.RNNCell (tanh or relu): Tanh / Relu of two Gemms added, fused back into an RNN node."""

    def __init__(self, nonlinearity="tanh"):
        super().__init__()
        self.cell, self.fc = torch.nn.RNNCell(I, H, nonlinearity=nonlinearity), torch.nn.Linear(H, O)

    def forward(self, x, h):
        h = self.cell(x, h)
        return self.fc(h), h


class LSTMCellPacked(torch.nn.Module):
    """nn.LSTMCell with its h and c packed into one state (2, B, H), as Silero packs its own."""

    def __init__(self):
        super().__init__()
        self.cell, self.fc = torch.nn.LSTMCell(I, H), torch.nn.Linear(H, O)

    def forward(self, x, state):
        h, c = self.cell(x, (state[0], state[1]))
        return self.fc(h), torch.stack([h, c])


class LSTMCellStack(torch.nn.Module):
    """Two stacked nn.LSTMCell, four states."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = torch.nn.LSTMCell(I, H), torch.nn.LSTMCell(H, H), torch.nn.Linear(H, O)

    def forward(self, x, h1, c1, h2, c2):
        h1, c1 = self.a(x, (h1, c1))
        h2, c2 = self.b(h1, (h2, c2))
        return self.fc(h2), h1, c1, h2, c2


class GRUCellStack(torch.nn.Module):
    """Two stacked nn.GRUCell with a residual, their states packed (2, B, H)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = torch.nn.GRUCell(I, H), torch.nn.GRUCell(H, H), torch.nn.Linear(H, O)

    def forward(self, x, state):
        h1 = self.a(x, state[0])
        h2 = self.b(h1, state[1]) + h1
        return self.fc(h2), torch.stack([h1, h2])


class LeakyIntegrator(torch.nn.Module):
    """A hand-written recurrence: s' = a * s + tanh(W x); y = V s'."""

    def __init__(self):
        super().__init__()
        self.w, self.v = torch.nn.Linear(I, H), torch.nn.Linear(H, O)
        self.a = torch.nn.Parameter(torch.rand(H) * 0.9)

    def forward(self, x, mem):
        m = self.a * mem + torch.tanh(self.w(x))
        return self.v(m), m


class ConcatCell(torch.nn.Module):
    """A hand-written cell on cat([x, h]): its graph runs only with h of X's batch (the first
    probe, rows as frames and h of batch 1, fails in the Concat)."""

    def __init__(self):
        super().__init__()
        self.l, self.fc = torch.nn.Linear(I + H, H), torch.nn.Linear(H, O)

    def forward(self, x, h):
        h = torch.tanh(self.l(torch.cat([x, h], 1)))
        return self.fc(h), h


class StreamingConv(torch.nn.Module):
    """A causal Conv1d over time whose last K - 1 frames are a state (a streaming model's conv
    cache), then a GRUCell: two states of different shapes fed back."""

    K = 3

    def __init__(self):
        super().__init__()
        self.conv, self.cell, self.fc = torch.nn.Conv1d(I, 7, self.K), torch.nn.GRUCell(7, H), torch.nn.Linear(H, O)

    def forward(self, x, cache, h):
        buf = torch.cat([cache, x[:, :, None]], 2)  # (B, I, K)
        h = self.cell(torch.relu(self.conv(buf))[:, :, 0], h)
        return self.fc(h), buf[:, :, 1:], h


class SileroLike(torch.nn.Module):
    """Silero VAD's shape at a small size: x (B, N) samples, state (2, B, H) -> p (B, 1), stateN.
    Reflect pad, an STFT as a Conv1d with a fixed basis, the magnitude, a Conv1d encoder, an
    LSTM step, a 1x1 Conv1d decoder, the mean over the chunk's frames."""

    N, FFT, HOP = 96, 32, 16

    def __init__(self):
        super().__init__()
        self.register_buffer("basis", torch.randn(self.FFT + 2, 1, self.FFT) * 0.2)
        self.enc1 = torch.nn.Conv1d(self.FFT // 2 + 1, 12, 3, padding=1)
        self.enc2 = torch.nn.Conv1d(12, H, 3, stride=2, padding=1)
        self.rnn = torch.nn.LSTM(H, H)
        self.dec = torch.nn.Conv1d(H, 1, 1)

    def forward(self, x, state):
        x = torch.nn.functional.pad(x[:, None], (self.HOP, self.HOP), mode="reflect")[:, 0]
        s = torch.nn.functional.conv1d(x[:, None], self.basis, stride=self.HOP)  # (B, FFT + 2, F)
        k = self.FFT // 2 + 1
        mag = torch.sqrt(s[:, :k] ** 2 + s[:, k:] ** 2)
        z = torch.relu(self.enc2(torch.relu(self.enc1(mag))))  # (B, H, F')
        z = z.mean(dim=2)  # (B, H)
        y, (h, c) = self.rnn(z[None], (state[:1], state[1:]))
        p = torch.sigmoid(self.dec(torch.relu(y[0])[:, :, None]))  # (B, 1, 1)
        return p[:, :, 0], torch.cat([h, c])


def _export(net, inputs, names, outs, batch_axes):
    """ONNX bytes of ``net`` on ``inputs``; ``batch_axes``: name -> its batch axis (None: fixed)."""
    f = io.BytesIO()
    dyn = {n: {a: "b"} for n, a in batch_axes.items() if a is not None} or None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), inputs, f, input_names=names, output_names=outs, dynamic_axes=dyn,
                          dynamo=False, opset_version=17)
    return f.getvalue()


def _torch_frames(net, X, states):
    """PyTorch frame by frame: X (B, T, I); ``states`` the initial state tensors (batch B) -> Y (B, T, O)."""
    Y = []
    with torch.no_grad():
        st = [torch.from_numpy(s) for s in states]
        for t in range(X.shape[1]):
            out = net(torch.from_numpy(np.ascontiguousarray(X[:, t])), *st)
            Y.append(out[0].numpy())
            st = list(out[1:])
    return np.stack(Y, 1)


# (module, input names, output names, state shapes with B for the batch, batch axis of each, input size)
CASES = {
    "lstm_step": (lambda: LSTMStep(), ["x", "h", "c"], ["y", "hn", "cn"], [(1, "B", H), (1, "B", H)], 1, I),
    "lstm2_step": (lambda: LSTMStep(2), ["x", "h", "c"], ["y", "hn", "cn"], [(2, "B", H), (2, "B", H)], 1, I),
    "gru_packed": (GRUStepPacked, ["x", "state"], ["y", "stateN"], [(2, "B", H)], 1, I),
    "lstm_cell": (LSTMCellStep, ["x", "h", "c"], ["y", "hn", "cn"], [("B", H), ("B", H)], 0, I),
    "gru_cells": (GRUCellStack, ["x", "state"], ["y", "stateN"], [(2, "B", H)], 1, I),
    "integrator": (LeakyIntegrator, ["x", "mem"], ["y", "mem_next"], [("B", H)], 0, I),
    "concat_cell": (ConcatCell, ["x", "h"], ["y", "h_out"], [("B", H)], 0, I),
    "gru_cell": (GRUCellStep, ["x", "h"], ["y", "hn"], [("B", H)], 0, I),
    "lstm_cell_packed": (LSTMCellPacked, ["x", "state"], ["y", "stateN"], [(2, "B", H)], 1, I),
    "rnn_cell_tanh": (lambda: RNNCellStep("tanh"), ["x", "h"], ["y", "hn"], [("B", H)], 0, I),
    "rnn_cell_relu": (lambda: RNNCellStep("relu"), ["x", "h"], ["y", "hn"], [("B", H)], 0, I),
    "lstm_cells2": (lambda: LSTMCellStack(), ["x", "h1", "c1", "h2", "c2"], ["y", "h1_out", "c1_out", "h2_out", "c2_out"],
                    [("B", H), ("B", H), ("B", H), ("B", H)], 0, I),
    "conv_cache": (StreamingConv, ["x", "cache", "h"], ["y", "cache_out", "h_out"],
                   [("B", I, StreamingConv.K - 1), ("B", H)], 0, I),
    "silero_like": (SileroLike, ["input", "state"], ["output", "stateN"], [(2, "B", H)], 1, SileroLike.N),
}


def _case(name, seed, dynamic=True):
    make, names, outs, shapes, bax, n_in = CASES[name]
    torch.manual_seed(seed)
    net = make().eval()
    ex = [torch.randn(2, n_in)] + [torch.zeros(*[2 if d == "B" else d for d in s]) for s in shapes]
    axes = {n: (0 if k == 0 else bax) if dynamic else None for k, n in enumerate(names)}
    axes.update({n: (0 if k == 0 else bax) if dynamic else None for k, n in enumerate(outs)})
    if not dynamic:  # batch fixed to 1
        ex = [e[:1] if k == 0 else e.narrow(bax, 0, 1) for k, e in enumerate(ex)]
    return net, _export(net, tuple(ex), names, outs, axes), shapes, n_in


def _zeros(shapes, B, dtype=np.float32):
    return [np.zeros([B if d == "B" else d for d in s], dtype) for s in shapes]


#: exports whose LSTM cells are fused into LSTM nodes at load (converters/onnx_cells.py): they
#: become chain models; the others stay graph models, planned step or general path
FUSED = {"lstm_cell", "lstm_cells2", "gru_cell", "lstm_cell_packed", "rnn_cell_tanh", "rnn_cell_relu"}


@pytest.mark.parametrize("name,planned", [(n, p) for n in sorted(CASES) for p in (True, False)
                                          if p or n not in FUSED])
def test_step_export_runs_streams_and_pools_as_torch(name, planned):
    net, blob, shapes, n_in = _case(name, 3)
    model = srnn.from_onnx(blob)
    if name in FUSED:
        assert isinstance(model, srnn.Model), model  # one fused LSTM layer per cell, and the head
    else:
        assert isinstance(model, GraphModel) and model.streamable and model.plan.frame_rows, model
        assert model.frame_step["planned"], model.frame_step
    if not planned:  # the general path: the whole graph evaluated for each frame
        model._step = None
    assert model.input_size == n_in and model.output_size == (1 if name == "silero_like" else O)
    assert model.state_size == sum(int(np.prod([d for d in s if d != "B"])) for s in shapes)
    rng = np.random.default_rng(4)
    B, T = 3, 6
    X = rng.normal(size=(B, T, n_in)).astype(np.float32)
    want = _torch_frames(net, X, _zeros(shapes, B))
    assert np.abs(want).max() > 1e-3  # not zeros
    assert_close(model.run(X), want)
    s = model.stream()
    assert_close(np.stack([s.step(x) for x in X[1]]), want[1])
    s.reset()
    assert_close(np.concatenate([s.push(X[2, :2]), s.push(X[2, 2:])]), want[2])
    pool = model.pool(5)
    ids = pool.open(B)[::-1]
    Y = np.stack([pool.step(ids, X[::-1, t]) for t in range(T)], 1)[::-1]
    assert_close(Y, want)
    # ragged lengths: past its length a sequence's output is 0, its state the one at its length
    L = np.array([T, 2, 0])
    Yl, st = model.run(X, lengths=L, return_state=True)
    assert_close(Yl[0], want[0])
    assert_close(Yl[1, :2], want[1, :2])
    assert not Yl[1, 2:].any() and not Yl[2].any() and not st.data[2].any()
    _, st1 = model.run(X[1, :2], return_state=True)
    assert_close(st.data[1], st1.data)
    # a state restored: the stream goes on as torch from that state
    s2 = model.stream()
    s2.state = st1
    assert_close(np.stack([s2.step(x) for x in X[1, 2:]]), want[1, 2:])


@pytest.mark.parametrize("name", ["lstm_step", "lstm_cell", "silero_like"])
def test_step_export_float64(name):
    net, blob, shapes, n_in = _case(name, 5)
    model = srnn.from_onnx(blob, dtype="float64")
    X = np.random.default_rng(6).normal(size=(2, 4, n_in))
    want = _torch_frames(net.double(), X, _zeros(shapes, 2, np.float64))
    assert_close(model.run(X), want, np.float64)
    pool = model.pool(2)
    ids = pool.open(2)
    assert_close(np.stack([pool.step(ids, X[:, t]) for t in range(4)], 1), want, np.float64)


class RowMixer(torch.nn.Module):
    """A cell step whose output adds the sum over the batch: for one stream 2 h, for a batch
    every row mixed with the others. Exported for one stream, its rows must not be batched."""

    def __init__(self):
        super().__init__()
        self.cell, self.fc = torch.nn.GRUCell(I, H), torch.nn.Linear(H, O)

    def forward(self, x, h):
        h = self.cell(x, h)
        return self.fc(h + h.sum(dim=0, keepdim=True)), h


CASES["row_mixer"] = (RowMixer, ["x", "h"], ["y", "hn"], [("B", H)], 0, I)


@pytest.mark.parametrize("name", ["lstm_step", "lstm_cell", "gru_cells", "silero_like", "concat_cell", "row_mixer"])
def test_step_export_with_batch_fixed_to_one(name):
    """Exported without dynamic axes (batch 1). Where 3 rows evaluated at once equal them one by
    one (at load, random inputs and states), a pool steps its streams in one evaluation; the row
    mixer does not, and each stream is evaluated alone."""
    net, blob, shapes, n_in = _case(name, 7, dynamic=False)
    model = srnn.from_onnx(blob)
    if name in FUSED:
        assert isinstance(model, srnn.Model), model
    else:
        assert model.streamable
        assert model.plan.frame_rows == (name != "row_mixer") and model.plan.per_item == (name == "row_mixer")
    X = np.random.default_rng(8).normal(size=(2, 5, n_in)).astype(np.float32)
    want = np.concatenate([_torch_frames(net, X[b : b + 1], _zeros(shapes, 1)) for b in range(2)])
    assert_close(model.run(X), want)
    pool = model.pool(3)
    ids = pool.open(2)
    assert_close(np.stack([pool.step(ids, X[:, t]) for t in range(5)], 1), want)


def test_planned_steps_and_failed_frames_leave_states():
    net, blob, shapes, _ = _case("gru_cells", 9)
    model = srnn.from_onnx(blob)
    assert model.frame_step["planned"], model.frame_step
    s = model.stream()
    x = np.random.default_rng(10).normal(size=(3, I)).astype(np.float32)
    s.step(x[0])
    before = s.state.data.copy()
    for bad in (np.full(I, np.nan, np.float32), np.zeros(I + 1, np.float32)):
        with pytest.raises(srnn.StreamRNNError, match="x"):
            s.step(bad)
        assert np.array_equal(s.state.data, before)
    pool = model.pool(3)
    ids = pool.open(2)
    pool.step(ids, x[:2])
    snap = [pool.get_state(int(i)).data.copy() for i in ids]
    with pytest.raises(srnn.StreamRNNError, match="X"):
        pool.step(ids, np.array([x[0], [np.inf] * I], np.float32))
    assert all(np.array_equal(pool.get_state(int(i)).data, d) for i, d in zip(ids, snap))
    # the state round-trips through bytes
    s2 = model.stream()
    s2.load_state_bytes(s.state_bytes())
    assert np.array_equal(s2.step(x[2]), s.step(x[2]))


def test_state_names_that_do_not_pair_need_state_map():
    """Inputs / outputs whose names do not tell the pairing: refused, naming state_map; with it,
    the model equals torch."""
    torch.manual_seed(11)
    net = LeakyIntegrator().eval()
    blob = _export(net, (torch.randn(2, I), torch.zeros(2, H)), ["x", "a"], ["y", "b"],
                   {"x": 0, "a": 0, "y": 0, "b": 0})
    with pytest.raises(srnn.UnsupportedError, match=r"inputs \['a'\].*state_map=\{'a': \.\.\.\}"):
        srnn.from_onnx(blob)
    with pytest.raises(srnn.UnsupportedError, match="a state fed back keeps its shape"):
        srnn.from_onnx(blob, state_map={"a": "y"})  # y (B, 3) is no state of a (B, 6)
    model = srnn.from_onnx(blob, state_map={"a": "b"})
    X = np.random.default_rng(12).normal(size=(2, 4, I)).astype(np.float32)
    assert_close(model.run(X), _torch_frames(net, X, _zeros([("B", H)], 2)))


class CellFrame(torch.nn.Module):
    """A GRUCell step on x (B, 1, I): rank 3, the time axis fixed to one frame, no recurrent node."""

    def __init__(self):
        super().__init__()
        self.cell, self.fc = torch.nn.GRUCell(I, H), torch.nn.Linear(H, O)

    def forward(self, x, h):
        h = self.cell(x[:, 0], h)
        return self.fc(h)[:, None], h


def test_cell_step_with_a_time_axis_of_one_frame():
    """x (b, 1, I): the first probe (time-major, h of batch 1) gives hn of X's batch; that try
    is dropped (a state fed back keeps its shape) and the batch-first one taken."""
    torch.manual_seed(13)
    net = CellFrame().eval()
    blob = _export(net, (torch.randn(2, 1, I), torch.zeros(2, H)), ["x", "h"], ["y", "hn"],
                   {"x": 0, "h": 0, "y": 0, "hn": 0})
    model = srnn.from_onnx(blob)
    assert model.plan.fixed_T == 1 and not model.plan.time_major and model.streamable
    X = np.random.default_rng(14).normal(size=(3, 5, I)).astype(np.float32)
    want = _torch_frames(net, X[:, :, None], _zeros([("B", H)], 3))[:, :, 0]
    assert_close(model.run(X), want)
    pool = model.pool(3)
    ids = pool.open(3)
    assert_close(np.stack([pool.step(ids, X[:, t]) for t in range(5)], 1), want)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_cell_step_from_the_dynamo_exporter(cell):
    pytest.importorskip("onnxscript")
    torch.manual_seed(15)
    net = (LSTMCellStep() if cell == "lstm" else GRUCellStep()).eval()
    names = ["h", "c"] if cell == "lstm" else ["h"]
    f = io.BytesIO()
    auto = {0: torch.export.Dim.AUTO}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, I),) + tuple(torch.zeros(2, H) for _ in names), f, dynamo=True,
                          input_names=["x"] + names, output_names=["y"] + [n + "n" for n in names],
                          dynamic_shapes={k: auto for k in ["x"] + names})
    model = srnn.from_onnx(f.getvalue())
    assert isinstance(model, srnn.Model)  # its cell fused into an LSTM / GRU layer, as the other exporter's
    X = np.random.default_rng(16).normal(size=(3, 5, I)).astype(np.float32)
    want = _torch_frames(net, X, _zeros([("B", H)] * len(names), 3))
    assert_close(model.run(X), want)
    s = model.stream()
    assert_close(np.stack([s.step(x) for x in X[2]]), want[2])


def test_print_and_inspect_name_the_states_fed_back(tmp_path):
    import json
    import subprocess
    import sys

    _, blob, _, _ = _case("conv_cache", 17)
    path = tmp_path / "step.onnx"
    path.write_bytes(blob)
    model = srnn.load(str(path))
    assert f"states the graph feeds back: cache_out -> cache ({I * 2} floats), h_out -> h ({H} floats)" in str(model)
    r = subprocess.run([sys.executable, "-m", "streamrnn", "inspect", "--json", str(path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert [(f["input"], f["output"], f["state_floats"]) for f in info["states_fed_back"]] == [
        ("cache", "cache_out", I * 2), ("h", "h_out", H)]
    assert info["state_floats_per_stream"] == I * 2 + H


def test_streams_of_one_step_export_in_threads():
    """Streams of one model stepped from 4 threads at once (the ops' per-shape plans are shared)
    give what each stream gives alone; a pool of the same model stepped from 2 threads too."""
    import threading

    net, blob, shapes, n_in = _case("silero_like", 19)
    model = srnn.from_onnx(blob)
    X = np.random.default_rng(20).normal(size=(4, 30, n_in)).astype(np.float32)
    want = _torch_frames(net, X, _zeros(shapes, 4))
    got = np.zeros_like(want)
    errors = []

    def work(b):
        try:
            s = model.stream()
            for t in range(X.shape[1]):
                got[b, t] = s.step(X[b, t])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(b,)) for b in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert_close(got, want)
    pool = model.pool(4)
    ids = pool.open(4)
    Y = np.zeros_like(want)

    def half(rows):
        for t in range(X.shape[1]):
            Y[rows, t] = pool.step(ids[rows], X[rows, t])

    threads = [threading.Thread(target=half, args=(r,)) for r in (slice(0, 2), slice(2, 4))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert_close(Y, want)


class BakedCell(torch.nn.Module):
    """A cell whose export bakes the batch of 1 into a Reshape: 3 rows at once fail to evaluate,
    so the one-stream graph stays one stream per evaluation."""

    def __init__(self):
        super().__init__()
        self.l, self.fc = torch.nn.Linear(I + H, H), torch.nn.Linear(H, O)

    def forward(self, x, h):
        h = torch.tanh(self.l(torch.cat([x, h], 1)))
        return self.fc(h.reshape(1, H)), h


def test_one_stream_graph_that_cannot_take_rows_stays_per_stream():
    torch.manual_seed(21)
    net = BakedCell().eval()
    blob = _export(net, (torch.randn(1, I), torch.zeros(1, H)), ["x", "h"], ["y", "hn"], {})
    model = srnn.from_onnx(blob)
    assert model.plan.per_item and not model.plan.frame_rows
    X = np.random.default_rng(22).normal(size=(2, 4, I)).astype(np.float32)
    want = np.concatenate([_torch_frames(net, X[b : b + 1], _zeros([("B", H)], 1)) for b in range(2)])
    pool = model.pool(2)
    ids = pool.open(2)
    assert_close(np.stack([pool.step(ids, X[:, t]) for t in range(4)], 1), want)


def test_states_fed_back_need_a_declared_shape_with_one_free_dim():
    from onnx import TensorProto, helper

    def graph(state_shape):
        nodes = [helper.make_node("Add", ["x", "s"], ["s2"]), helper.make_node("Relu", ["s2"], ["y"])]
        vi = helper.make_tensor_value_info
        g = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, ["b", 3]), vi("s", TensorProto.FLOAT, state_shape)],
                              [vi("y", TensorProto.FLOAT, ["b", 3]), vi("s2", TensorProto.FLOAT, state_shape)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    with pytest.raises(srnn.UnsupportedError, match=r"input 's': expected a state of fixed dims and at most one free"):
        srnn.from_onnx(graph(["b", "k"]), state_map={"s": "s2"})
    model = srnn.from_onnx(graph(["b", 3]), state_map={"s": "s2"})  # a running sum: y = relu(sum of frames)
    X = np.random.default_rng(23).normal(size=(2, 5, 3)).astype(np.float32)
    assert_close(model.run(X), np.maximum(np.cumsum(X, axis=1), 0))


def test_lstm_cell_fusion_is_kept_only_where_it_agrees(monkeypatch):
    """The fusion of a written-out LSTMCell is checked against the graph itself at load: with
    the gates put in a wrong order, the check fails and the graph model is kept (still right)."""
    from streamrnn.converters import onnx_cells

    net, blob, shapes, n_in = _case("lstm_cell", 24)
    monkeypatch.setattr(onnx_cells, "_TORCH_TO_ONNX", [0, 1, 2, 3])
    model = srnn.from_onnx(blob)
    assert isinstance(model, GraphModel) and model.plan.feedback, model
    X = np.random.default_rng(25).normal(size=(2, 4, n_in)).astype(np.float32)
    assert_close(model.run(X), _torch_frames(net, X, _zeros(shapes, 2)))


class CellReadInside(torch.nn.Module):
    """An LSTMCell written out by hand whose forget gate is also an output: the cell's inside is
    read elsewhere, so it is not fused."""

    def __init__(self):
        super().__init__()
        self.w, self.r, self.fc = torch.nn.Linear(I, 4 * H), torch.nn.Linear(H, 4 * H), torch.nn.Linear(H, O)

    def forward(self, x, h, c):
        i, f, g, o = (self.w(x) + self.r(h)).chunk(4, 1)
        f = torch.sigmoid(f)
        c = f * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return self.fc(h) + f.sum(1, keepdim=True), h, c


def test_a_cell_whose_inside_is_read_elsewhere_is_not_fused():
    torch.manual_seed(26)
    net = CellReadInside().eval()
    blob = _export(net, (torch.randn(2, I), torch.zeros(2, H), torch.zeros(2, H)), ["x", "h", "c"],
                   ["y", "hn", "cn"], {k: 0 for k in ("x", "h", "c", "y", "hn", "cn")})
    model = srnn.from_onnx(blob)
    assert isinstance(model, GraphModel) and len(model.plan.feedback) == 2
    X = np.random.default_rng(27).normal(size=(2, 4, I)).astype(np.float32)
    assert_close(model.run(X), _torch_frames(net, X, _zeros([("B", H), ("B", H)], 2)))


def test_gru_cell_fusion_is_kept_only_where_it_agrees(monkeypatch):
    from streamrnn.converters import onnx_cells

    net, blob, shapes, n_in = _case("gru_cell", 28)
    monkeypatch.setattr(onnx_cells, "_TORCH_TO_ONNX_GRU", [0, 1, 2])  # r and z swapped: a wrong GRU
    model = srnn.from_onnx(blob)
    assert isinstance(model, GraphModel) and model.plan.feedback, model
    X = np.random.default_rng(29).normal(size=(2, 4, n_in)).astype(np.float32)
    assert_close(model.run(X), _torch_frames(net, X, _zeros(shapes, 2)))


def test_a_fused_cell_export_converts_to_srnn(tmp_path):
    """Fused into a chain, an LSTMCell step export has a .srnn form (graph models do not)."""
    import subprocess
    import sys

    net, blob, shapes, n_in = _case("lstm_cell", 30)
    src, dst = tmp_path / "cell.onnx", tmp_path / "cell.srnn"
    src.write_bytes(blob)
    r = subprocess.run([sys.executable, "-m", "streamrnn", "convert", str(src), "-o", str(dst)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    X = np.random.default_rng(31).normal(size=(2, 5, n_in)).astype(np.float32)
    assert_close(srnn.load(str(dst)).run(X), _torch_frames(net, X, _zeros(shapes, 2)))


class NoBiasCell(torch.nn.Module):
    """A cell without biases: the exporter writes MatMuls by the transposed weights, not Gemms."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.cell = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[kind](I, H, bias=False)
        self.fc = torch.nn.Linear(H, O)

    def forward(self, x, *st):
        st = self.cell(x, tuple(st) if self.kind == "lstm" else st[0])
        st = st if self.kind == "lstm" else (st,)
        return (self.fc(st[0]),) + tuple(st)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_cells_without_bias_are_fused(kind):
    torch.manual_seed(32)
    net = NoBiasCell(kind).eval()
    names = ["h", "c"] if kind == "lstm" else ["h"]
    blob = _export(net, (torch.randn(2, I),) + tuple(torch.zeros(2, H) for _ in names), ["x"] + names,
                   ["y"] + [n + "n" for n in names], {k: 0 for k in ["x", "y"] + names + [n + "n" for n in names]})
    model = srnn.from_onnx(blob)
    assert isinstance(model, srnn.Model), model
    X = np.random.default_rng(33).normal(size=(3, 5, I)).astype(np.float32)
    assert_close(model.run(X), _torch_frames(net, X, _zeros([("B", H)] * len(names), 3)))
