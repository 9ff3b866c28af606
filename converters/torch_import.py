"""PyTorch import: checkpoints (``.pt``/``.pth``/``.bin``/``.ckpt``, ``.safetensors``) and live modules.

The architecture is read from a state_dict's key names, shapes and order:

* ``<prefix>.weight_ih_l{k}[_reverse]``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
  ``weight_hr_l{k}``: an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (any ``num_layers``,
  ``bidirectional``, ``bias=False``, ``proj_size``). The hidden size H comes from ``weight_hh``
  (or ``weight_hr``), so the gate multiple ``rows(weight_ih) / H`` tells LSTM (4), GRU (3) and
  RNN (1) apart. ``nn.LSTMCell`` / ``GRUCell`` / ``RNNCell`` (``weight_ih`` ... without ``_l0``)
  are read as one forward layer (the cell stepped over time).
* ``<prefix>.weight`` (2-D) and optional ``<prefix>.bias``: an ``nn.Linear``; an ``nn.Embedding``
  only when ``arch`` says ``"embedding"`` (it becomes a Dense layer on one-hot frames).

Modules run in the order their prefix first appears in the state_dict (registration order, which
is forward order for the usual ``rnn -> head`` models). Where the sizes do not chain in that order
(a head registered before the rnn; safetensors files, whose writers sort the keys), an ``arch``
dict naming every module gives the order, else the one order that chains, or the one closest to
the key order (fewest swapped pairs); a tie is refused. What a state_dict cannot tell is given by
``arch``: a string naming the kind of every recurrent module (``"lstm"``, ``"gru"``,
``"rnn_tanh"``, ``"rnn_relu"``), or a dict from module prefix to kind, where ``"linear"`` (and
``"embedding"``) are kinds too and suffixes ``"+relu"``, ``"+tanh"``, ``"+sigmoid"`` (and
``"+softmax"``, ``"+log_softmax"``) append that function after the module. An ``nn.RNN`` without
``arch`` is refused, as are parameterless gaps in ``nn.Sequential`` numbering (``head.0`` then
``head.2``: an activation or a dropout?) unless ``arch`` names the module before the gap. A live
``nn.Module`` needs no ``arch``: module types, RNN nonlinearity and the activations inside
``nn.Sequential`` are read from it.

Every tensor must be used; otherwise the error lists those that were not. Weights are converted
to the ONNX layout of :mod:`streamrnn.spec`: LSTM gates (i, f, g, o) -> (i, o, f, c), GRU gates
(r, z, n) -> (z, r, h) with ``linear_before_reset=True``, ``B = [bias_ih, bias_hh]`` per direction,
each torch layer one spec layer, bidirectional layers ``direction="bidirectional"``.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamrnn.errors import FormatError, StreamRNNError, UnsupportedError

from .torch_pickle import Opaque, load_torch_file
from streamrnn.spec import (
    Activation,
    ActivationLayer,
    DenseLayer,
    GRULayer,
    LSTMLayer,
    ModelSpec,
    RNNLayer,
    SoftmaxLayer,
)

log = logging.getLogger("streamrnn")

TORCH_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt")
#: recurrent kinds -> gates per direction
RECURRENT_KINDS = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
FEEDFORWARD_KINDS = ("linear", "embedding")
#: "+suffix" -> what runs after the module
POST_OPS: dict[str, tuple[str, Any]] = {
    "relu": ("act", Activation("Relu")),
    "tanh": ("act", Activation("Tanh")),
    "sigmoid": ("act", Activation("Sigmoid")),
    "softmax": ("softmax", False),
    "log_softmax": ("softmax", True),
}
#: checkpoint entries that hold the state_dict, in the order they are looked for
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
#: prefixes added by wrappers (DataParallel / DistributedDataParallel, torch.compile)
WRAPPER_PREFIXES = ("module.", "_orig_mod.")

_GATE_NAME = {4: "LSTM", 3: "GRU", 1: "RNN"}
#: ONNX gate block i <- torch gate block _ORDER[G][i]
_ORDER = {4: (0, 3, 1, 2), 3: (1, 0, 2), 1: (0,)}
_STACKED_RE = re.compile(r"^(weight_ih|weight_hh|bias_ih|bias_hh|weight_hr)_l(\d+)(_reverse)?$")
_CELL_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


# ---------------------------------------------------------------------------------------------
# Kinds (what a module is, and what runs after it)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    """A module's kind: ``base`` ("lstm", ..., "linear") and the ops appended after it."""

    base: str | None  # None: infer from the weights
    post: tuple[tuple[str, Any], ...] = ()
    origin: str = "arch"  # "arch" (a dict entry), "arch-all" (the one-string form), "module" (live)


