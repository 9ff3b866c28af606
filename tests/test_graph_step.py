"""The planned one-frame step of graph models (converters/graph_step.py): ``stream().step`` and
``pool().step`` of an ONNX graph that is not a chain run the per-frame nodes only, shape values
kept per batch size, recurrent nodes on the engine's step kernels. Each case checks it against
PyTorch or the ONNX reference implementation, and against the general path (the whole graph per
call, ``GraphModel._forward``) on the same frames."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph_model import GraphModel  # noqa: E402
from streamrnn.converters.graph_step import NotStepwise, StepPlan  # noqa: E402
from test_onnx_graph_model import Parallel, Residual, _export  # noqa: E402

TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


def _both(onnx_bytes, **kw):
    """The same graph twice: planned steps, and the general path only."""
    planned, general = srnn.from_onnx(onnx_bytes, **kw), srnn.from_onnx(onnx_bytes, **kw)
    assert isinstance(planned, GraphModel) and isinstance(planned._step, StepPlan)
    general._step = None
    return planned, general


class Reshaping(torch.nn.Module):  # a Reshape whose shape is computed from x's (Shape, Gather, Concat)
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = torch.nn.GRU(4, 6, batch_first=True), torch.nn.Linear(3, 2)
        self.scale = torch.nn.Parameter(torch.randn(6, 1, 1))

    def forward(self, x):
        y = self.rnn(x)[0] + x[..., :1]
        y = (y.transpose(0, 2) * self.scale).transpose(0, 2)  # (H, T, B): a transpose that moves data
        b, t = x.shape[0], x.shape[1]
        return self.fc(y.reshape(b, t, 2, 3)).reshape(b, t, -1)


class Unbatched(torch.nn.Module):  # x (T, I): a graph of one sequence at a time
    def __init__(self):
        super().__init__()
        self.a, self.fc = torch.nn.RNN(4, 5), torch.nn.Linear(5, 2)

    def forward(self, x):
        return self.fc(self.a(x)[0]) + x[:, :2]


NETS = {"residual": (Residual, {0: "b", 1: "t"}), "parallel": (Parallel, {0: "b", 1: "t"}),
        "reshaping": (Reshaping, {0: "b", 1: "t"}), "unbatched": (Unbatched, {0: "t"})}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_planned_steps_match_pytorch_and_the_general_path(name, dtype):
    cls, dyn = NETS[name]
    torch.manual_seed(sum(map(ord, name)))
    net = cls().eval()
    unbatched = name == "unbatched"
    planned, general = _both(_export(net, torch.randn(5, 4) if unbatched else torch.randn(2, 5, 4), dyn), dtype=dtype)
    rng = np.random.default_rng(len(name))
    X = rng.normal(size=(3, 9, 4)).astype(dtype)
    with torch.no_grad():
        tnet = net.double() if dtype == "float64" else net
        want = np.stack([tnet(torch.from_numpy(x)).numpy() for x in X]) if unbatched \
            else tnet(torch.from_numpy(X)).numpy()
    tol = TOL[dtype]
    calls = []  # the planned steps taken (not the general path)
    plan_step = planned._step.step
    planned._step.step = lambda *a: calls.append(len(a[0])) or plan_step(*a)
    # one stream: step by step, a push of 2 frames in the middle, the state carried between
    s, g = planned.stream(), general.stream()
    got = [s.step(X[1, t]) for t in range(3)] + list(s.push(X[1, 3:5])) + [s.step(X[1, t]) for t in range(5, 9)]
    gen = [g.step(X[1, t]) for t in range(9)]
    np.testing.assert_allclose(np.stack(got), want[1], **tol)
    np.testing.assert_allclose(np.stack(got), np.stack(gen), **tol)
    np.testing.assert_allclose(s.state.data, g.state.data, **tol)
    # a pool: ids in varying numbers and orders (a frame plan per count), out= buffers
    pool, gpool = planned.pool(6), general.pool(6)
    ids, gids = pool.open(3), gpool.open(3)
    assert list(ids) == list(gids)
    Y = np.zeros((3, 9, planned.output_size), dtype)
    order = [[0, 1, 2], [2, 0], [1], [0, 2, 1], [1, 2], [0], [2, 1, 0], [0, 1], [2]]
    t = np.zeros(3, int)
    for rows in order:
        r = np.array(rows)
        out = np.empty((len(r), planned.output_size), dtype)
        y = pool.step(ids[r], X[r, t[r]], out=out)
        assert y is out
        np.testing.assert_allclose(y, gpool.step(gids[r], X[r, t[r]]), **tol)
        Y[r, t[r]] = y
        t[r] += 1
    # every step planned, the push of 2 frames too (one planned step per frame); a graph of one
    # sequence at a time takes one planned step per stream
    assert calls == [1] * 9 + ([1] * int(t.sum()) if unbatched else [len(r) for r in order]), calls
    for b in range(3):
        np.testing.assert_allclose(Y[b, : t[b]], want[b, : t[b]], **tol)
        np.testing.assert_allclose(pool.get_state(ids[b]).data, gpool.get_state(gids[b]).data, **tol)
    if name == "reshaping":  # the shape values are kept per batch size, not recomputed per frame
        kept = planned._step.kept
        assert any(k not in planned.graph.consts for k in kept), kept
        assert {1, 2, 3} <= set(planned._step._frames)
        fs = planned.frame_step
        assert fs["planned"] and fs["per_frame"] < fs["of"] and fs["as_reshapes"] >= 2, fs
        assert f"runs {fs['per_frame']} of the {fs['of']} nodes" in str(planned)
    assert general.frame_step == {"planned": False, "of": len(general.graph.nodes)}


def _lstm_node(name, X, Y, I, H, layout, rng, outputs=None):
    W = numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, 4 * H, I)).astype(np.float32), f"{name}_W")
    R = numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, 4 * H, H)).astype(np.float32), f"{name}_R")
    B = numpy_helper.from_array(rng.uniform(-0.5, 0.5, (1, 8 * H)).astype(np.float32), f"{name}_B")
    node = helper.make_node("LSTM", [X, W.name, R.name, B.name], outputs or [Y], name=name, hidden_size=H, layout=layout)
    return node, [W, R, B]


def test_layout_1_and_state_outputs_read_by_other_nodes():
    """A one-frame graph with an LSTM of layout 1 (batch first) whose Y_h and Y_c are read by
    later nodes (not only its Y): the planned step's outputs in that layout, against the ONNX
    reference implementation fed the state frame by frame."""
    rng = np.random.default_rng(7)
    I = H = 3
    lstm, inits = _lstm_node("lstm", "x", "", I, H, 1, rng, outputs=["y4", "yh", "yc"])
    nodes = [
        lstm,
        helper.make_node("Squeeze", ["y4", "ax2"], ["y3"]),  # (B, T, H)
        helper.make_node("Add", ["yh", "yc"], ["hc"]),  # (B, 1, H): the last frame's h + c
        helper.make_node("Mul", ["y3", "hc"], ["m"]),  # T = 1: the frame's h * (h + c)
        helper.make_node("Add", ["m", "x"], ["y"]),
    ]
    inits.append(numpy_helper.from_array(np.array([2], np.int64), "ax2"))
    # a graph of one frame (T fixed to 1: Y_h / Y_c of a longer chunk would not be causal)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, I])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, H])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    planned, general = _both(proto.SerializeToString())
    assert planned.streamable and planned.plan.fixed_T == 1
    ref = ReferenceEvaluator(proto)
    X = rng.normal(size=(2, 6, I)).astype(np.float32)
    # the oracle: one frame at a time through the reference, the state carried by hand
    h = np.zeros((2, 1, H), np.float32)
    c = np.zeros((2, 1, H), np.float32)
    s = [planned.stream(), planned.stream()]
    pool = planned.pool(2)
    ids = pool.open(2)
    gpool = general.pool(2)
    gids = gpool.open(2)
    for t in range(6):
        xt = X[:, t : t + 1]
        state_graph = helper.make_graph(
            [helper.make_node("LSTM", ["x", "lstm_W", "lstm_R", "lstm_B", "", "h0", "c0"], ["y4", "yh", "yc"],
                              name="lstm", hidden_size=H, layout=1)] + nodes[1:], "g1",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "h0", "c0")],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "yh", "yc")], inits)
        want, h, c = ReferenceEvaluator(helper.make_model(state_graph, opset_imports=[helper.make_opsetid("", 14)])).run(
            None, {"x": xt, "h0": h, "c0": c})
        if t == 0:  # the reference on the whole graph agrees on the first frame
            np.testing.assert_allclose(ref.run(None, {"x": xt})[0], want, rtol=1e-6)
        for b in range(2):
            np.testing.assert_allclose(s[b].step(X[b, t]), want[b, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pool.step(ids, X[:, t]), want[:, 0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(gpool.step(gids, X[:, t]), want[:, 0], rtol=1e-5, atol=1e-6)


def _overflowing_graph(rng):
    """x -> LSTM a -> + relu(x - 5) * 1e30 * 1e30 -> LSTM b -> y: a finite frame with a value
    over 5 makes the second recurrent node's input infinite, after the first node has stepped
    (the load-time probes, in [-1, 1], stay finite)."""
    I = H = 3
    a, wa = _lstm_node("a", "xt", "", I, H, 0, rng, outputs=["ya"])
    b, wb = _lstm_node("b", "z", "", H, H, 0, rng, outputs=["yb"])
    consts = [numpy_helper.from_array(np.array(1e30, np.float32), "big"),
              numpy_helper.from_array(np.array(5, np.float32), "five"),
              numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), a,
             helper.make_node("Squeeze", ["ya", "ax"], ["sa"]),
             helper.make_node("Sub", ["xt", "five"], ["d"]), helper.make_node("Relu", ["d"], ["r"]),
             helper.make_node("Mul", ["r", "big"], ["m1"]), helper.make_node("Mul", ["m1", "big"], ["m2"]),
             helper.make_node("Add", ["sa", "m2"], ["z"]), b,
             helper.make_node("Squeeze", ["yb", "ax"], ["sb"]), helper.make_node("Add", ["sb", "sa"], ["s"]),
             helper.make_node("Transpose", ["s"], ["y"], perm=[1, 0, 2])]
    graph = helper.make_graph(nodes, "overflow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", I])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", H])],
                              wa + wb + consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_a_failed_frame_changes_no_state():
    """A finite frame whose second recurrent node gets non-finite input (after the first node has
    stepped): NonFiniteError naming that node, and no stream's state changed, as on the general path."""
    rng = np.random.default_rng(11)
    planned, general = _both(_overflowing_graph(rng))
    X = rng.normal(size=(4, 3)).astype(np.float32) * 0.1
    X[:, 1] = 10  # over 5: inf into node b
    for model in (planned, general):
        s = model.stream()
        np.testing.assert_allclose(s.step(X[0] * 0.1), general.stream().step(X[0] * 0.1), rtol=1e-5)  # finite
        s = model.stream()
        s.state = rng.normal(size=model.state_size).astype(np.float32) * 0.1
        before = s.state.data.copy()
        with pytest.raises(srnn.NonFiniteError, match="'b'"):
            s.step(X[0])
        np.testing.assert_array_equal(s.state.data, before)
        with pytest.raises(srnn.NonFiniteError, match="'b'"):  # a good frame, then the bad one
            s.push(np.stack([X[0] * 0.1 - X[0] * 0.1, X[0]]))
        np.testing.assert_array_equal(s.state.data, before)
        pool = model.pool(4)
        ids = pool.open(3)
        for i in ids:
            pool.set_state(i, rng.normal(size=model.state_size).astype(np.float32) * 0.1)
        before = [pool.get_state(i).data.copy() for i in ids]
        with pytest.raises(srnn.NonFiniteError, match="'b'"):
            pool.step(ids, X[:3])
        with pytest.raises(srnn.NonFiniteError, match="'b'"):
            pool.push(ids[1], np.stack([np.zeros(3, np.float32), X[1]]))
        for i, st in zip(ids, before):
            np.testing.assert_array_equal(pool.get_state(i).data, st)


