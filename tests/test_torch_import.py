"""PyTorch import: live modules, .pt and .safetensors checkpoints vs torch itself; hostile files."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import streamrnn as srnn  # noqa: E402
from streamrnn.converters import torch_import  # noqa: E402
from streamrnn.converters.torch_pickle import load_torch_file  # noqa: E402
from streamrnn.errors import FormatError, StreamRNNError  # noqa: E402

T, B, I = 13, 3, 5
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections:UserWarning")


# ---------------------------------------------------------------------------------------------
# Harness
# ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    """rnn -> head, taking (B, T, I) whatever the rnn's batch_first."""

    def __init__(self, rnn: nn.Module, head: nn.Module):
        super().__init__()
        self.rnn = rnn
        self.head = head

    def forward(self, x):
        if not self.rnn.batch_first:
            x = x.transpose(0, 1)
        y, _ = self.rnn(x)
        if not self.rnn.batch_first:
            y = y.transpose(0, 1)
        return self.head(y)


class TwoFC(nn.Module):
    """rnn -> fc1 -> relu (functional, invisible to module inspection) -> fc2."""

    def __init__(self, rnn: nn.Module, hidden: int, out: int):
        super().__init__()
        self.rnn = rnn
        d = 2 if rnn.bidirectional else 1
        width = d * (rnn.proj_size or rnn.hidden_size) if isinstance(rnn, nn.LSTM) else d * rnn.hidden_size
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        y, _ = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        y = y if self.rnn.batch_first else y.transpose(0, 1)
        return self.fc2(torch.relu(self.fc1(y)))


def make_rnn(kind: str, layers: int = 1, bidir: bool = False, proj: int = 0, bias: bool = True,
             batch_first: bool = False, hidden: int = 8) -> nn.Module:
    kw = dict(num_layers=layers, bidirectional=bidir, bias=bias, batch_first=batch_first)
    if kind == "lstm":
        return nn.LSTM(I, hidden, proj_size=proj, **kw)
    if kind == "gru":
        return nn.GRU(I, hidden, **kw)
    return nn.RNN(I, hidden, nonlinearity=kind.split("_")[1], **kw)


def out_width(rnn: nn.Module) -> int:
    d = 2 if rnn.bidirectional else 1
    h = getattr(rnn, "proj_size", 0) or rnn.hidden_size
    return d * h


def make_net(kind: str, seed: int, head: str = "linear", **kw) -> nn.Module:
    torch.manual_seed(seed)
    rnn = make_rnn(kind, **kw)
    w = out_width(rnn)
    if head == "linear":
        net: nn.Module = Net(rnn, nn.Linear(w, 4))
    elif head == "mlp":
        net = Net(rnn, nn.Sequential(nn.Linear(w, 6), nn.ReLU(), nn.Linear(6, 4)))
    else:
        net = TwoFC(rnn, 6, 4)
    amp = 0.35 if kind == "rnn_relu" else 0.6
    with torch.no_grad():
        for p in net.parameters():  # fresh weights, biases included
            p.uniform_(-amp, amp)
    return net.eval()


def torch_out(net: nn.Module, X: np.ndarray) -> np.ndarray:
    p = next(net.parameters())
    with torch.no_grad():
        return net(torch.from_numpy(X).to(p.dtype)).numpy()


def assert_close(Y: np.ndarray, ref: np.ndarray, dtype: str = "float32") -> None:
    scale = float(np.abs(ref).max()) or 1.0
    if dtype == "float32":
        np.testing.assert_allclose(Y, ref, rtol=1e-5, atol=1e-6 * scale)
    else:
        np.testing.assert_allclose(Y, ref, rtol=1e-10, atol=1e-12 * scale)