def _parse_kind(value: Any, where: str) -> _Kind:
    """``"linear+relu"`` -> _Kind("linear", (relu,)); raises on an unknown kind or suffix."""
    if not isinstance(value, str) or not value.strip():
        raise StreamRNNError(f"{where}: expected a kind string such as 'lstm' or 'linear+relu', got {value!r}")
    base, *sufs = [s.strip().lower() for s in value.split("+")]
    kinds = (*RECURRENT_KINDS, *FEEDFORWARD_KINDS)
    if base == "rnn":
        raise StreamRNNError(f"{where}: expected 'rnn_tanh' or 'rnn_relu' (the nonlinearity of the nn.RNN), got {value!r}")
    if base not in kinds:
        raise StreamRNNError(f"{where}: expected a kind in {list(kinds)} (optionally + {list(POST_OPS)}), got {value!r}")
    post = []
    for s in sufs:
        if s not in POST_OPS:
            raise StreamRNNError(f"{where}: expected suffixes among {['+' + k for k in POST_OPS]}, got '+{s}' in {value!r}")
        post.append(POST_OPS[s])
    return _Kind(base, tuple(post))


def _kind_str(k: _Kind) -> str:
    names = {v: n for n, v in POST_OPS.items()}
    out = str(k.base)
    for op in k.post:
        out += "+" + names.get(op, repr(op[1]))
    return out


# ---------------------------------------------------------------------------------------------
# state_dict normalisation
# ---------------------------------------------------------------------------------------------


def _is_tensor(v: Any) -> bool:
    return isinstance(v, np.ndarray) or (hasattr(v, "detach") and hasattr(v, "cpu") and hasattr(v, "shape"))


def _to_numpy(v: Any) -> np.ndarray:
    """A torch tensor (duck-typed: torch is not imported) or array -> float numpy array."""
    if not isinstance(v, np.ndarray):
        t = v.detach().cpu()
        if "bfloat16" in str(getattr(t, "dtype", "")):
            t = t.float()
        for fix in ("resolve_conj", "resolve_neg"):
            if hasattr(t, fix):
                t = getattr(t, fix)()
        v = t.numpy()
    a = np.asarray(v)
    if a.dtype.kind == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    return a  # ints / bools: kept as they are, refused later as unused


def _flatten(d: Mapping, prefix: str, out: dict[str, Any], bad: list[str]) -> None:
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            _flatten(v, key + ".", out, bad)
        elif _is_tensor(v):
            out[key] = v
        else:
            bad.append(f"{key} ({type(v).__name__})")


def _all_leaves_tensors(d: Mapping, depth: int = 0) -> bool:
    """Every leaf a tensor (or a pickled object kept opaque, which _refuse_opaque then names)."""
    if depth > 8:
        return False
    return all(
        _all_leaves_tensors(v, depth + 1) if isinstance(v, Mapping) else _is_tensor(v) or isinstance(v, Opaque)
        for v in d.values()
    )


def _select_state_dict(obj: Any, source: str) -> tuple[Mapping, str]:
    """The state_dict inside a checkpoint object: itself, or its 'state_dict' / 'model' entry."""
    path = ""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise FormatError(
                f"{source}: expected a state_dict (a dict of tensors) or a dict with a "
                f"{' / '.join(repr(k) for k in WRAPPER_KEYS)} entry, got {getattr(obj, 'qualname', type(obj).__name__)}"
                + (f" at {path!r}" if path else "")
            )
        for k in WRAPPER_KEYS:
            if isinstance(obj.get(k), Mapping):
                ignored = [str(x) for x in obj if x != k]
                if ignored:
                    log.info("%s: using the %r entry; ignoring %s", source, k, ignored)
                    opaque: list[str] = []
                    _opaque_in({x: obj[x] for x in obj if x != k}, path, opaque)
                    if opaque:
                        log.info("%s: pickled objects outside the state_dict, not rebuilt and not run: %s",
                                 source, opaque[:10])
                obj, path = obj[k], f"{path}[{k!r}]"
                break
        else:
            if _all_leaves_tensors(obj):
                return obj, path
            kinds = {str(k): type(v).__name__ for k, v in list(obj.items())[:12]}
            raise FormatError(
                f"{source}: expected a state_dict (a dict of tensors) or a dict with a "
                f"{' / '.join(repr(k) for k in WRAPPER_KEYS)} entry, got a dict of {kinds}"
            )
    raise FormatError(f"{source}: expected a state_dict, got wrapper entries nested too deeply ({path})")


def _opaque_in(obj: Any, path: str, out: list[str], depth: int = 0) -> None:
    """Paths of the pickled objects the reader kept opaque (torch_pickle.Opaque) inside obj."""
    if isinstance(obj, Opaque):
        out.append(f"{path or '<top>'} ({obj.qualname})")
    elif isinstance(obj, Mapping) and depth < 16:
        for k, v in obj.items():
            _opaque_in(v, f"{path}[{k!r}]", out, depth + 1)
    elif isinstance(obj, (list, tuple)) and depth < 16:
        for i, v in enumerate(obj):
            _opaque_in(v, f"{path}[{i}]", out, depth + 1)


