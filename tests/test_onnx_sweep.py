"""Randomised sweep of single-node LSTM / GRU / RNN models over every attribute, against
onnxruntime (and onnx.reference.ReferenceEvaluator for layout=1, which onnxruntime refuses).

Each case draws: op, direction, sizes, activations (all eleven ONNX names, with
activation_alpha / activation_beta lists shorter, equal or longer than needed), clip,
input_forget, peepholes, linear_before_reset, bias, sequence_lens (zeros included), initial
states, which outputs are requested, opset (7, 14, 22), weights fed or as initializers. Cases where onnxruntime's own output overflows are redrawn.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import streamrnn as srnn  # noqa: E402

ACTS = ["Sigmoid", "Tanh", "Relu", "Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh",
        "HardSigmoid", "Elu", "Softsign", "Softplus"]
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
NACTS = {"LSTM": 3, "GRU": 2, "RNN": 1}
N_CASES = 600
_SO = ort.SessionOptions()
_SO.log_severity_level = 3


def draw(rng: np.random.Generator, layout: int = 0):
    """One random case: (model, feeds, description)."""
    op = str(rng.choice(list(GATES)))
    direction = str(rng.choice(["forward", "reverse", "bidirectional", "default"]))
    D = 2 if direction == "bidirectional" else 1
    H, I, T, B = (int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(1, 6)), int(rng.integers(1, 4)))
    opset = 22 if layout else int(rng.choice([7, 14, 22]))
    f64 = False  # onnxruntime runs no recurrent op in double: see test_double_vs_reference_evaluator
    dt, et = (np.float64, TensorProto.DOUBLE) if f64 else (np.float32, TensorProto.FLOAT)
    attrs = {"hidden_size": H}
    if direction != "default":
        attrs["direction"] = direction
    if layout:
        attrs["layout"] = 1
    if rng.random() < 0.6:
        attrs["activations"] = [str(a) for a in rng.choice(ACTS, NACTS[op] * D)]
        for k, lo, hi in (("activation_alpha", 0.1, 1.5), ("activation_beta", -0.5, 1.0)):
            if rng.random() < 0.7:
                attrs[k] = [float(v) for v in rng.uniform(lo, hi, int(rng.integers(1, NACTS[op] * D + 2)))]
    if rng.random() < 0.3:
        attrs["clip"] = float(rng.uniform(0.2, 2.0))
    if op == "LSTM" and rng.random() < 0.3:
        attrs["input_forget"] = 1
    if op == "GRU" and rng.random() < 0.8:
        attrs["linear_before_reset"] = int(rng.integers(0, 2))
    G = GATES[op]
    arr = {
        "X": rng.uniform(-1, 1, (T, B, I)),
        "W": rng.normal(size=(D, G * H, I)) * 0.7,
        "R": rng.normal(size=(D, G * H, H)) * 0.7,
        "B": rng.normal(size=(D, 2 * G * H)) * 0.5 if rng.random() < 0.7 else None,
        "sequence_lens": rng.integers(0, T + 1, B).astype(np.int32) if rng.random() < 0.4 else None,
        "initial_h": rng.normal(size=(D, B, H)) if rng.random() < 0.5 else None,
        "initial_c": rng.normal(size=(D, B, H)) if op == "LSTM" and rng.random() < 0.5 else None,
        "P": rng.normal(size=(D, 3 * H)) * 0.5 if op == "LSTM" and rng.random() < 0.4 else None,
    }
    if op != "LSTM":
        del arr["initial_c"], arr["P"]
    for k, v in arr.items():
        if v is not None and k != "sequence_lens":
            arr[k] = v.astype(dt)
    if layout:
        arr["X"] = arr["X"].transpose(1, 0, 2).copy()
        for k in ("initial_h", "initial_c"):
            if arr.get(k) is not None:
                arr[k] = arr[k].transpose(1, 0, 2).copy()
    names = [k if v is not None else "" for k, v in arr.items()]
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"][: 3 if op == "LSTM" else 2]
    if rng.random() < 0.3:
        outs[int(rng.integers(0, len(outs)))] = ""
    as_init = rng.random() < 0.5
    node = helper.make_node(op, names, outs, name=f"{op.lower()}_node", **attrs)
    inits, vis, feeds = [], [], {}
    for n in names:
        if not n:
            continue
        v = arr[n]
        if as_init and n not in ("X", "sequence_lens"):
            inits.append(numpy_helper.from_array(v, n))
        else:
            vis.append(helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else et, list(v.shape)))
            feeds[n] = v
    outs_vi = [helper.make_tensor_value_info(o, et, None) for o in outs if o]
    g = helper.make_graph([node], "sweep", vis, outs_vi, initializer=inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    desc = f"{op} opset={opset} {'f64' if f64 else 'f32'} init={as_init} {attrs} shapes={ {k: v.shape for k, v in arr.items() if v is not None} } lens={arr['sequence_lens']}"
    return model, feeds, desc


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), _SO, providers=["CPUExecutionProvider"]).run(None, feeds)


def _close(got, want, desc):
    assert len(got) == len(want), desc
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, desc
        scale = max(1.0, float(np.abs(w).max(initial=0)))
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * scale, err_msg=desc)


def _stable(outs) -> bool:
    return all(np.isfinite(o).all() and np.abs(o).max(initial=0) < 1e3 for o in outs)


@pytest.mark.parametrize("seed", range(N_CASES))
def test_sweep_vs_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        model, feeds, desc = draw(rng)
        want = _ort(model, feeds)
        if _stable(want):
            break
    got = srnn.InferenceSession(model).run(None, feeds)
    _close(got, want, desc)


def _to_layout0(model, feeds):
    """The same computation with layout=0 (what onnxruntime runs): transposed X / states / Y."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = m.graph.node[0]
    for a in list(node.attribute):
        if a.name == "layout":
            node.attribute.remove(a)
    f = dict(feeds)
    for k in ("X", "initial_h", "initial_c"):
        if k in f:
            f[k] = f[k].transpose(1, 0, 2).copy()
    for t in m.graph.initializer:
        if t.name in ("initial_h", "initial_c"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).transpose(1, 0, 2).copy(), t.name))
    for vi in m.graph.input:
        if vi.name in ("X", "initial_h", "initial_c"):
            dims = vi.type.tensor_type.shape.dim
            d0, d1 = dims[0].dim_value, dims[1].dim_value
            dims[0].dim_value, dims[1].dim_value = d1, d0
    return m, f


