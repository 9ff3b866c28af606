"""Silero VAD (silero-vad 6.2.3's ONNX files, see tests/silero.py): a real-world streaming
model, a framewise STFT + Conv1d encoder in front of an LSTM, exported by its authors in several
ways. Checked against onnxruntime on each file, and against the package's main file
(``silero_vad.onnx``, which streamrnn does not load: its ``If`` nodes) run by onnxruntime:
three exports of one model, one answer."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")

import streamrnn as srnn  # noqa: E402
from streamrnn.converters.graph_model import GraphModel  # noqa: E402

from conftest import assert_close  # noqa: E402
from silero import silero_dir  # noqa: E402

N = 576  # samples per chunk at 16 kHz: 64 of context + 512 new


@pytest.fixture(scope="module")
def data():
    d, why = silero_dir()
    if d is None:
        pytest.skip(why)
    return d


def _sess(path):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _audio(rng, B, T):
    """B streams of T chunks: noise with tone bursts (outputs not all alike)."""
    t = np.arange(T * N) / 16000.0
    x = 0.05 * rng.standard_normal((B, T * N))
    for b in range(B):
        f = rng.uniform(150, 400)
        x[b] += (np.sin(2 * np.pi * f * t) * (np.sin(2 * np.pi * rng.uniform(1, 3) * t) > 0)) * rng.uniform(0.2, 0.8)
    return x.reshape(B, T, N).astype(np.float32)


def _main_file(data, X):
    """silero_vad.onnx on onnxruntime, chunk by chunk with its state fed back: (B, T)."""
    s = _sess(data / "silero_vad.onnx")
    B, T, _ = X.shape
    st = np.zeros((2, B, 128), np.float32)
    out = np.zeros((B, T), np.float32)
    for t in range(T):
        o, st = s.run(None, {"input": X[:, t], "state": st, "sr": np.array(16000, np.int64)})
        out[:, t] = o[:, 0]
    return out


def test_sequence_export(data):
    """silero_vad_16k_sequence.onnx: X (T, 576), h / c (1, 1, 128) -> speech_probs (T,), hn, cn."""
    path = data / "silero_vad_16k_sequence.onnx"
    model = srnn.load(str(path))
    assert isinstance(model, GraphModel) and model.input_size == N and model.output_size == 1 and model.streamable
    X = _audio(np.random.default_rng(1), 3, 8)
    sess, z = _sess(path), np.zeros((1, 1, 128), np.float32)
    want = np.stack([sess.run(None, {"input": X[b], "h": z, "c": z})[0] for b in range(3)])  # (B, T)
    assert want.std() > 1e-3
    Y, st = model.run(X, return_state=True)
    assert_close(Y[..., 0], want)
    _, hn, cn = sess.run(None, {"input": X[0], "h": z, "c": z})
    assert_close(st.data[0], np.concatenate([hn.ravel(), cn.ravel()]))
    s = model.stream()
    assert_close(np.array([s.step(x)[0] for x in X[1]]), want[1])
    pool = model.pool(4)
    ids = pool.open(3)
    assert_close(np.stack([pool.step(ids, X[:, t])[:, 0] for t in range(8)], 1), want)
    assert_close(Y[..., 0], _main_file(data, X))  # the package's main file, on onnxruntime


def test_openvino_export_steps_streams_in_one_evaluation(data):
    """silero_vad_openvino_16k.onnx: one chunk of one stream (input (1, 576), state (2, 1, 128)
    packed h / c), with the sample rate's branch inlined. Its rows compute on their own, so a
    pool steps all its streams in one evaluation."""
    path = data / "silero_vad_openvino_16k.onnx"
    model = srnn.load(str(path))
    assert model.plan.frame_rows and model.frame_step["planned"], model.frame_step
    X = _audio(np.random.default_rng(2), 4, 6)
    sess = _sess(path)
    want = np.zeros((4, 6), np.float32)
    for b in range(4):
        st = np.zeros((2, 1, 128), np.float32)
        for t in range(6):
            o, st = sess.run(None, {"input": X[b, t][None], "state": st})
            want[b, t] = o[0, 0]
    assert_close(model.run(X)[..., 0], want)
    assert_close(want, _main_file(data, X))
    pool = model.pool(8)
    ids = pool.open(4)[::-1]
    Y = np.stack([pool.step(ids, X[::-1, t])[:, 0] for t in range(6)], 1)[::-1]
    assert_close(Y, want)
    s = model.stream()
    assert_close(np.concatenate([s.push(X[3, :2]), s.push(X[3, 2:])])[:, 0], want[3])
    # the onnxruntime-compatible session on the file
    isess = srnn.InferenceSession(str(path))
    got = isess.run(None, {"input": X[0, 0][None], "state": np.zeros((2, 1, 128), np.float32)})
    ref = sess.run(None, {"input": X[0, 0][None], "state": np.zeros((2, 1, 128), np.float32)})
    for g, r in zip(got, ref):
        assert_close(g, r)


@pytest.mark.parametrize("name", ["silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_half.onnx",
                                  "silero_vad_op18_ifless.onnx"])
def test_files_with_control_flow_refused_by_name(data, name):
    with pytest.raises(srnn.UnsupportedError, match=r"\(If, opset \d+\): op 'If' not supported"):
        srnn.load(str(data / name))