def _refuse_opaque(sd: Mapping, source: str) -> None:
    """A pickled object of another class inside the state_dict itself is refused (it would be
    a tensor's place); elsewhere in a checkpoint (Lightning's hyper-parameters ...) it is not read."""
    found: list[str] = []
    _opaque_in(sd, "", found)
    if found:
        raise FormatError(
            f"{source}: refused the pickled object(s) {found[:5]} in the state_dict: it holds tensors "
            "only (nothing of a checkpoint is imported or run)"
        )


def _strip_wrappers(keys: list[str]) -> str:
    """The wrapper prefix shared by every key ('module.' of DataParallel ...), else ''."""
    strip = ""
    while keys:
        for p in WRAPPER_PREFIXES:
            if all(k.startswith(strip + p) for k in keys):
                strip += p
                break
        else:
            break
    return strip


def _normalize(sd: Mapping, source: str) -> tuple[dict[str, np.ndarray], str]:
    """Flat ``{key: float array}`` with a common wrapper prefix removed, and that prefix."""
    flat: dict[str, Any] = {}
    bad: list[str] = []
    _flatten(sd, "", flat, bad)
    if bad:
        raise StreamRNNError(f"{source}: expected every state_dict entry to be a tensor, got {bad[:10]}")
    if not flat:
        raise StreamRNNError(f"{source}: expected a state_dict with tensors, got an empty one")
    strip = _strip_wrappers(list(flat))
    if strip:
        log.info("%s: stripping the common prefix %r from every key", source, strip)
    return {k[len(strip):]: _to_numpy(v) for k, v in flat.items()}, strip


# ---------------------------------------------------------------------------------------------
# Modules of a state_dict
# ---------------------------------------------------------------------------------------------


@dataclass
class _Module:
    prefix: str
    params: dict[str, np.ndarray] = field(default_factory=dict)  # param name -> array
    keys: dict[str, str] = field(default_factory=dict)  # param name -> full key

    @property
    def label(self) -> str:
        return repr(self.prefix) if self.prefix else "<root>"

    def key(self, name: str) -> str:
        return self.keys[name]


def _group(sd: dict[str, np.ndarray]) -> dict[str, _Module]:
    mods: dict[str, _Module] = {}
    for key, arr in sd.items():
        prefix, _, name = key.rpartition(".")
        m = mods.setdefault(prefix, _Module(prefix))
        m.params[name] = arr
        m.keys[name] = key
    return mods


def _classify(m: _Module) -> tuple[str, list[str]]:
    """("recurrent" | "cell" | "linear" | "unknown", keys that do not belong to that kind)."""
    names = list(m.params)
    if any(_STACKED_RE.match(n) for n in names):
        return "recurrent", [m.key(n) for n in names if not _STACKED_RE.match(n)]
    if "weight_ih" in names and "weight_hh" in names:
        return "cell", [m.key(n) for n in names if n not in _CELL_NAMES]
    w = m.params.get("weight")
    if w is not None and w.ndim == 2 and set(names) <= {"weight", "bias"}:
        b = m.params.get("bias")
        if b is None or b.ndim == 1:
            return "linear", []
    return "unknown", [m.key(n) for n in names]


def _float(a: np.ndarray, key: str) -> np.ndarray:
    if a.dtype.kind != "f":
        raise StreamRNNError(f"{key}: expected a float tensor, got dtype {a.dtype}")
    return a


# ---------------------------------------------------------------------------------------------
# Recurrent modules -> spec layers
# ---------------------------------------------------------------------------------------------


def _reorder(a: np.ndarray, G: int, H: int) -> np.ndarray:
    """Torch gate blocks (rows) -> ONNX gate order."""
    blocks = a.reshape(G, H, *a.shape[1:])
    return blocks[list(_ORDER[G])].reshape(a.shape)


