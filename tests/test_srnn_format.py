"""The .srnn format: round trip, memory-mapped load, refusal of bad and newer files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import streamrnn as srnn

from conftest import assert_close, rand_spec


@pytest.mark.parametrize("seed", range(4))
def test_roundtrip_every_layer_kind(tmp_path, seed, dtype):
    rng = np.random.default_rng(seed)
    spec = rand_spec(rng, n_rec=3, direction="bidirectional" if seed == 3 else "forward")
    model = srnn.Model(spec, dtype=dtype)
    p = tmp_path / "m.srnn"
    model.save(str(p))
    back = srnn.load(p, dtype=dtype)
    X = rng.standard_normal((2, 6, spec.input_size))
    assert_close(back.run(X), model.run(X), dtype, rtol=0, atol=0)
    assert str(back).splitlines()[1:] == str(model).splitlines()[1:]


def _rewrite_meta(src, dst, **changes):
    raw = open(src, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    hdr = json.loads(raw[8 : 8 + n])
    hdr["__metadata__"].update(changes)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    open(dst, "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n :])


def test_bad_files(tmp_path):
    model = srnn.Model(rand_spec(np.random.default_rng(0), n_rec=1))
    good = tmp_path / "good.srnn"
    model.save(str(good))
    with pytest.raises(FileNotFoundError):
        srnn.load(tmp_path / "missing.srnn")
    raw = good.read_bytes()
    cases = {
        "empty.srnn": b"",
        "trunc.srnn": raw[: len(raw) // 2],
        "hdr.srnn": struct.pack("<Q", 10**12) + raw[8:],
        "junk.srnn": b"\x00" * 64,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(srnn.StreamRNNError):
            srnn.load(tmp_path / name)
    _rewrite_meta(good, tmp_path / "newer.srnn", version="99")
    with pytest.raises(srnn.FormatError, match="newer"):
        srnn.load(tmp_path / "newer.srnn")
    _rewrite_meta(good, tmp_path / "notours.srnn", format="other")
    with pytest.raises(srnn.FormatError, match="not a streamrnn"):
        srnn.load(tmp_path / "notours.srnn")
    _rewrite_meta(good, tmp_path / "badspec.srnn", spec="{not json")
    with pytest.raises(srnn.FormatError, match="architecture"):
        srnn.load(tmp_path / "badspec.srnn")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(srnn.StreamRNNError, match="expected a file ending"):
        srnn.load(tmp_path / "x.txt")


def _lstm_arch(mutate):
    spec = srnn.ModelSpec((srnn.LSTMLayer(2, 3, np.ones((1, 12, 2)), np.ones((1, 12, 3))),)).to_json()
    mutate(spec)
    return json.dumps(spec)


@pytest.mark.parametrize("mutate, msg", [
    (lambda d: d["layers"][0].update(input_forget="no"), "input_forget: expected true or false, got 'no'"),
    (lambda d: d["layers"][0].update(clip="1"), "clip: expected a number or null, got '1'"),
    (lambda d: d["layers"][0]["activations"][0].update(alpha="x"), r"\.alpha: expected a number or null, got 'x'"),
    (lambda d: d.update(layers={"a": 1}), "layers: expected a list, got dict"),
    (lambda d: d.update(layers=[1]), r"layers\[0\]: expected an object, got 1"),
    (lambda d: d.update(metadata=[1]), "name / metadata"),
])
def test_hostile_architecture_is_refused(tmp_path, mutate, msg):
    """A .srnn architecture is read as JSON says it: a flag "no" was bool("no") = True (a
    silent misread), "1" a clip of 1.0; a string alpha or a non-list of layers raised a plain
    ValueError / AttributeError. Each a FormatError naming the field now."""
    good = tmp_path / "good.srnn"
    srnn.Model(srnn.ModelSpec((srnn.LSTMLayer(2, 3, np.ones((1, 12, 2)), np.ones((1, 12, 3))),))).save(good)
    _rewrite_meta(good, tmp_path / "bad.srnn", spec=_lstm_arch(mutate))
    with pytest.raises(srnn.FormatError, match=msg):
        srnn.load(tmp_path / "bad.srnn")


def test_srnn_readable_by_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    model = srnn.Model(rand_spec(np.random.default_rng(1), n_rec=2))
    p = tmp_path / "m.srnn"
    model.save(str(p))
    tensors = st.load_file(str(p))
    assert set(tensors) == set(model.spec.tensors())


def test_save_needs_the_srnn_suffix_and_its_folder(tmp_path):
    """``model.save("m.onnx")`` wrote this format under an ONNX name, which ``load`` then failed
    to parse; a missing folder was reported as the temporary file's name."""
    model = srnn.Model(rand_spec(np.random.default_rng(1), n_rec=1))
    for name in ("m.onnx", "m.pt", "m", "m.srnn.bak"):
        with pytest.raises(srnn.StreamRNNError, match=rf"path: expected a path ending in \.srnn .*got '.*{name}'"):
            model.save(str(tmp_path / name))
    with pytest.raises(FileNotFoundError) as e:
        model.save(str(tmp_path / "missing" / "m.srnn"))
    assert e.value.filename == str(tmp_path / "missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no temporary left
    model.save(tmp_path / "M.SRNN")  # a path object; the suffix in any case
    X = np.random.default_rng(2).standard_normal((3, model.input_size))
    np.testing.assert_array_equal(srnn.load(tmp_path / "M.SRNN").run(X), model.run(X))
