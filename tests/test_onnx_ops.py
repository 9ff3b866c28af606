"""Non-recurrent ONNX ops (each opset variant) through srnn.InferenceSession vs onnxruntime,
and constant folding of shape arithmetic."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph import Graph  # noqa: E402
from streamrnn.converters.onnx_ops import supported_ops  # noqa: E402

R = np.random.default_rng(0)
F = lambda *s: R.normal(size=s).astype(np.float32)  # noqa: E731
POS = lambda *s: R.uniform(0.1, 2.0, size=s).astype(np.float32)  # noqa: E731
I64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731

# (id, op, opset, inputs [(array or None, as_initializer)], attrs, number of outputs)
CASES = [
    ("add_bcast", "Add", 14, [(F(2, 3, 4), 0), (F(4), 1)], {}, 1),
    ("add_7", "Add", 7, [(F(2, 3), 0), (F(1, 3), 0)], {}, 1),
    ("sub", "Sub", 13, [(F(3, 4), 1), (F(2, 3, 4), 0)], {}, 1),
    ("mul", "Mul", 14, [(F(2, 1, 4), 0), (F(3, 1), 0)], {}, 1),
    ("div", "Div", 14, [(F(2, 3), 0), (POS(2, 3), 0)], {}, 1),
    ("div_int", "Div", 14, [(I64(7, -7, 7, -7, 0), 0), (I64(2, 2, -2, -2, 3), 0)], {}, 1),
    ("pow", "Pow", 15, [(POS(3, 4), 0), (F(4), 0)], {}, 1),
    ("neg", "Neg", 13, [(F(3, 4), 0)], {}, 1),
    ("abs", "Abs", 13, [(F(3, 4), 0)], {}, 1),
    ("exp", "Exp", 13, [(F(3, 4), 0)], {}, 1),
    ("log", "Log", 13, [(POS(3, 4), 0)], {}, 1),
    ("sqrt", "Sqrt", 13, [(POS(3, 4), 0)], {}, 1),
    ("reciprocal", "Reciprocal", 13, [(POS(3, 4), 0)], {}, 1),
    ("floor", "Floor", 13, [(F(3, 4) * 3, 0)], {}, 1),
    ("ceil", "Ceil", 13, [(F(3, 4) * 3, 0)], {}, 1),
    ("relu", "Relu", 14, [(F(3, 4), 0)], {}, 1),
    ("relu_6", "Relu", 7, [(F(3, 4), 0)], {}, 1),
    ("sigmoid", "Sigmoid", 13, [(F(3, 4) * 10, 0)], {}, 1),
    ("tanh", "Tanh", 13, [(F(3, 4), 0)], {}, 1),
    ("leakyrelu", "LeakyRelu", 16, [(F(3, 4), 0)], {"alpha": 0.2}, 1),
    ("leakyrelu_default", "LeakyRelu", 7, [(F(3, 4), 0)], {}, 1),
    ("elu", "Elu", 7, [(F(3, 4), 0)], {"alpha": 0.7}, 1),
    ("selu", "Selu", 7, [(F(3, 4), 0)], {}, 1),
    ("softsign", "Softsign", 7, [(F(3, 4), 0)], {}, 1),
    ("softplus", "Softplus", 7, [(F(3, 4) * 30, 0)], {}, 1),
    ("hardsigmoid", "HardSigmoid", 7, [(F(3, 4) * 4, 0)], {"alpha": 0.3, "beta": 0.4}, 1),
    ("thresholdedrelu", "ThresholdedRelu", 10, [(F(3, 4), 0)], {"alpha": 0.5}, 1),
    ("prelu", "PRelu", 16, [(F(2, 3, 4), 0), (F(4), 1)], {}, 1),
    ("softmax_11_axis1", "Softmax", 11, [(F(2, 3, 4), 0)], {"axis": 1}, 1),
    ("softmax_11_default", "Softmax", 11, [(F(2, 3, 4), 0)], {}, 1),
    ("softmax_13_axis1", "Softmax", 13, [(F(2, 3, 4), 0)], {"axis": 1}, 1),
    ("softmax_13_default", "Softmax", 13, [(F(2, 3, 4), 0)], {}, 1),
    ("logsoftmax_11", "LogSoftmax", 11, [(F(2, 3, 4), 0)], {"axis": 2}, 1),
    ("logsoftmax_13", "LogSoftmax", 13, [(F(2, 3, 4), 0)], {"axis": 0}, 1),
    ("clip_6", "Clip", 7, [(F(3, 4), 0)], {"min": -0.5, "max": 0.3}, 1),
    ("clip_11_min", "Clip", 11, [(F(3, 4), 0), (np.array(-0.2, np.float32), 1)], {}, 1),
    ("clip_13_both", "Clip", 13, [(F(3, 4), 0), (np.array(-0.2, np.float32), 0), (np.array(0.4, np.float32), 0)], {}, 1),
    ("clip_13_max_only", "Clip", 13, [(F(3, 4), 0), (None, 0), (np.array(0.4, np.float32), 1)], {}, 1),
    ("where", "Where", 16, [(F(3, 4) > 0, 0), (F(3, 4), 0), (F(4), 1)], {}, 1),
    ("equal", "Equal", 13, [(I64(1, 2, 3), 0), (I64(1, 0, 3), 0)], {}, 1),
    ("less", "Less", 13, [(F(3, 4), 0), (F(4), 0)], {}, 1),
    ("greater", "Greater", 13, [(F(3, 4), 0), (F(4), 0)], {}, 1),
    ("and", "And", 7, [(F(4) > 0, 0), (F(4) > 0, 0)], {}, 1),
    ("or", "Or", 7, [(F(4) > 0, 0), (F(4) > 0, 0)], {}, 1),
    ("not", "Not", 7, [(F(4) > 0, 0)], {}, 1),
    ("sum", "Sum", 13, [(F(3, 4), 0), (F(4), 0), (F(3, 1), 0)], {}, 1),
    ("max", "Max", 13, [(F(3, 4), 0), (F(4), 0)], {}, 1),
    ("min", "Min", 13, [(F(3, 4), 0), (F(4), 0)], {}, 1),
    ("cast_int", "Cast", 13, [(F(3, 4) * 5, 0)], {"to": TensorProto.INT32}, 1),
    ("cast_double", "Cast", 19, [(F(3, 4), 0)], {"to": TensorProto.DOUBLE}, 1),
    ("cast_bool", "Cast", 13, [(F(3, 4), 0)], {"to": TensorProto.BOOL}, 1),
    ("identity", "Identity", 16, [(F(3, 4), 0)], {}, 1),
    ("dropout_7", "Dropout", 7, [(F(3, 4), 0)], {"ratio": 0.3}, 2),
    ("dropout_10", "Dropout", 10, [(F(3, 4), 0)], {"ratio": 0.3}, 2),
    ("dropout_12", "Dropout", 12, [(F(3, 4), 0)], {}, 2),
    ("dropout_13", "Dropout", 13, [(F(3, 4), 0), (np.array(0.5, np.float32), 1)], {}, 1),
    ("transpose", "Transpose", 13, [(F(2, 3, 4), 0)], {"perm": [1, 2, 0]}, 1),
    ("transpose_default", "Transpose", 13, [(F(2, 3, 4), 0)], {}, 1),
    ("squeeze_11", "Squeeze", 11, [(F(2, 1, 4, 1), 0)], {"axes": [1, -1]}, 1),
    ("squeeze_13", "Squeeze", 13, [(F(2, 1, 4, 1), 0), (I64(1), 1)], {}, 1),
    ("squeeze_13_all", "Squeeze", 13, [(F(2, 1, 4, 1), 0)], {}, 1),
    ("unsqueeze_11", "Unsqueeze", 11, [(F(2, 4), 0)], {"axes": [0, 3]}, 1),
    ("unsqueeze_13", "Unsqueeze", 13, [(F(2, 4), 0), (I64(-1, 1), 1)], {}, 1),
    ("reshape", "Reshape", 13, [(F(2, 3, 4), 0), (I64(0, -1), 1)], {}, 1),
    ("reshape_allowzero", "Reshape", 14, [(F(2, 3, 4), 0), (I64(4, 0, 2), 0)], {"allowzero": 0}, 1),
    ("flatten_0", "Flatten", 13, [(F(2, 3, 4), 0)], {"axis": 0}, 1),
    ("flatten_2", "Flatten", 13, [(F(2, 3, 4), 0)], {"axis": 2}, 1),
    ("flatten_neg", "Flatten", 13, [(F(2, 3, 4), 0)], {"axis": -1}, 1),
    ("concat", "Concat", 13, [(F(2, 3), 0), (F(2, 1), 1), (F(2, 2), 0)], {"axis": -1}, 1),
    ("split_11", "Split", 11, [(F(2, 6), 0)], {"axis": 1, "split": [1, 2, 3]}, 3),
    ("split_11_equal", "Split", 11, [(F(6, 2), 0)], {}, 2),
    ("split_13", "Split", 13, [(F(2, 6), 0), (I64(4, 2), 1)], {"axis": -1}, 2),
    ("split_18_uneven", "Split", 18, [(F(7, 2), 0)], {"num_outputs": 3}, 3),
    ("slice_9", "Slice", 9, [(F(4, 5), 0)], {"starts": [1, 0], "ends": [3, -1], "axes": [0, 1]}, 1),
    ("slice_13", "Slice", 13, [(F(4, 5, 6), 0), (I64(-1, 1), 1), (I64(-2**62, 2**62), 1), (I64(2, 0), 1), (I64(-2, 2), 1)], {}, 1),
    ("slice_13_rev", "Slice", 13, [(F(6, 2), 0), (I64(-1), 0), (I64(-100), 0), (I64(0), 0), (I64(-1), 0)], {}, 1),
    ("slice_10_noaxes", "Slice", 10, [(F(4, 5), 0), (I64(1, 1), 1), (I64(3, 4), 1)], {}, 1),
    ("gather_scalar", "Gather", 13, [(F(4, 3), 0), (np.array(-1, np.int64), 1)], {}, 1),
    ("gather_axis1", "Gather", 13, [(F(2, 5, 3), 0), (I64(0, -2, 4), 0)], {"axis": 1}, 1),
    ("shape", "Shape", 13, [(F(2, 3, 4), 0)], {}, 1),
    ("shape_15", "Shape", 15, [(F(2, 3, 4), 0)], {"start": 1, "end": -1}, 1),
    ("size", "Size", 13, [(F(2, 3, 4), 0)], {}, 1),
    ("constantofshape", "ConstantOfShape", 20, [(I64(2, 3), 0)], {"value": numpy_helper.from_array(np.array([7], np.int64))}, 1),
    ("constantofshape_default", "ConstantOfShape", 9, [(I64(2, 3), 0)], {}, 1),
    ("expand", "Expand", 13, [(F(3, 1), 0), (I64(2, 3, 4), 1)], {}, 1),
    ("range", "Range", 11, [(np.array(1, np.int64), 0), (np.array(9, np.int64), 0), (np.array(3, np.int64), 0)], {}, 1),
    ("matmul_3d", "MatMul", 13, [(F(2, 3, 4), 0), (F(4, 5), 1)], {}, 1),
    ("matmul_2d", "MatMul", 9, [(F(3, 4), 0), (F(4, 5), 0)], {}, 1),
    ("gemm", "Gemm", 13, [(F(3, 4), 0), (F(5, 4), 1), (F(5), 1)], {"transB": 1, "alpha": 0.5, "beta": 2.0}, 1),
    ("gemm_transA", "Gemm", 11, [(F(4, 3), 0), (F(4, 5), 0), (np.array(0.3, np.float32), 0)], {"transA": 1}, 1),
    ("gemm_noC", "Gemm", 11, [(F(3, 4), 0), (F(4, 5), 1)], {}, 1),
    ("gemm_7", "Gemm", 7, [(F(3, 4), 0), (F(4, 5), 1), (F(3, 5), 1)], {}, 1),
    # convolution: 1-D and 2-D, strides, dilations, groups, explicit and automatic pads, no bias
    ("conv1d", "Conv", 11, [(F(2, 3, 11), 0), (F(4, 3, 3), 1), (F(4), 1)], {"pads": [1, 1]}, 1),
    ("conv1d_stride_nobias", "Conv", 11, [(F(2, 1, 40), 0), (F(6, 1, 8), 1)], {"strides": [4], "kernel_shape": [8]}, 1),
    ("conv1d_uneven_pads", "Conv", 7, [(F(1, 3, 9), 0), (F(5, 3, 3), 1), (F(5), 1)], {"pads": [2, 0], "strides": [2]}, 1),
    ("conv1d_dilated", "Conv", 11, [(F(2, 2, 15), 0), (F(3, 2, 3), 0), (F(3), 0)], {"dilations": [3], "pads": [2, 1]}, 1),
    ("conv1d_groups", "Conv", 11, [(F(2, 6, 10), 0), (F(9, 2, 3), 1), (F(9), 1)], {"group": 3, "pads": [1, 1]}, 1),
    ("conv1d_depthwise", "Conv", 11, [(F(1, 4, 7), 0), (F(4, 1, 5), 1), (F(4), 1)], {"group": 4, "auto_pad": "SAME_UPPER"}, 1),
    ("conv1d_same_lower", "Conv", 11, [(F(1, 2, 10), 0), (F(3, 2, 4), 1)], {"auto_pad": "SAME_LOWER", "strides": [3]}, 1),
    ("conv1d_valid", "Conv", 11, [(F(1, 2, 10), 0), (F(3, 2, 4), 1)], {"auto_pad": "VALID", "strides": [2]}, 1),
    ("conv2d", "Conv", 11, [(F(2, 3, 7, 6), 0), (F(4, 3, 3, 2), 1), (F(4), 1)],
     {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]}, 1),
    ("conv2d_groups_same", "Conv", 11, [(F(1, 4, 5, 5), 0), (F(6, 2, 3, 3), 1), (F(6), 1)],
     {"group": 2, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, 1),
    ("conv3d", "Conv", 11, [(F(1, 2, 4, 5, 3), 0), (F(3, 2, 2, 3, 2), 1), (F(3), 1)], {"pads": [0, 1, 1, 1, 0, 0]}, 1),
    # padding: every mode, pads as an attribute (opset 2) or an input (11), axes (18), wrap (19)
    ("pad_2_constant", "Pad", 7, [(F(2, 3), 0)], {"pads": [0, 1, 2, 1], "value": 1.5}, 1),
    ("pad_2_reflect", "Pad", 10, [(F(2, 5), 0)], {"pads": [0, 3, 1, 2], "mode": "reflect"}, 1),
    ("pad_11_reflect", "Pad", 11, [(F(3, 6), 0), (I64(0, 4, 0, 4), 1)], {"mode": "reflect"}, 1),
    ("pad_11_edge", "Pad", 11, [(F(2, 3, 4), 0), (I64(1, 0, 2, 0, 3, 1), 1)], {"mode": "edge"}, 1),
    ("pad_13_value", "Pad", 13, [(F(2, 3), 0), (I64(1, 1, 0, 2), 1), (np.array(-2.0, np.float32), 1)], {}, 1),
    ("pad_13_negative", "Pad", 13, [(F(4, 5), 0), (I64(-1, 2, 1, -2), 1)], {}, 1),
    ("pad_13_int", "Pad", 13, [(I64(1, 2, 3, 4), 0), (I64(2, 1), 1), (np.array(9, np.int64), 1)], {}, 1),
    ("pad_18_axes", "Pad", 18, [(F(2, 3, 4), 0), (I64(1, 2, 0, 3), 1), (None, 0), (I64(-1, 0), 1)], {"mode": "edge"}, 1),
    ("pad_19_wrap", "Pad", 19, [(F(3, 4), 0), (I64(1, 2, 2, 3), 1)], {"mode": "wrap"}, 1),
    # reductions: axes as an attribute or an input, keepdims, all axes, noop_with_empty_axes
    ("reducemean_13", "ReduceMean", 13, [(F(2, 3, 4), 0)], {"axes": [1], "keepdims": 1}, 1),
    ("reducemean_13_all", "ReduceMean", 13, [(F(2, 3, 4), 0)], {"keepdims": 0}, 1),
    ("reducemean_18", "ReduceMean", 18, [(F(2, 3, 4), 0), (I64(-1, 0), 1)], {"keepdims": 0}, 1),
    ("reducemean_18_noop", "ReduceMean", 18, [(F(2, 3), 0)], {"noop_with_empty_axes": 1}, 1),
    ("reducesum_11", "ReduceSum", 11, [(F(2, 3, 4), 0)], {"axes": [0, 2]}, 1),
    ("reducesum_13", "ReduceSum", 13, [(F(2, 3, 4), 0), (I64(1), 0)], {"keepdims": 0}, 1),
    ("reducesum_13_all", "ReduceSum", 13, [(F(2, 3, 4), 0)], {}, 1),
    ("reducemax_13", "ReduceMax", 13, [(F(2, 3, 4), 0)], {"axes": [2]}, 1),
    ("reducemin_18", "ReduceMin", 18, [(F(2, 3, 4), 0), (I64(0), 1)], {}, 1),
    ("reduceprod_13", "ReduceProd", 13, [(POS(2, 3, 4), 0)], {"axes": [1], "keepdims": 0}, 1),
    ("reducel2_18", "ReduceL2", 18, [(F(2, 3, 4), 0), (I64(2), 1)], {}, 1),
]


def _model(op, opset, inputs, attrs, nout):
    names, vis, inits, feeds = [], [], [], {}
    for k, (a, init) in enumerate(inputs):
        if a is None:
            names.append("")
            continue
        n = f"in{k}"
        names.append(n)
        a = np.asarray(a)
        if init:
            inits.append(numpy_helper.from_array(a, n))
        else:
            vis.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
            feeds[n] = a
    outs = [f"out{k}" for k in range(nout)]
    node = helper.make_node(op, names, outs, name=f"the_{op}", **attrs)
    g = helper.make_graph([node], "ops", vis, [helper.make_empty_tensor_value_info(o) for o in outs],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, feeds


def _ort(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_op_vs_onnxruntime(case):
    _, op, opset, inputs, attrs, nout = case
    model, feeds = _model(op, opset, inputs, attrs, nout)
    want = _ort(model, feeds)
    got = srnn.InferenceSession(model).run(None, feeds)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, w.shape, g.dtype, w.dtype)
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_all_listed_ops_supported():
    need = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "Softmax",
            "LogSoftmax", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Concat", "Split", "Slice",
            "Gather", "Shape", "Constant", "ConstantOfShape", "Identity", "Cast", "Expand", "Where", "Clip",
            "LSTM", "GRU", "RNN"}
    assert need <= set(supported_ops())
    assert need <= {c[1] for c in CASES} | {"Constant", "LSTM", "GRU", "RNN"}


def test_constant_variants():
    nodes = [
        helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(F(3))),
        helper.make_node("Constant", [], ["b"], value_float=2.5),
        helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0, 3.0]),
        helper.make_node("Constant", [], ["d"], value_ints=[1, 2, 3]),
        helper.make_node("Constant", [], ["e"], value_int=4),
        helper.make_node("Cast", ["d"], ["df"], to=TensorProto.FLOAT),
        helper.make_node("Sum", ["x", "a", "b", "c", "df"], ["s"]),
        helper.make_node("Mul", ["d", "e"], ["m"]),
    ]
    g = helper.make_graph(nodes, "c", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_empty_tensor_value_info(o) for o in ("s", "m")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    feeds = {"x": F(3)}
    for a, b in zip(srnn.InferenceSession(m).run(None, feeds), _ort(m, feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
        assert a.dtype == b.dtype


def _shape_graph(x_shape):
    """x -> Reshape(x, [dim0 * dim1, dim2]) with the shape computed by Shape/Gather/Mul/Concat."""
    c = lambda n, v: helper.make_node("Constant", [], [n], value=numpy_helper.from_array(I64(*v)))  # noqa: E731
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        c("i0", [0]), c("i1", [1]), c("i2", [2]),
        helper.make_node("Gather", ["s", "i0"], ["d0"]),
        helper.make_node("Gather", ["s", "i1"], ["d1"]),
        helper.make_node("Gather", ["s", "i2"], ["d2"]),
        helper.make_node("Mul", ["d0", "d1"], ["d01"]),
        helper.make_node("Concat", ["d01", "d2"], ["shp"], axis=0),
        helper.make_node("Reshape", ["x", "shp"], ["flat"]),
        helper.make_node("Relu", ["flat"], ["y"]),
    ]
    g = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def test_shape_arithmetic_folds():
    m = _shape_graph([2, 3, 4])  # static: everything but Reshape and Relu folds
    ops = [n.op_type for n in Graph(m).nodes]
    assert ops == ["Reshape", "Relu"], ops
    m = _shape_graph(["T", "B", 4])  # symbolic batch/time: the static feature dim folds
    ops = [n.op_type for n in Graph(m).nodes]
    assert "Constant" not in ops and ops.count("Gather") == 2, ops
    feeds = {"x": F(5, 2, 4)}
    np.testing.assert_allclose(srnn.InferenceSession(m).run(None, feeds)[0], _ort(m, feeds)[0])


def test_torch_export_glue_folds():
    torch = pytest.importorskip("torch")
    import io
    import warnings

    net = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 5, 3),), f, dynamo=False, opset_version=17)
    ops = [n.op_type for n in Graph(onnx.load_from_string(f.getvalue())).nodes]
    assert "Constant" not in ops and "Shape" not in ops and "ConstantOfShape" not in ops, ops


def _one(op, opset, inputs, attrs):
    model, feeds = _model(op, opset, inputs, attrs, 1)
    return srnn.InferenceSession(model), feeds


def test_conv_pad_reduce_refusals():
    # pads a reflection cannot give (onnxruntime refuses them too), at run time, naming the node and the axis
    sess, feeds = _one("Pad", 13, [(F(2, 3), 0), (I64(0, 3, 0, 1), 1)], {"mode": "reflect"})
    with pytest.raises(srnn.StreamRNNError, match=r"the_Pad.*pads.*axis size 3.*\(3, 1\) on axis 1"):
        sess.run(None, feeds)
    sess, feeds = _one("Pad", 13, [(F(2, 3), 0), (I64(-1, 0, 0, 0), 1)], {"mode": "edge"})
    with pytest.raises(srnn.StreamRNNError, match="non-negative pads in mode 'edge'"):
        sess.run(None, feeds)
    # wrap is an opset 19 mode; an unknown auto_pad; weights of the wrong number of channels
    with pytest.raises(srnn.UnsupportedError, match=r"mode: expected one of \['constant', 'reflect', 'edge'\], got 'wrap'"):
        _one("Pad", 18, [(F(2, 3), 0), (I64(0, 1, 0, 1), 1)], {"mode": "wrap"})
    with pytest.raises(srnn.UnsupportedError, match="auto_pad"):
        _one("Conv", 11, [(F(1, 2, 5), 0), (F(3, 2, 2), 1)], {"auto_pad": "FULL"})
    sess, feeds = _one("Conv", 11, [(F(1, 4, 5), 0), (F(3, 2, 2), 1)], {})
    with pytest.raises(srnn.StreamRNNError, match=r"the_Conv.*W: expected shape \(3, 4/group"):
        sess.run(None, feeds)
    sess, feeds = _one("ReduceMean", 18, [(F(2, 3), 0), (I64(2), 0)], {})
    with pytest.raises(srnn.StreamRNNError, match=r"axes: expected values in \[-2, 1\], got \[2\]"):
        sess.run(None, feeds)


def test_readme_lists_the_supported_ops():
    import os
    import re

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    m = re.search(r"Supported\s+ops: ([A-Za-z0-9, \n]+)\.", readme)
    assert m, "README: no 'Supported ops:' list"
    listed = [o.strip() for o in m.group(1).replace("\n", " ").split(",")]
    assert listed == supported_ops()


def test_conv_pad_reduce_more_refusals():
    """Each check of Conv / Pad / reductions, with the node named in the message."""
    def runs(op, opset, inputs, attrs, match, err=srnn.StreamRNNError):
        sess, feeds = _one(op, opset, inputs, attrs)
        with pytest.raises(err, match=match):
            sess.run(None, feeds)

    runs("Conv", 11, [(F(1, 2, 3), 0), (F(3, 2, 5), 1)], {}, r"the_Conv.*X: expected spatial dims of at least \[5\]")
    runs("Conv", 11, [(F(1, 2, 5), 0), (F(3, 2), 0)], {}, r"the_Conv.*W: expected shape \(M, C / group, \*K\)")
    runs("Conv", 11, [(F(2, 5), 0), (F(3, 2, 2), 1)], {}, r"the_Conv.*X and W: expected ranks equal and >= 3")
    runs("Conv", 11, [(F(1, 2, 5), 0), (F(3, 2, 2), 1), (F(4), 0)], {}, r"the_Conv.*B: expected 3 values, got shape \(4,\)")
    with pytest.raises(srnn.UnsupportedError, match=r"kernel_shape \[3\] differs from W's \[2\]"):
        _one("Conv", 11, [(F(1, 2, 5), 0), (F(3, 2, 2), 1)], {"kernel_shape": [3]})
    with pytest.raises(srnn.UnsupportedError, match="M a multiple of group 2"):
        _one("Conv", 11, [(F(1, 4, 5), 0), (F(3, 2, 2), 1)], {"group": 2})
    runs("Pad", 13, [(F(2, 3), 0), (I64(1, 1, 1), 1)], {}, r"the_Pad.*pads: expected 4 values for axes \[0, 1\]")
    runs("ReduceMax", 18, [(np.zeros((0, 3), np.float32), 0)], {}, r"the_ReduceMax.*data: expected a non-empty input")


def test_pad_with_pads_fed_at_run_time():
    """Pads that are not constants: planned per call (no per-shape plan), as onnxruntime."""
    for pads in (I64(0, 2, 1, 0), I64(1, 0, 0, 2)):
        model, feeds = _model("Pad", 13, [(F(2, 3), 0), (pads, 0)], {"mode": "reflect"}, 1)
        got = srnn.InferenceSession(model).run(None, feeds)[0]
        np.testing.assert_array_equal(got, _ort(model, feeds)[0])