def _recurrent_layers(m: _Module, cell: bool, kind: _Kind | None) -> tuple[list, str]:
    """The spec layers of one nn.LSTM / GRU / RNN (or cell); and its resolved kind."""
    entries: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    for name, arr in m.params.items():
        if cell:
            what, k, d = name, 0, 0
        else:
            mt = _STACKED_RE.match(name)
            what, k, d = mt.group(1), int(mt.group(2)), int(bool(mt.group(3)))
        entries.setdefault((k, d), {})[what] = _float(arr, m.key(name))
    def key(k: int, d: int, w: str) -> str:
        """The state_dict key of weight ``w`` of layer ``k``, direction ``d``."""
        sfx = "" if cell else f"_l{k}{'_reverse' if d else ''}"
        return f"{m.prefix + '.' if m.prefix else ''}{w}{sfx}"

    L = 1 + max(k for k, _ in entries)
    D = 2 if any(d for _, d in entries) else 1
    first = entries.get((0, 0), {})
    has_bias, has_proj = "bias_ih" in first, "weight_hr" in first
    need = ["weight_ih", "weight_hh"] + ["bias_ih", "bias_hh"] * has_bias + ["weight_hr"] * has_proj
    for k in range(L):
        for d in range(D):
            got = entries.get((k, d), {})
            missing = [key(k, d, w) for w in need if w not in got]
            extra = [key(k, d, w) for w in got if w not in need]
            if missing or extra:
                raise StreamRNNError(
                    f"module {m.label}: expected the weights of a {L}-layer "
                    f"{'bidirectional ' if D == 2 else ''}nn.LSTM/GRU/RNN "
                    f"(bias={has_bias}, proj_size={'>0' if has_proj else 0}), got "
                    + (f"missing {missing}" if missing else "") + (" and " if missing and extra else "")
                    + (f"unexpected {extra}" if extra else "")
                )

    # sizes, checked across layers and directions
    G = None
    layers_raw = []
    for k in range(L):
        per_dir = []
        for d in range(D):
            e = entries[(k, d)]
            wih, whh = e["weight_ih"], e["weight_hh"]
            for w in ("weight_ih", "weight_hh", "weight_hr"):
                if w in e and e[w].ndim != 2:
                    raise StreamRNNError(f"{key(k, d, w)}: expected a 2-D weight, got shape {e[w].shape}")
            H = e["weight_hr"].shape[1] if has_proj else whh.shape[1]
            Hr = e["weight_hr"].shape[0] if has_proj else H
            rows = wih.shape[0]
            if H <= 0 or rows % H or rows // H not in _GATE_NAME:
                raise StreamRNNError(
                    f"{key(k, d, 'weight_ih')}: expected 4H (LSTM), 3H (GRU) or H (RNN) rows with hidden "
                    f"size H={H} (from {key(k, d, 'weight_hr' if has_proj else 'weight_hh')}), got shape {wih.shape}"
                )
            g = rows // H
            if G is None:
                G = g
            elif g != G:
                raise StreamRNNError(
                    f"{key(k, d, 'weight_ih')}: expected {G}H rows like {key(0, 0, 'weight_ih')} "
                    f"(one module has one cell type), got {g}H (H={H})"
                )
            if whh.shape != (rows, Hr):
                raise StreamRNNError(f"{key(k, d, 'weight_hh')}: expected shape {(rows, Hr)}, got {whh.shape}")
            for b in ("bias_ih", "bias_hh"):
                if has_bias and e[b].shape != (rows,):
                    raise StreamRNNError(f"{key(k, d, b)}: expected shape {(rows,)}, got {e[b].shape}")
            if has_proj and (G != 4 or not (0 < Hr < H)):
                raise StreamRNNError(
                    f"{key(k, d, 'weight_hr')}: expected an LSTM projection (proj_size < hidden_size={H}), "
                    f"got shape {e['weight_hr'].shape} in a {_GATE_NAME[G]}"
                )
            per_dir.append((e, H, Hr))
        _, H, Hr = per_dir[0]
        I = per_dir[0][0]["weight_ih"].shape[1]
        for d, (e, h, hr) in enumerate(per_dir):
            if (h, hr, e["weight_ih"].shape[1]) != (H, Hr, I):
                raise StreamRNNError(
                    f"{key(k, d, 'weight_ih')}: expected the sizes of {key(k, 0, 'weight_ih')} "
                    f"(hidden {H}, input {I}), got hidden {h}, input {e['weight_ih'].shape[1]}"
                )
        if k and I != D * layers_raw[-1][2]:
            raise StreamRNNError(
                f"{key(k, 0, 'weight_ih')}: expected input size {D * layers_raw[-1][2]} (the "
                f"{'2 x ' if D == 2 else ''}output of layer {k - 1}), got shape {per_dir[0][0]['weight_ih'].shape}"
            )
        layers_raw.append((per_dir, H, Hr, I))

    base = _resolve_recurrent_kind(m, G, kind)
    layers = []
    for per_dir, H, Hr, I in layers_raw:
        W = np.stack([_reorder(e["weight_ih"], G, H) for e, _, _ in per_dir])
        R = np.stack([_reorder(e["weight_hh"], G, H) for e, _, _ in per_dir])
        B = None
        if has_bias:
            B = np.stack(
                [np.concatenate([_reorder(e["bias_ih"], G, H), _reorder(e["bias_hh"], G, H)]) for e, _, _ in per_dir]
            )
        common = dict(input_size=I, hidden_size=H, W=W, R=R, B=B,
                      direction="bidirectional" if D == 2 else "forward")
        if G == 4:
            proj = np.stack([e["weight_hr"] for e, _, _ in per_dir]) if has_proj else None
            layers.append(LSTMLayer(**common, proj=proj))
        elif G == 3:
            layers.append(GRULayer(**common, linear_before_reset=True))
        else:
            act = Activation("Relu" if base == "rnn_relu" else "Tanh")
            layers.append(RNNLayer(**common, activations=(act,)))
    return layers, base