def _from_layout0(outs, names):
    res = []
    for name, o in zip([n for n in names if n], outs):
        res.append(o.transpose(2, 0, 1, 3).copy() if name == "Y" else o.transpose(1, 0, 2).copy())
    return res


@pytest.mark.parametrize("seed", range(150))
def test_sweep_layout1_vs_onnxruntime_transposed(seed):
    """layout=1: onnxruntime on the equivalent layout-0 graph, outputs transposed back."""
    rng = np.random.default_rng(10_000 + seed)
    for _ in range(20):
        model, feeds, desc = draw(rng, layout=1)
        m0, f0 = _to_layout0(model, feeds)
        want = _from_layout0(_ort(m0, f0), list(model.graph.node[0].output))
        if _stable(want):
            break
    got = srnn.InferenceSession(model).run(None, feeds)
    _close(got, want, desc)


def _reference_case(op, direction, opt, layout, dt):
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(abs(hash((op, direction, opt, layout))) % 2**32)
    D, G, T, B, I, H = 2 if direction == "bidirectional" else 1, GATES[op], 4, 3, 2, 3
    attrs = {"hidden_size": H, "layout": layout, "direction": direction}
    names = ["X", "W", "R"]
    feeds = {"X": rng.uniform(-1, 1, (B, T, I)), "W": rng.normal(size=(D, G * H, I)), "R": rng.normal(size=(D, G * H, H))}
    if opt != "plain":
        names += ["B", "", "initial_h"]
        feeds["B"] = rng.normal(size=(D, 2 * G * H))
        feeds["initial_h"] = rng.normal(size=(B, D, H))
        if op == "LSTM":
            names.append("initial_c")
            feeds["initial_c"] = rng.normal(size=(B, D, H))
    if opt == "lbr_or_peep":
        if op == "GRU":
            attrs["linear_before_reset"] = 1
        if op == "LSTM":
            names.append("P")
            feeds["P"] = rng.normal(size=(D, 3 * H))
    if layout == 0:
        for k in ("X", "initial_h", "initial_c"):
            if k in feeds:
                feeds[k] = feeds[k].transpose(1, 0, 2).copy()
    feeds = {k: v.astype(dt) for k, v in feeds.items()}
    et = TensorProto.DOUBLE if dt == np.float64 else TensorProto.FLOAT
    outs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outs, **attrs)
    g = helper.make_graph([node], "ref", [helper.make_tensor_value_info(n, et, None) for n in names if n],
                          [helper.make_tensor_value_info(o, et, None) for o in outs])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    want = [np.asarray(w, dt) for w in ReferenceEvaluator(model).run(None, feeds)]
    return srnn.InferenceSession(model).run(None, feeds), want