def test_a_frame_the_plan_does_not_take_goes_the_general_way(monkeypatch):
    """Where the plan gives up in the middle of a frame (NotStepwise at the second recurrent node,
    after the first has stepped its own buffers), the frame runs on the general path, and the
    states are those of a frame run once."""
    torch.manual_seed(3)
    net = Parallel().eval()
    planned, general = _both(_export(net, torch.randn(2, 5, 4), {0: "b", 1: "t"}))
    real = StepPlan._recurrent

    def flaky(self, n, ri, *a):
        if ri == len(self.plan.rec) - 1:
            raise NotStepwise("test")
        return real(self, n, ri, *a)

    X = np.random.default_rng(4).normal(size=(2, 5, 4)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    s, pool = planned.stream(), planned.pool(3)
    ids = pool.open(2)
    for t in range(5):
        if t in (1, 3):
            monkeypatch.setattr(StepPlan, "_recurrent", flaky)
        np.testing.assert_allclose(s.step(X[0, t]), want[0, t], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(pool.step(ids, X[:, t]), want[:, t], rtol=1e-5, atol=1e-6)
        monkeypatch.setattr(StepPlan, "_recurrent", real)


def test_planned_steps_compile_nothing(monkeypatch):
    """The node streams and pools are made (and their kernels compiled) with the graph's stream
    and pool: a planned step of 1, 2 or 8 streams compiles nothing."""
    import numba.core.dispatcher as nbd

    rng = np.random.default_rng(5)
    model = srnn.from_onnx(_overflowing_graph(rng))
    s, pool = model.stream(), model.pool(10)
    ids = pool.open(8)
    seen = []
    orig = nbd.Dispatcher.compile

    def compile(self, sig):
        seen.append(self.py_func.__qualname__)
        return orig(self, sig)

    monkeypatch.setattr(nbd.Dispatcher, "compile", compile)
    X = rng.uniform(-1, 1, size=(8, 3)).astype(np.float32)
    s.step(X[0])
    for n in (1, 2, 8):
        pool.step(ids[:n], X[:n])
    assert seen == [], f"compiled in a real-time call: {sorted(set(seen))}"


def test_large_finite_frames_are_not_refused():
    """Frames of large finite values (|x| ~ 3e19 in float32: their squares overflow; a check by a
    sum of squares, tried and dropped, must fall back to the exact test) are not refused, a NaN
    is, by its feature."""
    torch.manual_seed(8)
    planned, general = _both(_export(Residual(), torch.randn(2, 5, 4), {0: "b", 1: "t"}))
    x = np.array([3e19, -3e19, 1.0, 2.0], np.float32)
    with np.errstate(all="ignore"):  # the LSTM saturates; Linear(x + h) is of x's scale
        np.testing.assert_allclose(planned.stream().step(x), general.stream().step(x), rtol=1e-5)
        pool, gpool = planned.pool(1), general.pool(1)
        np.testing.assert_allclose(pool.step(np.array([pool.open()]), x[None]),
                                   gpool.step(np.array([gpool.open()]), x[None]), rtol=1e-5)
    x[2] = np.nan
    with pytest.raises(srnn.NonFiniteError, match="feature 2"):
        planned.stream().step(x)


def test_run_of_a_one_frame_graph_takes_planned_frames():
    """``run`` of a graph exported as one frame (T fixed to 1, h / c in and out) goes frame by
    frame; each frame takes the planned step (the recurrent nodes through their models' run of
    one frame): against PyTorch on the whole sequence, with ragged lengths and a given state,
    and against the general path."""

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = torch.nn.GRU(4, 4, batch_first=True), torch.nn.Linear(4, 3)

        def forward(self, x, h):
            y, h2 = self.rnn(x, h)
            return self.fc(y * x), h2

    torch.manual_seed(21)
    net = Step().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 1, 4), torch.zeros(1, 2, 4)), f, input_names=["x", "h"],
                          output_names=["y", "hn"], dynamo=False, opset_version=17,
                          dynamic_axes={"x": {0: "b"}, "h": {1: "b"}, "y": {0: "b"}})
    planned, general = _both(f.getvalue(), state_map={"h": "hn"})
    assert planned.plan.fixed_T == 1
    calls = []
    plan_step = planned._step.step
    planned._step.step = lambda *a: calls.append(len(a[0])) or plan_step(*a)
    rng = np.random.default_rng(22)
    X = rng.normal(size=(3, 6, 4)).astype(np.float32)
    h0 = rng.normal(size=(3, 4)).astype(np.float32) * 0.5
    with torch.no_grad():
        want = net(torch.from_numpy(X), torch.from_numpy(h0)[None])[0].numpy()
    Y, st = planned.run(X, state=h0, return_state=True)
    np.testing.assert_allclose(Y, want, rtol=1e-5, atol=1e-6)
    assert calls == [3] * 6
    L = np.array([6, 2, 0])
    Yl, stl = planned.run(X, state=h0, lengths=L, return_state=True)
    Yg, stg = general.run(X, state=h0, lengths=L, return_state=True)
    np.testing.assert_allclose(Yl, Yg, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stl.data, stg.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Yl[1, :2], want[1, :2], rtol=1e-5, atol=1e-6)
    assert not Yl[1, 2:].any() and not Yl[2].any()
    np.testing.assert_array_equal(stl.data[2], h0[2])  # a length of 0 keeps its state