def _resolve_recurrent_kind(m: _Module, G: int, kind: _Kind | None) -> str:
    found = _GATE_NAME[G]
    if kind is not None and kind.base is not None:
        if kind.base not in RECURRENT_KINDS or RECURRENT_KINDS[kind.base] != G:
            what = "the live module" if kind.origin == "module" else "arch"
            hint = " (use a dict arch={prefix: kind} to name each module)" if kind.origin == "arch-all" else ""
            raise StreamRNNError(
                f"arch: module {m.label} has the weights of an nn.{found} ({G}H gate rows), but "
                f"{what} says {kind.base!r}{hint}"
            )
        return kind.base
    if G == 1:
        name = m.prefix or "rnn"
        raise StreamRNNError(
            f"arch: module {m.label} is an nn.RNN, and a state_dict cannot tell tanh from relu; "
            f"pass arch='rnn_tanh' or arch='rnn_relu' (or a dict such as arch={{{name!r}: 'rnn_relu'}})"
        )
    return {4: "lstm", 3: "gru"}[G]


def _dense_layer(m: _Module, kind: _Kind | None) -> tuple[DenseLayer, str]:
    base = "linear" if kind is None or kind.base is None else kind.base
    if base not in FEEDFORWARD_KINDS:
        raise StreamRNNError(
            f"arch: module {m.label} has the weights of an nn.Linear ({m.key('weight')} "
            f"{m.params['weight'].shape}), but arch says {base!r}"
        )
    w = _float(m.params["weight"], m.key("weight"))
    b = m.params.get("bias")
    if base == "embedding":
        if b is not None:
            raise StreamRNNError(f"arch: module {m.label} is an 'embedding', which has no bias, got {m.key('bias')}")
        return DenseLayer(weight=np.ascontiguousarray(w.T)), base
    if b is not None:
        b = _float(b, m.key("bias"))
        if b.shape != (w.shape[0],):
            raise StreamRNNError(f"{m.key('bias')}: expected shape {(w.shape[0],)} (rows of {m.key('weight')}), got {b.shape}")
    return DenseLayer(weight=w, bias=b), base


def _apply_post(layers: list, post: tuple) -> list:
    for op, arg in post:
        size = layers[-1].output_size
        if op == "act":
            last = layers[-1]
            if isinstance(last, DenseLayer) and last.activation is None:
                layers[-1] = DenseLayer(weight=last.weight, bias=last.bias, activation=arg)
            else:
                layers.append(ActivationLayer(size, arg))
        else:
            layers.append(SoftmaxLayer(size, log=bool(arg)))
    return layers


def _describe(layers: list, base: str) -> str:
    first = layers[0]
    if base in RECURRENT_KINDS:
        extra = ", bidirectional" if first.num_directions == 2 else ""
        return f"{base} x{sum(isinstance(l, (LSTMLayer, GRULayer, RNNLayer)) for l in layers)} layer(s){extra}"
    return base


# ---------------------------------------------------------------------------------------------
# arch
# ---------------------------------------------------------------------------------------------


def _parse_arch(arch: Any, mods: dict[str, _Module], types: dict[str, str], strip: str):
    """-> (one kind for every recurrent module or None, {prefix: _Kind})."""
    if arch is None:
        return None, {}
    if isinstance(arch, str):
        k = _parse_kind(arch, "arch")
        if k.base not in RECURRENT_KINDS or k.post:
            raise StreamRNNError(
                f"arch: expected one of {list(RECURRENT_KINDS)} as a string (the kind of every "
                f"recurrent module), got {arch!r}; use a dict for linear layers and activations"
            )
        return _Kind(k.base, (), "arch-all"), {}
    if not isinstance(arch, Mapping):
        raise StreamRNNError(f"arch: expected None, a kind string or a dict {{prefix: kind}}, got {type(arch).__name__}")
    out: dict[str, _Kind] = {}
    for p, v in arch.items():
        if not isinstance(p, str):
            raise StreamRNNError(f"arch: expected str module prefixes, got {p!r}")
        q = p[len(strip):] if strip and p.startswith(strip) else p
        q = q[:-1] if q.endswith(".") else q
        if q not in mods:
            raise StreamRNNError(
                f"arch[{p!r}]: expected the prefix of a module with weights, one of {list(mods)}, got {p!r}"
            )
        if v is None:
            continue
        k = _parse_kind(v, f"arch[{p!r}]")
        t = types[q]
        if (t in ("recurrent", "cell")) != (k.base in RECURRENT_KINDS):
            raise StreamRNNError(
                f"arch[{p!r}]: module {mods[q].label} holds the weights of "
                f"{'an nn.LSTM/GRU/RNN' if t in ('recurrent', 'cell') else 'an nn.Linear / nn.Embedding'}, "
                f"got kind {v!r}"
            )
        out[q] = k
    return None, out