def inputs(seed: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(dtype)


def arch_for(kind: str, head: str):
    """The arch a state_dict of make_net(kind, head=head) needs (None where it needs none)."""
    d: dict = {}
    if kind.startswith("rnn"):
        d["rnn"] = kind
    if head == "mlp":
        d["head.0"] = "linear+relu"
    if head == "twofc":
        d["fc1"] = "linear+relu"
    if not d:
        return None
    if list(d) == ["rnn"]:
        return kind  # the one-string form
    return d


# (kind, num_layers, bidirectional, proj_size, bias)
CONFIGS = [
    ("lstm", 1, False, 0, True),
    ("lstm", 2, True, 0, True),
    ("lstm", 3, False, 0, True),
    ("lstm", 2, True, 3, True),
    ("lstm", 1, False, 5, False),
    ("lstm", 2, False, 0, False),
    ("gru", 1, False, 0, True),
    ("gru", 3, True, 0, True),
    ("gru", 2, False, 0, False),
    ("rnn_tanh", 1, False, 0, True),
    ("rnn_tanh", 2, True, 0, False),
    ("rnn_relu", 1, False, 0, True),
    ("rnn_relu", 3, True, 0, True),
]
IDS = [f"{k}-L{l}{'-bi' if b else ''}{f'-proj{p}' if p else ''}{'' if bias else '-nobias'}" for k, l, b, p, bias in CONFIGS]


# ---------------------------------------------------------------------------------------------
# Numerical agreement with torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["linear", "mlp", "twofc"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_torch_float32(cfg, head, tmp_path):
    kind, layers, bidir, proj, bias = cfg
    seed = 1000 + 17 * CONFIGS.index(cfg) + len(head)
    net = make_net(kind, seed, head, layers=layers, bidir=bidir, proj=proj, bias=bias,
                   batch_first=bool(seed % 2))
    X = inputs(seed)
    ref = torch_out(net, X)
    assert np.abs(ref).max() > 1e-2  # a non-trivial output

    # live module: no arch needed, except a functional relu (TwoFC) invisible to inspection
    live = srnn.from_torch(net, arch={"fc1": "linear+relu"} if head == "twofc" else None)
    assert live.input_size == I and live.output_size == 4
    assert_close(live.run(X), ref)
    assert_close(live.run(X[1]), ref[1])

    arch = arch_for(kind, head)
    sd = net.state_dict()
    assert_close(srnn.from_torch(sd, arch=arch).run(X), ref)
    torch.save(sd, tmp_path / "m.pt")
    assert_close(srnn.load(tmp_path / "m.pt", arch=arch).run(X), ref)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    assert_close(srnn.load(tmp_path / "m.safetensors", arch=arch).run(X), ref)

    if not bidir:  # frame-by-frame stepping == torch on the whole sequence
        s = live.stream()
        Y = np.stack([s.step(X[0, t]) for t in range(T)])
        assert_close(Y, ref[0])
        s.reset()
        assert_close(np.concatenate([s.push(X[0, :4]), s.push(X[0, 4:])]), ref[0])
    else:
        with pytest.raises(StreamRNNError):
            live.stream()


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matches_torch_float64(cfg, tmp_path):
    kind, layers, bidir, proj, bias = cfg
    seed = 5000 + 31 * CONFIGS.index(cfg)
    net = make_net(kind, seed, "mlp", layers=layers, bidir=bidir, proj=proj, bias=bias).double()
    X = inputs(seed, np.float64)
    ref = torch_out(net, X)
    m = srnn.from_torch(net, dtype="float64")
    assert m.dtype == np.float64
    Y = m.run(X)
    assert Y.dtype == np.float64
    assert_close(Y, ref, "float64")
    torch.save(net.state_dict(), tmp_path / "m64.pth")
    m2 = srnn.load(tmp_path / "m64.pth", arch=arch_for(kind, "mlp"), dtype="float64")
    assert_close(m2.run(X), ref, "float64")
    if not bidir:
        s = m.stream()
        assert_close(np.stack([s.step(X[2, t]) for t in range(T)]), ref[2], "float64")


def test_bare_modules_and_cells(tmp_path):
    """A bare nn.LSTM state_dict (no prefix) and an nn.GRUCell stepped over time."""
    net = make_net("lstm", 7, layers=2)
    X = inputs(7)
    with torch.no_grad():
        ref, _ = net.rnn(torch.from_numpy(X).transpose(0, 1))
    ref = ref.transpose(0, 1).numpy()
    torch.save(net.rnn.state_dict(), tmp_path / "bare.pt")
    assert_close(srnn.load(tmp_path / "bare.pt").run(X), ref)
    assert_close(srnn.from_torch(net.rnn).run(X), ref)

    torch.manual_seed(3)
    cell = nn.GRUCell(I, 6)
    h = torch.zeros(B, 6)
    outs = []
    with torch.no_grad():
        for t in range(T):
            h = cell(torch.from_numpy(X[:, t]), h)
            outs.append(h)
    ref = torch.stack(outs, 1).numpy()
    assert_close(srnn.from_torch(cell).run(X), ref)
    assert_close(srnn.from_torch(cell.state_dict()).run(X), ref)


def test_half_and_bfloat16_checkpoints(tmp_path):
    net = make_net("gru", 11, "linear", layers=2)
    X = inputs(11)
    for dt in (torch.float16, torch.bfloat16):
        sd = {k: v.to(dt) for k, v in net.state_dict().items()}
        torch.save(sd, tmp_path / "h.pt")
        ref_net = make_net("gru", 11, "linear", layers=2)
        ref_net.load_state_dict({k: v.float() for k, v in sd.items()})
        assert_close(srnn.load(tmp_path / "h.pt").run(X), torch_out(ref_net, X))


def test_wrapped_checkpoint_with_module_prefix(tmp_path):
    """{'state_dict': {'module.' + key: ...}, ...} as DataParallel training loops save it."""
    net = make_net("lstm", 21, "mlp", layers=2, bidir=True)
    X = inputs(21)
    ref = torch_out(net, X)
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    opt = torch.optim.Adam(net.parameters())
    ckpt = {"epoch": 3, "state_dict": sd, "optimizer": opt.state_dict(), "best": torch.tensor(0.5)}
    torch.save(ckpt, tmp_path / "ckpt.ckpt")
    m = srnn.load(tmp_path / "ckpt.ckpt", arch={"module.head.0": "linear+relu"})
    assert_close(m.run(X), ref)
    torch.save({"model": net.state_dict(), "step": 10}, tmp_path / "m.bin")
    assert_close(srnn.load(tmp_path / "m.bin", arch={"head.0": "linear+relu"}).run(X), ref)


def test_saved_srnn_round_trip(tmp_path):
    net = make_net("rnn_relu", 4, "mlp", layers=2)
    X = inputs(4)
    m = srnn.from_torch(net)
    m.save(str(tmp_path / "m.srnn"))
    assert_close(srnn.load(tmp_path / "m.srnn").run(X), torch_out(net, X))


# ---------------------------------------------------------------------------------------------
# The restricted unpickler
# ---------------------------------------------------------------------------------------------


def test_pickle_reader_matches_torch_load(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 7
    obj = {
        "t": base.t(),  # non-contiguous view
        "slice": base[1:5:2, 3:9:3],  # offset + strides into a shared storage
        "f64": torch.randn(3, 2, dtype=torch.float64),
        "f16": torch.randn(4, dtype=torch.float16),
        "bf16": torch.randn(4).to(torch.bfloat16),
        "i64": torch.arange(5),
        "b": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "param": nn.Parameter(torch.ones(2, 2)),
        "nested": {"x": [1, 2.0, "s", (3, None)], "set": {1, 2}, "bytes": b"ab\xff"},
    }
    torch.save(obj, tmp_path / "o.pt")
    got = load_torch_file(tmp_path / "o.pt")
    ref = torch.load(tmp_path / "o.pt", weights_only=True)
    for k in ("t", "slice", "f64", "f16", "bf16", "i64", "b", "scalar", "empty", "param"):
        exp = ref[k].detach()
        exp = exp.float().numpy() if exp.dtype == torch.bfloat16 else exp.numpy()
        assert got[k].dtype == exp.dtype and got[k].shape == exp.shape, k
        np.testing.assert_array_equal(got[k], exp)
    assert got["nested"] == {"x": [1, 2.0, "s", (3, None)], "set": {1, 2}, "bytes": b"ab\xff"}


def _write_marker(path):  # what a hostile pickle would like to run
    with open(path, "w") as f:
        f.write("pwned")


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("how", ["function", "os.system", "eval"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "marker.txt"
    payload = {
        "function": _Evil(_write_marker, (str(marker),)),
        "os.system": _Evil(os.system, (f"touch {marker}",)),
        "eval": _Evil(eval, (f"open({str(marker)!r}, 'w').write('x')",)),
    }[how]
    net = make_net("lstm", 1)
    sd = dict(net.state_dict())
    sd["rnn.evil"] = payload
    path = tmp_path / "evil.pt"
    torch.save(sd, path)
    assert not marker.exists()
    with pytest.raises(StreamRNNError) as e:
        srnn.load(path)
    assert isinstance(e.value, FormatError)
    assert "refused" in str(e.value)
    expected = {"function": "_write_marker", "os.system": "system", "eval": "eval"}[how]
    assert expected in str(e.value)
    assert not marker.exists()
    with pytest.raises(FormatError):
        load_torch_file(path)
    assert not marker.exists()


def _lightning_like_module(monkeypatch):
    """A stand-in ``lightning.fabric.utilities.data.AttributeDict`` (lightning is not installed
    here): a dict subclass, pickled by class name like the real one."""
    import types

    names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    mods = {n: types.ModuleType(n) for n in names}
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)

    class AttributeDict(dict):
        def __setstate__(self, state):  # what the pickle could ask for: never called by the reader
            _write_marker(state["marker"])

    AttributeDict.__module__, AttributeDict.__qualname__ = names[-1], "AttributeDict"
    mods[names[-1]].AttributeDict = AttributeDict
    return AttributeDict


def test_lightning_checkpoint_with_pickled_objects_outside_the_state_dict(tmp_path, monkeypatch, caplog):
    """A Lightning .ckpt pickles more than tensors: hyper-parameters as an AttributeDict, an
    argparse.Namespace, callback states. Those entries are kept as inert records (their classes
    never imported, nothing called) and ignored; the model comes from the 'state_dict' entry.
    Before, the whole file was refused. In the state_dict itself such an object is refused,
    and os / builtins globals anywhere still are."""
    import argparse
    import logging

    AttributeDict = _lightning_like_module(monkeypatch)
    marker = tmp_path / "marker.txt"
    hp = AttributeDict(hidden=6, layers=2, args=argparse.Namespace(lr=1e-3, path=str(tmp_path)))
    hp.marker = str(marker)  # were __setstate__ run, it would write the marker
    net = make_net("lstm", 2)
    sd = {"model." + k: v for k, v in net.state_dict().items()}
    ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
            "hyper_parameters": hp, "hparams_name": "kwargs",
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.25),
                                                                    "dirpath": str(tmp_path)}},
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                                  "param_groups": [{"lr": 1e-3, "params": [0]}]}],
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 3}}}}}
    path = tmp_path / "m.ckpt"
    torch.save(ckpt, path)
    with caplog.at_level(logging.INFO, logger="streamrnn"):
        model = srnn.load(path)
    assert "not rebuilt and not run" in caplog.text and "AttributeDict" in caplog.text
    X = np.random.default_rng(9).standard_normal((2, 5, net.rnn.input_size)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(X)).numpy()
    assert_close(model.run(X), want)
    assert not marker.exists()
    with pytest.raises(FormatError, match="refused to load global lightning"):
        load_torch_file(path)  # the reader alone, by default: plain containers only
    # inside the state_dict: refused, naming the object
    torch.save({"state_dict": dict(sd, **{"model.extra": AttributeDict(a=1)})}, path)
    with pytest.raises(FormatError, match=r"refused the pickled object\(s\) .*model.extra.*AttributeDict"):
        srnn.load(path)
    # a global of os / builtins is refused wherever it is
    torch.save({"state_dict": sd, "hyper_parameters": _Evil(os.system, (f"touch {marker}",))}, path)
    with pytest.raises(FormatError, match="refused to load global .*system"):
        srnn.load(path)
    assert not marker.exists()