@pytest.mark.parametrize("op", list(GATES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("opt", ["plain", "bias_states", "lbr_or_peep"])
def test_layout1_vs_reference_evaluator(op, direction, opt):
    """layout=1 against onnx's own reference implementation (default activations)."""
    got, want = _reference_case(op, direction, opt, 1, np.float32)
    _close(got, want, f"{op} {direction} {opt}")


@pytest.mark.parametrize("op", list(GATES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
def test_double_vs_reference_evaluator(op, direction, layout):
    """Double models compute in float64 (onnxruntime runs no recurrent op in double)."""
    got, want = _reference_case(op, direction, "lbr_or_peep", layout, np.float64)
    for g, w in zip(got, want):
        assert g.dtype == np.float64
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_activation_alpha_beta_consumed_as_onnxruntime():
    """Only activations that read alpha (beta) consume the next value; exhausted lists fall back
    to onnxruntime's defaults (LeakyRelu 0.01, HardSigmoid 0.2/0.5, Elu 1, others 0)."""
    rng = np.random.default_rng(5)
    T, B, I, H = 4, 2, 3, 3
    for acts, alpha, beta in (
        (["Tanh", "LeakyRelu"], [0.3, 0.4], None),
        (["Affine", "Affine"], [0.3], [0.1]),
        (["ThresholdedRelu", "ScaledTanh"], None, None),
        (["HardSigmoid", "Elu"], [0.5], None),
    ):
        attrs = {"hidden_size": H, "direction": "bidirectional", "activations": acts}
        if alpha:
            attrs["activation_alpha"] = alpha
        if beta:
            attrs["activation_beta"] = beta
        node = helper.make_node("RNN", ["X", "W", "R"], ["Y", "Y_h"], **attrs)
        g = helper.make_graph([node], "a", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "XWR"],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("Y", "Y_h")])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        model.ir_version = 8
        feeds = {"X": rng.uniform(-1, 1, (T, B, I)).astype(np.float32),
                 "W": rng.normal(size=(2, H, I)).astype(np.float32), "R": rng.normal(size=(2, H, H)).astype(np.float32)}
        _close(srnn.InferenceSession(model).run(None, feeds), _ort(model, feeds), str(attrs))


def test_zero_length_sequence_state_is_zero():
    """onnxruntime's convention: Y_h / Y_c of a length-0 sequence are 0 even with an initial state."""
    rng = np.random.default_rng(6)
    T, B, I, H = 3, 3, 2, 2
    names = ["X", "W", "R", "", "sequence_lens", "initial_h", "initial_c"]
    node = helper.make_node("LSTM", names, ["Y", "Y_h", "Y_c"], hidden_size=H)
    g = helper.make_graph(
        [node], "z",
        [helper.make_tensor_value_info(n, TensorProto.INT32 if n == "sequence_lens" else TensorProto.FLOAT, None) for n in names if n],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("Y", "Y_h", "Y_c")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    feeds = {"X": rng.normal(size=(T, B, I)), "W": rng.normal(size=(1, 4 * H, I)), "R": rng.normal(size=(1, 4 * H, H)),
             "initial_h": rng.normal(size=(1, B, H)), "initial_c": rng.normal(size=(1, B, H))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    feeds["sequence_lens"] = np.array([3, 0, 2], np.int32)
    got = srnn.InferenceSession(model).run(None, feeds)
    assert not got[1][:, 1].any() and not got[2][:, 1].any()
    _close(got, _ort(model, feeds), "zero length")


def test_fed_weights_are_not_cached_stale():
    """Weights fed as inputs: a new array, or the same array changed in place, is used."""
    rng = np.random.default_rng(7)
    model, feeds, desc = None, None, ""
    while model is None or "W" not in feeds:
        model, feeds, desc = draw(rng)
    sess = srnn.InferenceSession(model)
    for _ in range(3):
        want = _ort(model, feeds)
        if _stable(want):
            _close(sess.run(None, feeds), want, desc)
        feeds["W"] *= 0.5  # in place


def test_bidirectional_with_one_directions_activations():
    """An extension (onnxruntime refuses it): a bidirectional node listing one direction's
    activations uses them for both, as the full list would."""
    rng = np.random.default_rng(8)
    T, B, I, H = 4, 2, 3, 3
    feeds = {"X": rng.uniform(-1, 1, (T, B, I)).astype(np.float32),
             "W": rng.normal(size=(2, 3 * H, I)).astype(np.float32), "R": rng.normal(size=(2, 3 * H, H)).astype(np.float32)}
    models = []
    for acts, alpha in ((["HardSigmoid", "LeakyRelu"], [0.3, 0.2]), (["HardSigmoid", "LeakyRelu"] * 2, [0.3, 0.2, 0.3, 0.2])):
        node = helper.make_node("GRU", ["X", "W", "R"], ["Y", "Y_h"], hidden_size=H, direction="bidirectional",
                                activations=acts, activation_alpha=alpha)
        g = helper.make_graph([node], "a", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "XWR"],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("Y", "Y_h")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        m.ir_version = 8
        models.append(m)
    want = _ort(models[1], feeds)
    _close(srnn.InferenceSession(models[0]).run(None, feeds), want, "per-direction list")
    _close(srnn.InferenceSession(models[1]).run(None, feeds), want, "full list")