def _merge(user: _Kind | None, live: _Kind | None, where: str) -> _Kind | None:
    """Combine a user arch kind with a live module's kind (the bases must agree)."""
    if user is None:
        return live
    if live is None:
        return user
    if user.base and live.base and user.base != live.base:
        raise StreamRNNError(f"arch: module {where} is {live.base!r} in the live module, but arch says {user.base!r}")
    # a dict entry says what follows the module; the one-string form only names recurrent kinds
    return _Kind(user.base or live.base, user.post if user.origin == "arch" else live.post, "arch")


_SEQ_RE = re.compile(r"^(.*?)(\d+)$")


def _check_sequential_gaps(order: list[str], explicit: set[str]) -> None:
    """Refuse ``x.0`` followed by ``x.2`` (a parameterless module between) unless arch names ``x.0``."""
    for a, b in zip(order, order[1:]):
        ma, mb = _SEQ_RE.match(a), _SEQ_RE.match(b)
        if not (ma and mb) or ma.group(1) != mb.group(1) or not ma.group(1).endswith("."):
            continue
        i, j = int(ma.group(2)), int(mb.group(2))
        if j > i + 1 and a not in explicit:
            between = [f"{ma.group(1)}{n}" for n in range(i + 1, j)]
            raise StreamRNNError(
                f"arch: modules {a!r} and {b!r} have parameterless module(s) {between} between them "
                f"(an activation? a dropout?), which a state_dict cannot tell; pass arch with an entry "
                f"for {a!r}, e.g. arch={{{a!r}: 'linear+relu'}} (or 'linear' when it is a Dropout)"
            )


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _natural_key(key: str) -> list:
    """'head.10.weight' sorts after 'head.2.weight'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _chains(order: list[str], sizes: dict[str, tuple[int, int]], limit: int = 20000) -> list[list[str]]:
    """Every order of the modules in which each input size is the previous output size."""
    found: list[list[str]] = []
    visits = 0

    def walk(chain: list[str], rest: list[str]) -> None:
        nonlocal visits
        visits += 1
        if visits > limit:
            raise StreamRNNError(
                f"modules: expected an order of {order} in which each module's input size is the "
                "previous module's output size; too many candidates to search"
            )
        if not rest:
            found.append(chain)
            return
        for i, p in enumerate(rest):
            if not chain or sizes[p][0] == sizes[chain[-1]][1]:
                walk(chain + [p], rest[:i] + rest[i + 1:])

    walk([], list(order))
    return found


def _inversions(chain: list[str], order: list[str]) -> int:
    pos = [order.index(p) for p in chain]
    return sum(a > b for i, a in enumerate(pos) for b in pos[i + 1:])


def _module_order(order: list[str], built: dict[str, tuple], source: str, ordered: bool,
                  arch_order: list[str]) -> list[str]:
    """The run order: the key order when its sizes chain, else the order of an arch dict that
    names every module, else the chaining order closest to the key order."""
    sizes = {p: (b[0][0].input_size, b[0][-1].output_size) for p, b in built.items()}

    def label(p: str) -> str:
        return repr(p) if p else "<root>"

    def first_break(o: list[str]) -> int | None:
        return next((i for i in range(1, len(o)) if sizes[o[i]][0] != sizes[o[i - 1]][1]), None)

    bad = first_break(order)
    if bad is None:
        return order
    if sorted(arch_order) == sorted(order) and first_break(arch_order) is None:
        log.info("%s: running the modules in the order of arch: %s", source, arch_order)
        return arch_order
    chains = _chains(order, sizes) if len(order) <= 12 else []
    if chains:
        score = sorted((_inversions(c, order), c) for c in chains)
        if len(score) == 1 or score[0][0] < score[1][0]:
            best = score[0][1]
            (log.warning if ordered else log.info)(
                "%s: the key order %s does not chain by sizes; running the modules as %s", source, order, best
            )
            return best
        raise StreamRNNError(
            f"{source}: expected one order of the modules in which sizes chain, got several "
            f"({[c for _, c in score[:3]]}); pass an arch dict that names every module in forward order"
        )
    a, b = order[bad - 1], order[bad]
    what = "modules run in the order their keys first appear" if ordered else "no order of the modules chains"
    raise StreamRNNError(
        f"{source}: module {label(b)} ({built[b][2]}) expects input size {sizes[b][0]}, got "
        f"{sizes[a][1]}, the output size of the module before it, {label(a)} ({built[a][2]}); {what}"
    )


def spec_from_state_dict(
    state_dict: Mapping,
    arch: Any = None,
    *,
    name: str = "model",
    source: str = "state_dict",
    module_kinds: Mapping[str, _Kind] | None = None,
    ordered: bool = True,
) -> ModelSpec:
    """Build a ModelSpec from a state_dict (tensors or numpy arrays) and an optional ``arch``.

    Parameters
    ----------
    state_dict : mapping
        Module parameters by key, or a checkpoint dict with a ``state_dict`` / ``model`` entry.
    arch : None, str or dict
        See the module docstring.
    name : str
        Name of the spec.
    source : str
        How errors name the input (a path, "state_dict" ...).
    module_kinds : mapping, optional
        Kinds read from a live module (used by :func:`spec_from_torch`).
    ordered : bool
        Whether the key order is the module order (False for safetensors, whose writers sort
        the keys: then the keys are sorted naturally and the order is found by sizes).

    Returns
    -------
    ModelSpec
        Modules run in key order; when the sizes do not chain in that order (safetensors, or
        modules registered out of forward order), in the one order that chains, or the one
        closest to the key order.

    Raises
    ------
    StreamRNNError
        An ambiguous, inconsistent or partly unused state_dict.
    """
    sd, _ = _select_state_dict(state_dict, source)
    _refuse_opaque(sd, source)
    sd, strip = _normalize(sd, source)
    if not ordered:
        sd = {k: sd[k] for k in sorted(sd, key=_natural_key)}
    mods = _group(sd)
    types: dict[str, str] = {}
    unused: list[str] = []
    for p, m in mods.items():
        types[p], extra = _classify(m)
        unused += extra
    if unused:
        raise StreamRNNError(
            f"{source}: expected every tensor to belong to an nn.LSTM / GRU / RNN / Linear module, "
            f"got {len(unused)} unused: {unused[:20]}{' ...' if len(unused) > 20 else ''}; "
            "no partial model is loaded"
        )
    every, per = _parse_arch(arch, mods, types, strip)
    live = {}
    for p, k in (module_kinds or {}).items():
        q = p[len(strip):] if strip and p.startswith(strip) else p
        live[q] = k

    built: dict[str, tuple] = {}  # prefix -> (layers, kind, description)
    for p, m in mods.items():
        user = per.get(p)
        if user is None and every is not None and types[p] in ("recurrent", "cell"):
            user = every
        kind = _merge(user, live.get(p), m.label)
        if types[p] in ("recurrent", "cell"):
            mod_layers, base = _recurrent_layers(m, types[p] == "cell", kind)
        else:
            d, base = _dense_layer(m, kind)
            mod_layers = [d]
        full = _Kind(base, kind.post if kind is not None else ())
        desc = _describe(mod_layers, base) + _kind_str(full)[len(base):]
        built[p] = (_apply_post(mod_layers, full.post), full, desc)
    order = _module_order(list(mods), built, source, ordered, list(per) if isinstance(arch, Mapping) else [])
    if module_kinds is None:
        _check_sequential_gaps(order, set(per))

    layers: list = []
    summary: dict[str, str] = {}
    for p in order:
        layers += built[p][0]
        summary[p or "<root>"] = _kind_str(built[p][1])
    log.info("%s: modules %s", source, summary)
    return ModelSpec(tuple(layers), name=name, metadata={"source": "pytorch", "modules": summary})


def spec_from_checkpoint(path: str | os.PathLike, arch: Any = None) -> ModelSpec:
    """Read a PyTorch checkpoint (``.pt``/``.pth``/``.bin``/``.ckpt`` or ``.safetensors``).

    Parameters
    ----------
    path : str or PathLike
        A ``torch.save`` zip file (read without torch and without running pickled code) or a
        safetensors file, holding a state_dict or a dict with a ``state_dict`` / ``model`` entry.
    arch : None, str or dict
        What the state_dict cannot tell (see the module docstring).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    StreamRNNError
        An unreadable, hostile or ambiguous checkpoint (FormatError for bad files).
    """
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(p)
    ext = os.path.splitext(p)[1].lower()
    name = os.path.splitext(os.path.basename(p))[0] or "model"
    if ext == ".safetensors":
        from streamrnn.fileformat import read_safetensors

        try:
            tensors, _meta = read_safetensors(p, mmap=False)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise FormatError(f"path: {p!r} is unreadable ({e})") from None
        obj: Any = tensors
        ordered = False  # safetensors writers sort the keys: the order is found by sizes
    elif ext in TORCH_EXTENSIONS:
        obj = load_torch_file(p, opaque=True)  # other pickled objects kept as inert records
        ordered = True
    else:
        raise StreamRNNError(
            f"path: expected a file ending in .safetensors or {', '.join(TORCH_EXTENSIONS)}, got {p!r}"
        )
    return spec_from_state_dict(obj, arch, name=name, source=f"path {p!r}", ordered=ordered)


def spec_from_torch(module_or_state_dict: Any, arch: Any = None) -> ModelSpec:
    """Build a ModelSpec from a live ``torch.nn.Module`` or a state_dict.

    Parameters
    ----------
    module_or_state_dict : torch.nn.Module or mapping
        A module (its ``state_dict()`` plus module types: LSTM/GRU/RNN, RNN nonlinearity and
        activations inside ``nn.Sequential`` are read from it), or a dict of tensors / arrays.
    arch : None, str or dict
        What the module or state_dict cannot tell (see the module docstring).

    Raises
    ------
    StreamRNNError
        An unsupported, ambiguous or inconsistent model.
    """
    obj = module_or_state_dict
    if isinstance(obj, Mapping):
        return spec_from_state_dict(obj, arch, source="state_dict")
    if hasattr(obj, "state_dict") and hasattr(obj, "named_modules"):
        kinds = _live_module_kinds(obj, arch)
        return spec_from_state_dict(
            obj.state_dict(), arch, name=type(obj).__name__, source=f"module {type(obj).__name__}",
            module_kinds=kinds,
        )
    raise StreamRNNError(
        f"module_or_state_dict: expected a torch.nn.Module or a dict of tensors, got {type(obj).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Live modules
# ---------------------------------------------------------------------------------------------


def _live_module_kinds(module: Any, arch: Any) -> dict[str, _Kind]:
    """Kinds of a live module's sub-modules: types, RNN nonlinearity, nn.Sequential activations."""
    from torch import nn  # only here: a live module was passed

    def base_of(m: Any) -> str | None:
        if isinstance(m, (nn.LSTM, nn.LSTMCell)):
            return "lstm"
        if isinstance(m, (nn.GRU, nn.GRUCell)):
            return "gru"
        if isinstance(m, (nn.RNN, nn.RNNCell)):
            return "rnn_relu" if getattr(m, "nonlinearity", "tanh") == "relu" else "rnn_tanh"
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.Embedding):
            return "embedding"
        return None

    def post_of(m: Any) -> tuple[str, Any] | None:
        """The op of a parameterless activation module, ("skip", None) for no-ops, else None."""
        if isinstance(m, (nn.Dropout, nn.AlphaDropout, nn.Identity)) or type(m).__name__.startswith("Dropout"):
            return ("skip", None)
        simple = {nn.ReLU: "Relu", nn.Tanh: "Tanh", nn.Sigmoid: "Sigmoid", nn.Softsign: "Softsign"}
        for cls, n in simple.items():
            if isinstance(m, cls):
                return ("act", Activation(n))
        if isinstance(m, nn.LeakyReLU):
            return ("act", Activation("LeakyRelu", float(m.negative_slope)))
        if isinstance(m, nn.ELU):
            return ("act", Activation("Elu", float(m.alpha)))
        if isinstance(m, nn.Hardsigmoid):
            return ("act", Activation("HardSigmoid", 1.0 / 6.0, 0.5))
        if isinstance(m, nn.Softplus) and float(m.beta) == 1.0:
            return ("act", Activation("Softplus"))
        if isinstance(m, (nn.Softmax, nn.LogSoftmax)) and m.dim in (-1, 2):
            return ("softmax", isinstance(m, nn.LogSoftmax))
        return None

    named = dict(module.named_modules())
    kinds: dict[str, _Kind] = {}
    for p, m in named.items():
        b = base_of(m)
        if b is not None:
            kinds[p] = _Kind(b, (), "module")
    has_params = {p for p, m in named.items() if any(True for _ in m.parameters(recurse=False))}
    explicit = isinstance(arch, Mapping)

    def join(a: str, b: str) -> str:
        return f"{a}.{b}" if a else b

    in_seq: set[str] = set()
    for sp, seq in named.items():
        if not isinstance(seq, nn.Sequential):
            continue
        prev: str | None = None
        for cname, child in seq.named_children():
            cp = join(sp, cname)
            in_seq.add(cp)
            sub = [q for q in named if (q == cp or q.startswith(cp + ".")) and q in has_params]
            if sub:
                prev = sub[-1]
                continue
            if any(True for _ in child.children()):
                continue  # a parameterless container: its own Sequential walk handles it
            op = post_of(child)
            if op is not None and op[0] == "skip":
                continue
            if op is None or prev is None or prev not in kinds:
                if explicit:
                    continue
                why = (f"{type(child).__name__} is not supported" if op is None
                       else f"there is no module with weights before it in its nn.Sequential {sp or '<root>'!r}")
                raise (UnsupportedError if op is None else StreamRNNError)(
                    f"arch: module {cp!r} ({why}); pass arch={{prefix: kind}} to describe the model, "
                    "e.g. {'fc1': 'linear+relu', 'fc2': 'linear'}"
                )
            k = kinds[prev]
            kinds[prev] = _Kind(k.base, k.post + (op,), "module")
    if not explicit:
        for p, m in named.items():
            if p in in_seq or any(True for _ in m.children()) or p in has_params:
                continue
            op = post_of(m)
            if op is not None and op[0] != "skip":
                raise StreamRNNError(
                    f"arch: module {p!r} ({type(m).__name__}) is not inside an nn.Sequential, so where "
                    "forward() applies it is unknown; pass arch={prefix: kind}, e.g. "
                    "{'fc1': 'linear+relu', 'fc2': 'linear'}"
                )
    return kinds