def test_whole_module_pickle_is_refused(tmp_path):
    torch.save(make_net("gru", 2), tmp_path / "whole.pt")  # pickles the classes themselves
    with pytest.raises(FormatError, match="state_dict"):
        srnn.load(tmp_path / "whole.pt")


def _zip_with_pickle(path, data: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")


def test_build_on_other_objects_is_refused(tmp_path):
    # set() then BUILD {} : __setstate__ on anything but a state_dict's OrderedDict is refused
    _zip_with_pickle(tmp_path / "b.pt", b"\x80\x02c__builtin__\nset\n)R}b.")
    with pytest.raises(FormatError, match="BUILD"):
        load_torch_file(tmp_path / "b.pt")
    # a global smuggled in with STACK_GLOBAL (protocol 4) is refused like GLOBAL
    data = pickle.dumps(_Evil(os.getcwd, ()), protocol=4)
    _zip_with_pickle(tmp_path / "c.pt", data)
    with pytest.raises(FormatError, match="getcwd"):
        load_torch_file(tmp_path / "c.pt")


def test_bad_persistent_ids_and_storages(tmp_path):
    torch.save({"w": torch.ones(4, 4)}, tmp_path / "ok.pt")
    with zipfile.ZipFile(tmp_path / "ok.pt") as z:
        items = {n: z.read(n) for n in z.namelist()}
    rec = [n for n in items if "/data/" in n][0]
    items[rec] = items[rec][:20]  # storage record shorter than its tensor
    with zipfile.ZipFile(tmp_path / "short.pt", "w") as z:
        for n, d in items.items():
            z.writestr(n, d)
    with pytest.raises(FormatError, match="storage"):
        load_torch_file(tmp_path / "short.pt")


def test_legacy_format_is_refused(tmp_path):
    net = make_net("lstm", 1)
    torch.save(net.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError, match="zip"):
        srnn.load(tmp_path / "old.pt")


@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_truncated_files_are_refused(tmp_path, ext):
    net = make_net("lstm", 1)
    full = tmp_path / f"full{ext}"
    if ext == ".pt":
        torch.save(net.state_dict(), full)
    else:
        from safetensors.torch import save_file

        save_file(dict(net.state_dict()), str(full))
    data = full.read_bytes()
    for n in (len(data) // 2, len(data) - 30, 10, 0):
        cut = tmp_path / f"cut{n}{ext}"
        cut.write_bytes(data[:n])
        with pytest.raises(FormatError):
            srnn.load(cut)
    junk = tmp_path / f"junk{ext}"
    junk.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(FormatError):
        srnn.load(junk)


def test_missing_file():
    with pytest.raises(FileNotFoundError):
        srnn.load("/nonexistent/dir/model.pt")
    with pytest.raises(FileNotFoundError):
        torch_import.spec_from_checkpoint("/nonexistent/dir/model.safetensors")


@pytest.mark.parametrize("dt", ["float16", "bfloat16", "float64"])
@pytest.mark.parametrize("ext", [".pt", ".safetensors"])
def test_checkpoints_in_other_float_dtypes(tmp_path, dt, ext):
    """Half, bfloat16 (the usual dtype of Hugging Face safetensors) and double checkpoints load
    as the same weights widened exactly. A bfloat16 .safetensors was refused ("dtype BF16 is
    not supported") while the same weights in a .pt loaded."""
    from safetensors.torch import save_file

    torch.manual_seed(7)
    net = torch.nn.GRU(3, 5, num_layers=2, batch_first=True)
    sd = {k: v.to(getattr(torch, dt)).contiguous() for k, v in net.state_dict().items()}
    ref = torch.nn.GRU(3, 5, num_layers=2, batch_first=True)
    ref.load_state_dict({k: v.double() for k, v in sd.items()})  # exactly the stored values
    ref = ref.double()
    path = tmp_path / f"m{ext}"
    torch.save(sd, path) if ext == ".pt" else save_file(sd, str(path))
    X = np.random.default_rng(8).standard_normal((2, 4, 3))
    with torch.no_grad():
        want = ref(torch.from_numpy(X))[0].numpy()
    np.testing.assert_allclose(srnn.load(path, dtype="float64").run(X), want, rtol=1e-10, atol=1e-12)


def test_safetensors_of_an_unknown_dtype_names_it(tmp_path):
    import json
    import struct

    hdr = json.dumps({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0\0")
    with pytest.raises(FormatError, match="tensor 'w': expected a dtype among .*'BF16'.*, got F8_E4M3"):
        srnn.load(path)


def test_load_refuses_arguments_that_do_not_apply(tmp_path):
    """``arch`` names what a state_dict cannot tell; ``state_map`` pairs ONNX state inputs and
    outputs. Given for another kind of file they were silently ignored; now refused."""
    torch.manual_seed(5)
    net = torch.nn.LSTM(3, 4)
    pt = tmp_path / "m.pt"
    torch.save(net.state_dict(), pt)
    with pytest.raises(srnn.StreamRNNError, match="state_map: applies to ONNX files, got one for a .pt file"):
        srnn.load(pt, state_map={"h0": "hn"})
    model = srnn.load(pt, arch="lstm")
    model.save(tmp_path / "m.srnn")
    with pytest.raises(srnn.StreamRNNError, match="arch: applies to PyTorch checkpoints .* for a .srnn file"):
        srnn.load(tmp_path / "m.srnn", arch="lstm")
    with pytest.raises(srnn.StreamRNNError, match="state_map: .* for a .srnn file"):
        srnn.load(tmp_path / "m.srnn", state_map={"h0": "hn"})
    X = np.random.default_rng(5).standard_normal((4, 3))
    with torch.no_grad():
        want = net(torch.from_numpy(X).float())[0].numpy()
    np.testing.assert_allclose(srnn.load(tmp_path / "m.srnn").run(X), want, rtol=1e-5, atol=1e-6)


def test_reading_needs_no_torch(tmp_path):
    """Import and .pt loading work with torch made unimportable."""
    net = make_net("gru", 8, layers=2)
    torch.save(net.state_dict(), tmp_path / "g.pt")
    X = inputs(8)
    np.save(tmp_path / "ref.npy", torch_out(net, X))
    np.save(tmp_path / "x.npy", X)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, streamrnn as srnn\n"
        "import streamrnn.converters.torch_import\n"
        f"m = srnn.load({str(tmp_path / 'g.pt')!r})\n"
        f"Y = m.run(np.load({str(tmp_path / 'x.npy')!r}))\n"
        f"ref = np.load({str(tmp_path / 'ref.npy')!r})\n"
        "np.testing.assert_allclose(Y, ref, rtol=1e-5, atol=1e-6 * abs(ref).max())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Architecture inference errors
# ---------------------------------------------------------------------------------------------


def test_unused_tensor_is_listed(tmp_path):
    net = make_net("lstm", 1)
    sd = dict(net.state_dict())
    sd["extra.scale"] = torch.ones(3)
    sd["norm.running_mean"] = torch.zeros(4)
    torch.save(sd, tmp_path / "x.pt")
    with pytest.raises(StreamRNNError) as e:
        srnn.load(tmp_path / "x.pt")
    assert "extra.scale" in str(e.value) and "norm.running_mean" in str(e.value)
    sd = dict(net.state_dict())
    sd["rnn.weight_ih_l0_bogus"] = torch.ones(3)
    with pytest.raises(StreamRNNError, match="weight_ih_l0_bogus"):
        srnn.from_torch(sd)


def test_rnn_without_arch_is_refused(tmp_path):
    net = make_net("rnn_relu", 2)
    torch.save(net.state_dict(), tmp_path / "r.pt")
    with pytest.raises(StreamRNNError, match="arch") as e:
        srnn.load(tmp_path / "r.pt")
    assert "rnn_tanh" in str(e.value) and "rnn_relu" in str(e.value)
    with pytest.raises(StreamRNNError, match="arch"):
        srnn.from_torch(net.state_dict())
    # the live module knows its nonlinearity, so no arch is needed there
    X = inputs(2)
    assert_close(srnn.from_torch(net).run(X), torch_out(net, X))
    # and a wrong nonlinearity really is a different model
    wrong = srnn.load(tmp_path / "r.pt", arch="rnn_tanh").run(X)
    assert np.abs(wrong - torch_out(net, X)).max() > 1e-3


def test_arch_errors(tmp_path):
    net = make_net("lstm", 5, "mlp")
    sd = net.state_dict()
    with pytest.raises(StreamRNNError, match="head.0"):  # the Sequential gap is ambiguous
        srnn.from_torch(sd)
    with pytest.raises(StreamRNNError, match="LSTM"):
        srnn.from_torch(sd, arch="gru")
    with pytest.raises(StreamRNNError, match="nope"):
        srnn.from_torch(sd, arch={"nope": "linear", "head.0": "linear+relu"})
    with pytest.raises(StreamRNNError, match="gelu"):
        srnn.from_torch(sd, arch={"head.0": "linear+gelu"})
    with pytest.raises(StreamRNNError, match="rnn_tanh"):
        srnn.from_torch(sd, arch={"rnn": "rnn", "head.0": "linear+relu"})
    with pytest.raises(StreamRNNError, match="head.2"):
        srnn.from_torch(sd, arch={"head.2": "lstm", "head.0": "linear+relu"})
    with pytest.raises(StreamRNNError, match="arch"):
        srnn.from_torch(sd, arch=3)


def test_shape_mismatch_names_both_modules():
    net = make_net("lstm", 6)
    sd = dict(net.state_dict())
    sd["head.weight"] = torch.ones(4, 9)  # the LSTM gives 8 features
    with pytest.raises(StreamRNNError) as e:
        srnn.from_torch(sd)
    assert "'head'" in str(e.value) and "'rnn'" in str(e.value)
    sd = dict(make_net("gru", 6, layers=2).state_dict())
    sd["rnn.weight_ih_l1"] = torch.ones(24, 5)
    with pytest.raises(StreamRNNError, match="weight_ih_l1"):
        srnn.from_torch(sd)
    sd = dict(make_net("gru", 6, layers=2).state_dict())
    del sd["rnn.bias_hh_l1"]
    with pytest.raises(StreamRNNError, match="bias_hh_l1"):
        srnn.from_torch(sd)


def test_live_module_activation_outside_sequential():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(I, 8)
            self.fc1 = nn.Linear(8, 6)
            self.act = nn.Tanh()
            self.fc2 = nn.Linear(6, 3)

        def forward(self, x):
            y, _ = self.rnn(x.transpose(0, 1))
            return self.fc2(self.act(self.fc1(y.transpose(0, 1))))

    torch.manual_seed(9)
    net = M().eval()
    with pytest.raises(StreamRNNError, match="arch"):
        srnn.from_torch(net)
    X = inputs(9)
    m = srnn.from_torch(net, arch={"fc1": "linear+tanh"})
    assert_close(m.run(X), torch_out(net, X))


def test_sequential_activations_of_a_live_module():
    torch.manual_seed(12)
    rnn = nn.LSTM(I, 8, batch_first=True)
    head = nn.Sequential(nn.Linear(8, 8), nn.LeakyReLU(0.2), nn.Dropout(0.5), nn.Linear(8, 8),
                         nn.Sigmoid(), nn.Linear(8, 5), nn.LogSoftmax(dim=-1))
    net = Net(rnn, head).eval()
    X = inputs(12)
    assert_close(srnn.from_torch(net).run(X), torch_out(net, X))
    # the same through a checkpoint and an arch dict (LeakyReLU has no arch suffix: use Tanh there)
    head[1] = nn.Tanh()
    arch = {"head.0": "linear+tanh", "head.3": "linear+sigmoid", "head.5": "linear+log_softmax"}
    assert_close(srnn.from_torch(net.state_dict(), arch=arch).run(X), torch_out(net, X))


def test_non_tensor_entries_are_refused():
    sd = dict(make_net("lstm", 1).state_dict())
    sd["note"] = "hello"
    with pytest.raises(StreamRNNError, match="note"):
        srnn.from_torch(sd)
    with pytest.raises(StreamRNNError):
        srnn.from_torch({})
    with pytest.raises(StreamRNNError):
        srnn.from_torch(42)


def test_torch_not_imported_by_the_converter_module():
    code = ("import sys, streamrnn, streamrnn.converters.torch_import, streamrnn.converters.torch_pickle\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_modules_registered_out_of_forward_order(tmp_path):
    """fc registered before rnn: the key order does not chain, the one order that does is used."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)
            self.rnn = nn.LSTM(I, 8, batch_first=True)

        def forward(self, x):
            return self.fc(self.rnn(x)[0])

    torch.manual_seed(31)
    net = M().eval()
    X = inputs(31)
    ref = torch_out(net, X)
    assert_close(srnn.from_torch(net).run(X), ref)
    torch.save(net.state_dict(), tmp_path / "m.pt")
    assert_close(srnn.load(tmp_path / "m.pt").run(X), ref)


def test_order_closest_to_the_keys_and_ambiguous_orders():
    torch.manual_seed(32)
    sd = {"a.weight": torch.randn(8, 8), "rnn.weight_ih_l0": torch.randn(32, 5),
          "rnn.weight_hh_l0": torch.randn(32, 8), "b.weight": torch.randn(8, 8)}
    # a, rnn, b does not chain; of the orders that do, rnn, a, b keeps the most key pairs in order
    assert srnn.from_torch(sd).spec.metadata["modules"] == {"rnn": "lstm", "a": "linear", "b": "linear"}
    # a, b, c, d does not chain; a, c, b, d and b, a, c, d do, each one swap away: refused
    sd = {"a.weight": torch.randn(2, 3), "b.weight": torch.randn(3, 3),
          "c.weight": torch.randn(3, 2), "d.weight": torch.randn(2, 3)}
    with pytest.raises(StreamRNNError, match="several"):
        srnn.from_torch(sd)
    # an arch dict that names every module gives the order
    arch = {"b": "linear", "a": "linear", "c": "linear", "d": "linear"}
    assert list(srnn.from_torch(sd, arch=arch).spec.metadata["modules"]) == ["b", "a", "c", "d"]


def test_embedding_front_end():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.rnn = nn.GRU(6, 8, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, tokens):
            return self.fc(self.rnn(self.emb(tokens))[0])

    torch.manual_seed(33)
    net = M().eval()
    tokens = np.random.default_rng(33).integers(0, 11, size=(B, T))
    with torch.no_grad():
        ref = net(torch.from_numpy(tokens)).numpy()
    onehot = np.eye(11, dtype=np.float32)[tokens]  # the Dense form of the embedding
    assert_close(srnn.from_torch(net).run(onehot), ref)
    assert_close(srnn.from_torch(net.state_dict(), arch={"emb": "embedding"}).run(onehot), ref)


def test_directory_is_refused(tmp_path):
    d = tmp_path / "dir.pt"
    d.mkdir()
    with pytest.raises(StreamRNNError):
        srnn.load(d)


def test_huge_tensor_sizes_are_refused_not_wrapped():
    """A size whose element count overflows int64 wrapped to a small number (0 for (2**62, 4)):
    the reader then tried to allocate the real size (ValueError, MemoryError). Counted in
    Python ints now: refused as too large for its storage."""
    from streamrnn.converters.torch_pickle import _rebuild_tensor_v2

    for shape in ((2**62, 4), (2**32 + 1, 2**32), (2**64,)):
        with pytest.raises(FormatError, match="expands its storage of 16 elements too far"):
            _rebuild_tensor_v2(np.zeros(16, np.float32), 0, shape, (0,) * len(shape))


@pytest.mark.parametrize("header, msg", [
    ({"w": {"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}}, "do not fit shape"),
    ({"w": {"dtype": "F32", "shape": [2**31, 2**31, 4], "data_offsets": [0, 0]}}, "do not fit shape"),
    ({"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}, "expected an int, got 1.5"),
    ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, "expected an int, got True"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": ["0", "4"]}}, "expected an int, got '0'"),
    ({"__metadata__": [1], "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, "__metadata__"),
])
def test_hostile_safetensors_headers(tmp_path, header, msg):
    """Sizes that overflowed int64 (to 0: the header then "fit" an empty range and numpy raised
    ValueError), non-int sizes and offsets taken by int(), a non-object __metadata__
    (AttributeError): each a FormatError now."""
    import json
    import struct

    h = json.dumps(header).encode()
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"\0" * 4)
    with pytest.raises(FormatError, match=msg):
        srnn.load(path)