def test_planned_steps_from_threads():
    """Graph streams of one model stepped from 4 threads at once, and one graph pool stepped from
    4 threads (each its own ids, with varying counts: frame plans made concurrently): each
    stream's outputs equal those of the same frames stepped alone."""
    import threading

    torch.manual_seed(9)
    planned, _ = _both(_export(Parallel(), torch.randn(2, 5, 4), {0: "b", 1: "t"}))
    rng = np.random.default_rng(10)
    X = rng.normal(size=(8, 30, 4)).astype(np.float32)
    want = planned.run(X)
    got = np.zeros_like(want)
    pool = planned.pool(8)
    ids = pool.open(8)
    errors = []

    def stream_worker(b):
        try:
            s = planned.stream()
            for t in range(30):
                got[b, t] = s.step(X[b, t])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    def pool_worker(k):
        try:
            mine = ids[2 * k : 2 * k + 2]
            for t in range(30):
                sel = mine if t % 3 else mine[:1]  # 1 or 2 ids: frame plans for both sizes
                tt = pool_t[sel]  # each stream's next frame
                pool_got[sel, tt] = pool.step(sel, X[sel, tt])
                pool_t[sel] += 1
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=stream_worker, args=(b,)) for b in range(4)]
    pool_got = np.zeros_like(want)
    pool_t = np.zeros(8, int)
    threads += [threading.Thread(target=pool_worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    np.testing.assert_allclose(got[:4], want[:4], rtol=1e-5, atol=1e-6)
    for b in range(8):
        n = pool_t[b]
        np.testing.assert_allclose(pool_got[b, :n], want[b, :n], rtol=1e-5, atol=1e-6)


def test_a_graph_that_divides_by_its_input_is_planned():
    """Frame plans come from one evaluation of a frame; of zeros, x / x is NaN and the recurrent
    node refused it, so such a graph lost its planned step (the general path took every frame).
    Now the frame is of values in [0.5, 1]; the planned steps equal onnxruntime's."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(51)
    I, H = 3, 3
    inits = [numpy_helper.from_array(rng.normal(size=(1, 3 * H, I)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(1, 3 * H, H)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Div", ["x", "x"], ["ones"]), helper.make_node("Mul", ["ones", "x"], ["x1"]),
             helper.make_node("GRU", ["x1", "W", "R"], ["Y"], hidden_size=H),
             helper.make_node("Squeeze", ["Y", "ax"], ["h"]), helper.make_node("Add", ["h", "x"], ["y"])]
    graph = helper.make_graph(nodes, "div", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "B", H])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    planned, general = _both(proto.SerializeToString())
    X = rng.normal(size=(2, 5, I)).astype(np.float32)  # (B, T, I)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": X.transpose(1, 0, 2)})[0].transpose(1, 0, 2)
    pool = planned.pool(2)
    ids = pool.open(2)
    np.testing.assert_allclose(np.stack([pool.step(ids, X[:, t]) for t in range(5)], 1), want, rtol=1e-5, atol=1e-6)


def test_frame_plans_past_the_bound_drop_the_oldest(monkeypatch):
    """A pool stepping varying id counts plans each count once; past FRAMES_KEPT plans the oldest
    goes (before: all of them, so every count was planned again), and results stay right."""
    import streamrnn.converters.graph_step as gs

    monkeypatch.setattr(gs, "FRAMES_KEPT", 3)
    torch.manual_seed(13)
    planned, general = _both(_export(Residual(), torch.randn(2, 5, 4), {0: "b", 1: "t"}))
    pool, gpool = planned.pool(6), general.pool(6)
    ids, gids = pool.open(6), gpool.open(6)
    rng = np.random.default_rng(14)
    for n in (1, 2, 3, 4, 5, 1, 6, 2):
        X = rng.normal(size=(n, 4)).astype(np.float32)
        np.testing.assert_allclose(pool.step(ids[:n], X), gpool.step(gids[:n], X), **TOL["float32"])
    assert list(planned._step._frames) == [1, 6, 2]
