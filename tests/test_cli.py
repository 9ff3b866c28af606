"""The ``streamrnn`` command line (``streamrnn.cli.main``) and ``python -m streamrnn``."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.cli import main


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("cli") / "demo.srnn")
    assert main(["demo", "-o", p]) == 0
    return p


def test_demo_writes_loadable_model(demo_path, capsys):
    m = srnn.load(demo_path)
    assert (m.input_size, m.output_size) == (8, 4)
    assert m.streamable


def test_inspect_json(demo_path, capsys):
    assert main(["inspect", demo_path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input_size"] == 8 and info["output_size"] == 4
    assert info["state_floats_per_stream"] == 64  # h and c of an LSTM with hidden 32
    assert info["parameters"] == 4 * 32 * (8 + 32) + 8 * 32 + 4 * 32 + 4
    assert info["streamable"] is True and info["offline_only_layers"] == []
    assert [l["type"] for l in info["layers"]] == ["LSTMLayer", "DenseLayer"]


def test_inspect_text(demo_path, capsys):
    assert main(["inspect", demo_path]) == 0
    out = capsys.readouterr().out
    assert "LSTM(input=8, hidden=32" in out and "parameters=" in out


def test_convert_roundtrip(demo_path, tmp_path, capsys):
    out = str(tmp_path / "copy.srnn")
    assert main(["convert", demo_path, "-o", out]) == 0
    a, b = srnn.load(demo_path), srnn.load(out)
    X = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.testing.assert_array_equal(a.run(X), b.run(X))


def test_stream_csv_equals_stream_step(demo_path, tmp_path, capsys):
    X = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    f = tmp_path / "frames.csv"
    f.write_text("# three frames\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in X) + "\n")
    assert main(["stream", demo_path, "--input", str(f)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    got = np.array([[float(v) for v in line.split(",")] for line in lines])
    s = srnn.load(demo_path).stream()
    want = np.stack([s.step(x) for x in X])
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_stream_npy(demo_path, tmp_path, capsys):
    X = np.random.default_rng(2).standard_normal((4, 8))
    np.save(tmp_path / "frames.npy", X)
    assert main(["stream", demo_path, "-i", str(tmp_path / "frames.npy")]) == 0
    got = np.loadtxt(capsys.readouterr().out.splitlines(), delimiter=",")
    np.testing.assert_allclose(got, srnn.load(demo_path).stream().push(X), rtol=1e-6, atol=1e-7)


def test_stream_bad_line_exit_2(demo_path, tmp_path, capsys):
    f = tmp_path / "bad.csv"
    f.write_text("1,2,3,4,5,6,7,8\n1,2,3\n")
    assert main(["stream", demo_path, "--input", str(f)]) == 2
    cap = capsys.readouterr()
    assert len(cap.out.strip().splitlines()) == 1  # the good first frame was printed
    assert ":2:" in cap.err and "expected 8 values" in cap.err
    f.write_text("1,2,3,4,5,6,7,oops\n")
    assert main(["stream", demo_path, "--input", str(f)]) == 2
    assert "oops" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"", b"garbage that is no model", b"\xff" * 64])
def test_bad_model_file_exit_2(tmp_path, capsys, content):
    p = tmp_path / "bad.srnn"
    p.write_bytes(content)
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_missing_file_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nope.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["bench"]) == 2  # neither MODEL nor --demo
    for bad in (["--streams", "0"], ["--steps", "-5"], ["--warmup", "-1"], ["--threads", "0"]):
        assert main(["bench", "--demo", *bad]) == 2, bad
        assert bad[0] in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], ["inspect"], ["convert"], ["bench"], ["stream"], ["demo"]])
def test_help_exit_0(cmd, capsys):
    assert main(cmd + ["--help"]) == 0
    assert "usage:" in capsys.readouterr().out


def test_bench_demo_json(capsys):
    assert main(["bench", "--demo", "--steps", "200", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    lat = res["latency_us"]
    assert res["steps"] == 200 and res["streams"] == 1
    assert 0 < lat["p50_us"] <= lat["p99_us"] <= lat["p99_9_us"] <= lat["max_us"]
    assert res["throughput_stream_steps_per_s"] > 0


def test_bench_pool(demo_path, capsys):
    assert main(["bench", demo_path, "--streams", "16", "--steps", "50", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["streams"] == 16 and "pool.step" in res["method"]


def test_python_dash_m(demo_path):
    r = subprocess.run([sys.executable, "-m", "streamrnn", "stream", demo_path], input="0,0,0,0,0,0,0,0\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().split(",")) == 4
    r = subprocess.run([sys.executable, "-m", "streamrnn", "inspect", os.path.join(os.path.dirname(demo_path), "x.srnn")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0


def test_convert_from_onnx_matches_onnxruntime(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    I, H, O = 5, 7, 3
    W, R, B = (rng.uniform(-0.4, 0.4, s).astype(np.float32) for s in ((1, 4 * H, I), (1, 4 * H, H), (1, 8 * H)))
    WT, b = rng.uniform(-0.4, 0.4, (H, O)).astype(np.float32), rng.uniform(-0.4, 0.4, O).astype(np.float32)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["X", "W", "R", "B"], ["Y_all", "Y_h"], hidden_size=H),
         helper.make_node("Squeeze", ["Y_all", "axes"], ["Y_seq"]),
         helper.make_node("MatMul", ["Y_seq", "WT"], ["Y_mm"]),
         helper.make_node("Add", ["Y_mm", "b"], ["Y"])],
        "g", [vi("X", TensorProto.FLOAT, ["T", 1, I])], [vi("Y", TensorProto.FLOAT, ["T", 1, O])],
        initializer=[numpy_helper.from_array(a, n) for a, n in
                     ((W, "W"), (R, "R"), (B, "B"), (WT, "WT"), (b, "b"), (np.array([1], np.int64), "axes"))])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src, dst = str(tmp_path / "m.onnx"), str(tmp_path / "m.srnn")
    onnx.save(m, src)
    assert main(["convert", src, "-o", dst]) == 0
    X = rng.standard_normal((6, I)).astype(np.float32)
    want = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, {"X": X[:, None]})[0][:, 0]
    s = srnn.load(dst).stream()
    np.testing.assert_allclose(np.stack([s.step(x) for x in X]), want, rtol=1e-5, atol=1e-6)


def test_bench_compare_runs_the_suite_of_the_source_tree(demo_path, capsys):
    """`streamrnn bench --compare ARGS` hands ARGS to bench/latency.py (here --help: no timing)."""
    r = subprocess.run([sys.executable, "-m", "streamrnn", "bench", "--compare", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "streamrnn vs onnxruntime vs PyTorch" in r.stdout and "--sections" in r.stdout
    assert main(["bench", demo_path, "--compare"]) == 2
    assert "--compare" in capsys.readouterr().err


def test_every_command_on_a_graph_model(tmp_path, capsys):
    """An ONNX graph that is not a chain of layers loads as a graph model (no spec): inspect
    describes its nodes (text and --json), bench and stream run it, convert refuses it with
    the reason (exit 2). Before, inspect, convert and bench failed with AttributeError."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_onnx_graph_model import Residual, _export  # y = fc(lstm(x) + x)

    torch.manual_seed(3)
    net = Residual().eval()
    onnx_bytes = _export(net, torch.randn(2, 5, 4), {0: "b", 1: "t"})
    path = str(tmp_path / "residual.onnx")
    with open(path, "wb") as fh:
        fh.write(onnx_bytes)
    n_params = sum(p.numel() for p in net.parameters())
    assert main(["inspect", path, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "onnx graph model" and info["parameters"] == n_params
    assert (info["input_size"], info["output_size"], info["state_floats_per_stream"]) == (4, 3, 8)
    assert info["streamable"] is True and info["supports"] == {"run": True, "stream": True, "pool": True}
    assert [r["op"] for r in info["recurrent_nodes"]] == ["LSTM"] and {"op": "Add", "name": "/Add"} in info["nodes"]
    fs = info["frame_step"]  # the planned step: the LSTM, the head, the transposes as reshapes
    assert fs["planned"] is True and 0 < fs["per_frame"] <= fs["of"] == len(info["nodes"]) and fs["as_reshapes"] >= 2
    assert main(["inspect", path]) == 0
    text = capsys.readouterr().out
    assert "ONNX graph model" in text and f"parameters={n_params}" in text and "model.pool().step" in text
    assert main(["convert", path, "-o", str(tmp_path / "r.srnn")]) == 2
    assert "no .srnn form" in capsys.readouterr().err and not (tmp_path / "r.srnn").exists()
    assert main(["bench", path, "--streams", "3", "--steps", "20", "--json", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["parameters"] == n_params and out["model"]["state_floats"] == 8
    X = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    assert main(["stream", path, "-i", str(tmp_path / "x.npy")]) == 0
    got = np.loadtxt(capsys.readouterr().out.splitlines(), delimiter=",")
    with torch.no_grad():
        want = net(torch.from_numpy(X[None]))[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
