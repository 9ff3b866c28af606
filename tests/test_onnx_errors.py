"""Bad ONNX input: malformed / truncated files, unsupported ops and attributes, bad feeds."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import streamrnn as srnn  # noqa: E402
from streamrnn.errors import FormatError, ShapeError, StreamRNNError, UnsupportedError  # noqa: E402


def _lstm_model(extra_nodes=(), opset=14, out="y", **attrs):
    rng = np.random.default_rng(0)
    H, I = 3, 2
    inits = [
        numpy_helper.from_array(rng.normal(size=(1, 4 * H, I)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(1, 4 * H, H)).astype(np.float32), "R"),
    ]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["Y"], name="my_lstm", hidden_size=H, **attrs),
             helper.make_node("Squeeze", ["Y", "ax"], ["ys"], name="sq"), *extra_nodes]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "ax"))
    last = extra_nodes[-1].output[0] if extra_nodes else "ys"
    nodes.append(helper.make_node("Identity", [last], [out], name="ident"))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_good_model_loads(tmp_path):
    p = tmp_path / "m.onnx"
    p.write_bytes(_lstm_model().SerializeToString())
    assert isinstance(srnn.load(p), srnn.Model)


@pytest.mark.parametrize("data", [b"", b"garbage\x00\xff\xfe not a protobuf", b"\x08" * 3, b"\xff" * 100])
def test_garbage_files(tmp_path, data):
    p = tmp_path / "bad.onnx"
    p.write_bytes(data)
    with pytest.raises(StreamRNNError):
        srnn.load(p)
    with pytest.raises(StreamRNNError):
        srnn.InferenceSession(str(p))


def test_every_truncation_is_refused(tmp_path):
    blob = _lstm_model().SerializeToString()
    cuts = sorted(set(np.linspace(1, len(blob) - 1, 60).astype(int).tolist()) | {len(blob) - 1, len(blob) - 2})
    p = tmp_path / "t.onnx"
    for n in cuts:
        p.write_bytes(blob[:n])
        with pytest.raises(StreamRNNError):
            srnn.load(p)
        with pytest.raises(StreamRNNError):
            srnn.InferenceSession(blob[:n])


def test_truncated_torch_export(tmp_path):
    torch = pytest.importorskip("torch")
    import io
    import warnings

    net = torch.nn.LSTM(3, 4, num_layers=2)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(5, 1, 3),), f, dynamo=False, opset_version=17)
    blob = f.getvalue()
    for n in np.linspace(10, len(blob) - 1, 40).astype(int):
        with pytest.raises(StreamRNNError):
            srnn.from_onnx(blob[:n])


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        srnn.load("/nonexistent/dir/model.onnx")
    with pytest.raises(FileNotFoundError):
        srnn.InferenceSession("/nonexistent/dir/model.onnx")


def test_unsupported_op_names_node():
    conv = helper.make_node("TopK", ["ys", "k"], ["v", "i"], name="the_topk")
    m = _lstm_model([conv])
    m.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "k"))
    for load in (srnn.from_onnx, srnn.InferenceSession):
        with pytest.raises(UnsupportedError) as ei:
            load(m)
        msg = str(ei.value)
        assert "the_topk" in msg and "TopK" in msg and "LSTM" in msg  # the node, the op, what is supported


def test_unsupported_attribute_and_values():
    with pytest.raises(UnsupportedError, match="my_lstm.*activations"):
        srnn.from_onnx(_lstm_model(activations=["Sigmoid", "Swish", "Tanh"]))
    with pytest.raises(UnsupportedError, match="my_lstm.*direction"):
        srnn.from_onnx(_lstm_model(direction="sideways"))
    with pytest.raises(UnsupportedError, match="my_lstm.*layout"):  # layout appears in opset 14
        srnn.from_onnx(_lstm_model(opset=13, layout=0))
    soft = helper.make_node("Softmax", ["ys"], ["s"], name="sm", axis=-1, bogus=1)
    with pytest.raises(UnsupportedError, match="sm.*bogus"):
        srnn.from_onnx(_lstm_model([soft]))
    for hs in (0, -3):  # was a shape error about W (-3) or taken as "absent" (0); onnxruntime refuses both
        m = _lstm_model()
        next(a for a in m.graph.node[0].attribute if a.name == "hidden_size").i = hs
        with pytest.raises(StreamRNNError, match=f"my_lstm.*hidden_size: expected a positive int, got {hs}"):
            srnn.from_onnx(m)


def test_old_opset_refused():
    with pytest.raises(UnsupportedError, match="opset"):
        srnn.from_onnx(_lstm_model(opset=6))


def test_weights_as_inputs_need_session():
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], hidden_size=2)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "XWR"],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(UnsupportedError, match="InferenceSession"):
        srnn.from_onnx(m)


def test_bad_state_map():
    m = _lstm_model()
    with pytest.raises(StreamRNNError, match="state_map.*nope"):
        srnn.from_onnx(m, state_map={"nope": "y"})
    with pytest.raises(StreamRNNError, match="state_map.*nope"):
        srnn.from_onnx(m, state_map={"x": "nope"})


def test_bad_dtype_device():
    with pytest.raises(StreamRNNError, match="dtype"):
        srnn.from_onnx(_lstm_model(), dtype="int8")
    with pytest.raises(StreamRNNError, match="device"):
        srnn.from_onnx(_lstm_model(), device="tpu")


def test_session_feed_errors():
    sess = srnn.InferenceSession(_lstm_model())
    x = np.zeros((4, 2, 2), np.float32)
    with pytest.raises(StreamRNNError, match="nope"):
        sess.run(None, {"x": x, "nope": x})
    with pytest.raises(StreamRNNError, match="'x'"):
        sess.run(None, {})
    with pytest.raises(ShapeError, match="rank 3"):
        sess.run(None, {"x": x[0]})
    with pytest.raises(ShapeError, match="dim 2 = 2"):
        sess.run(None, {"x": np.zeros((4, 2, 3), np.float32)})
    with pytest.raises(StreamRNNError, match="output_names"):
        sess.run(["nope"], {"x": x})
    with pytest.raises(ShapeError):
        sess.run(None, {"x": x.astype(np.complex64)})
    y64 = sess.run(None, {"x": x.astype(np.float64)})[0]  # other float dtypes are cast
    assert y64.dtype == np.float32



@pytest.mark.parametrize("names", [None, [], (), ["Y_h", "Y"], ["Y_h", "Y_h"]])
def test_session_output_names_as_onnxruntime(names):
    """None and an empty list both mean every output (onnxruntime; an empty list gave [])."""
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(3)
    H, I = 3, 2
    inits = [numpy_helper.from_array(rng.normal(size=(1, 4 * H, n)).astype(np.float32), w) for w, n in (("W", I), ("R", H))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["Y", "Y_h"], name="lstm", hidden_size=H)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", I])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = rng.standard_normal((4, 2, I)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(names, {"x": x})
    got = srnn.InferenceSession(model).run(names, {"x": x})
    assert len(got) == len(want) == (len(names) if names else 2)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_session_runtime_shape_error_names_node():
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], name="lstm_a", hidden_size=2)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "XWR"],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    sess = srnn.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]))
    with pytest.raises(StreamRNNError, match="lstm_a.*W.*expected shape"):
        sess.run(None, {"X": np.zeros((2, 1, 3), np.float32), "W": np.zeros((1, 7, 3), np.float32),
                        "R": np.zeros((1, 8, 2), np.float32)})


def test_external_data_of_a_proto_without_its_path_is_refused():
    m = _lstm_model()
    t = m.graph.initializer[0]
    t.data_location = onnx.TensorProto.EXTERNAL
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.external_data.add(key="location", value="weights.bin")
    with pytest.raises(UnsupportedError, match="got external data; load the model by its path"):
        srnn.from_onnx(m)


def test_import_streamrnn_does_not_import_onnx():
    import subprocess
    import sys

    code = "import sys, streamrnn; assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _external(tmp_path, one_file=True):
    """_lstm_model saved with its tensors outside the .onnx file (as large models are)."""
    d = tmp_path / "model"
    d.mkdir()
    path = d / "m.onnx"
    onnx.save_model(_lstm_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=one_file,
                    location="m.data" if one_file else None, size_threshold=64)  # W, R out; the axes in
    return path


@pytest.mark.parametrize("one_file", [True, False])
def test_external_data_is_read_from_the_models_folder(tmp_path, monkeypatch, one_file):
    ort = pytest.importorskip("onnxruntime")
    path = _external(tmp_path, one_file)
    assert len(list(path.parent.iterdir())) >= 2  # the weights are not in the .onnx file
    monkeypatch.chdir(tmp_path)  # locations are relative to the model, not to the working folder
    so = ort.SessionOptions()
    so.log_severity_level = 3
    x = np.random.default_rng(4).standard_normal((5, 2, 2)).astype(np.float32)
    want = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(srnn.InferenceSession(str(path)).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(srnn.load(path).run(x.transpose(1, 0, 2)), want.transpose(1, 0, 2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(srnn.from_onnx(onnx.load(str(path))).run(x.transpose(1, 0, 2)), want.transpose(1, 0, 2),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(UnsupportedError, match="got external data; load the model by its path"):
        srnn.from_onnx(path.read_bytes())


def _set_external(path, dst, **kv):
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        if t.name == "W":
            for e in t.external_data:
                if e.key in kv:
                    e.value = kv.pop(e.key)
            for k, v in kv.items():
                t.external_data.add(key=k, value=v)
    onnx.save_model(m, str(dst))


def test_external_data_outside_the_folder_or_the_file_is_refused(tmp_path):
    """A hostile .onnx must not read other files: ``..``, absolute paths and symbolic links
    that lead out of the model's folder are refused (onnxruntime refuses them too), and so are
    offsets / lengths past the data file."""
    path = _external(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(256, dtype=np.uint8).tobytes())
    (path.parent / "link.bin").symlink_to(secret)
    size = (path.parent / "m.data").stat().st_size
    cases = [
        (dict(location="../secret.bin"), "expected a file inside the model's folder"),
        (dict(location=str(secret)), "expected a file inside the model's folder"),
        (dict(location="link.bin"), "expected a file inside the model's folder"),
        (dict(location="nothing.bin"), "no such file"),
        (dict(offset=str(size)), f"within 'm.data' \\({size} bytes\\)"),
        (dict(offset="-8"), "expected bytes -8"),
        (dict(offset="x"), "bad offset / length"),
    ]
    for i, (kv, msg) in enumerate(cases):
        bad = path.parent / f"bad{i}.onnx"
        _set_external(path, bad, **kv)
        with pytest.raises(FormatError, match=msg):
            srnn.load(bad)
        with pytest.raises(FormatError, match=msg):
            srnn.InferenceSession(str(bad))


def test_session_providers_as_onnxruntime(caplog):
    """providers: the first usable one is taken; CUDAExecutionProvider without a GPU (and any
    provider streamrnn lacks) is skipped with a warning, as onnxruntime does. (On the CUDA
    engine: tests/test_cuda_sim.py, case onnx_cuda.)"""
    import logging

    from streamrnn.engine import cuda_runtime

    x = np.random.default_rng(5).standard_normal((4, 2, 2)).astype(np.float32)
    want = srnn.InferenceSession(_lstm_model()).run(None, {"x": x})[0]
    try:
        cuda_runtime.check_device()
        gpu = True
    except StreamRNNError:
        gpu = False
    cases = [(None, False), (["CPUExecutionProvider", "CUDAExecutionProvider"], False),
             (["TensorrtExecutionProvider", "CPUExecutionProvider"], False)]
    if not gpu:
        cases += [(["CUDAExecutionProvider", "CPUExecutionProvider"], True),
                  ([("CUDAExecutionProvider", {"device_id": 0})], True)]
    for providers, warns in cases:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="streamrnn"):
            sess = srnn.InferenceSession(_lstm_model(), providers=providers)
        assert sess.get_providers() == ["CPUExecutionProvider"], providers
        assert ("CUDAExecutionProvider asked for and not available" in caplog.text) == warns, (providers, caplog.text)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], want)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="streamrnn"):
        srnn.InferenceSession(_lstm_model(), providers=["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert "'TensorrtExecutionProvider' is not available in streamrnn" in caplog.text


def test_a_recurrence_written_as_a_sequence_loop_is_refused_with_the_way_out():
    """The dynamo exporter writes nn.RNN (its length left free) as SplitToSequence over frames
    and a loop, with no RNN node. Such ops are refused, as before, by name and with the list of
    supported ops; now also with what probably happened and what to do. Other unsupported ops
    get no such hint."""
    def graph(op, **attrs):
        node = helper.make_node(op, ["x"], ["s"], **attrs)
        g = helper.make_graph([node, helper.make_node("Identity", ["s"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "B", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    with pytest.raises(UnsupportedError, match=r"op 'SplitToSequence' not supported \(an exporter .*dynamo=False\); "
                                               r"supported ops: Abs"):
        srnn.InferenceSession(graph("SplitToSequence", axis=0, keepdims=0))
    with pytest.raises(UnsupportedError, match=r"op 'Erf' not supported; supported ops: Abs"):
        srnn.InferenceSession(graph("Erf"))
