"""Model description: frozen dataclasses with ONNX semantics and defaults filled in.

A :class:`ModelSpec` is a chain of layers applied frame by frame. Recurrent layers keep their
weights in the **ONNX layout** (one documented source layout, converters target it):

===========  =======================  =========================================================
layer        array                    shape and gate order
===========  =======================  =========================================================
LSTM         ``W``                    (D, 4H, I), gates i, o, f, c
             ``R``                    (D, 4H, Hr)  with Hr = proj_size or H
             ``B``                    (D, 8H): Wb[iofc] then Rb[iofc], or None (zeros)
             ``P``                    (D, 3H): peepholes i, o, f, or None
             ``proj``                 (D, proj_size, H): PyTorch's ``weight_hr``, or None
GRU          ``W``                    (D, 3H, I), gates z, r, h
             ``R``                    (D, 3H, H)
             ``B``                    (D, 6H): Wb[zrh] then Rb[zrh], or None
RNN          ``W`` / ``R`` / ``B``    (D, H, I) / (D, H, H) / (D, 2H)
Dense        ``weight`` / ``bias``    (O, I) / (O,) or None  (``y = weight @ x + bias``)
===========  =======================  =========================================================

D is 2 for ``direction="bidirectional"`` (then the layer's output is the concatenation
``[forward, backward]`` of both directions, PyTorch style), else 1. The engines repack these
arrays into their own fast layouts (see ``streamrnn/engine``); the spec never changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Iterator, Union

import numpy as np

from .errors import StreamRNNError, UnsupportedError

# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------

#: ONNX activation names -> integer ids used by the kernels.
ACTIVATION_IDS: dict[str, int] = {
    "Sigmoid": 0,
    "Tanh": 1,
    "Relu": 2,
    "Affine": 3,
    "LeakyRelu": 4,
    "ThresholdedRelu": 5,
    "ScaledTanh": 6,
    "HardSigmoid": 7,
    "Elu": 8,
    "Softsign": 9,
    "Softplus": 10,
}
_CANON = {k.lower(): k for k in ACTIVATION_IDS}

#: Default (alpha, beta) of each activation (the ONNX operator defaults of the same name).
ACTIVATION_DEFAULTS: dict[str, tuple[float, float]] = {
    "Sigmoid": (0.0, 0.0),
    "Tanh": (0.0, 0.0),
    "Relu": (0.0, 0.0),
    "Affine": (1.0, 0.0),
    "LeakyRelu": (0.01, 0.0),
    "ThresholdedRelu": (1.0, 0.0),
    "ScaledTanh": (1.0, 1.0),
    "HardSigmoid": (0.2, 0.5),
    "Elu": (1.0, 0.0),
    "Softsign": (0.0, 0.0),
    "Softplus": (0.0, 0.0),
}
#: Which activations read alpha / beta (used when consuming ONNX activation_alpha/beta lists).
USES_ALPHA = frozenset({"Affine", "LeakyRelu", "ThresholdedRelu", "ScaledTanh", "HardSigmoid", "Elu"})
USES_BETA = frozenset({"Affine", "ScaledTanh", "HardSigmoid"})


def _json_number(v: Any, what: str) -> None:
    """A number of a .srnn file's architecture, or null (not a string, not a bool)."""
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise StreamRNNError(f"{what}: expected a number or null, got {v!r:.60}")


@dataclass(frozen=True)
class Activation:
    """An elementwise activation with ONNX semantics, e.g. ``Activation("LeakyRelu", 0.1)``."""

    name: str
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        canon = _CANON.get(str(self.name).lower())
        if canon is None:
            raise UnsupportedError(
                f"activation: expected one of {sorted(ACTIVATION_IDS)}, got {self.name!r}"
            )
        da, db = ACTIVATION_DEFAULTS[canon]
        object.__setattr__(self, "name", canon)
        object.__setattr__(self, "alpha", float(da if self.alpha is None else self.alpha))
        object.__setattr__(self, "beta", float(db if self.beta is None else self.beta))

    @property
    def id(self) -> int:
        return ACTIVATION_IDS[self.name]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "beta": self.beta}

    @classmethod
    def from_json(cls, d: Any) -> "Activation":
        if isinstance(d, str):
            return cls(d)
        if not isinstance(d, dict):
            raise StreamRNNError(f"activation: expected a name or an object, got {d!r:.60}")
        for k in ("alpha", "beta"):
            _json_number(d.get(k), f"activation {d.get('name')!r}.{k}")
        return cls(d["name"], d.get("alpha"), d.get("beta"))

    def __repr__(self) -> str:
        da, db = ACTIVATION_DEFAULTS[self.name]
        extra = ""
        if (self.alpha, self.beta) != (da, db):
            extra = f"(alpha={self.alpha:g}, beta={self.beta:g})"
        return f"{self.name}{extra}"


SIGMOID = Activation("Sigmoid")
TANH = Activation("Tanh")
RELU = Activation("Relu")

DIRECTIONS = ("forward", "reverse", "bidirectional")

# ---------------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------------


def _arr(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise StreamRNNError(f"{name}: expected a float array, got dtype {a.dtype}")
    if a.shape != shape:
        raise StreamRNNError(f"{name}: expected shape {shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise StreamRNNError(f"{name}: expected finite weights, got NaN or Inf")
    return a


def _opt(x: Any, name: str, shape: tuple[int, ...]) -> np.ndarray | None:
    return None if x is None else _arr(x, name, shape)


def _acts(acts: Any, per_dir: int, ndir: int, default: tuple[Activation, ...], what: str):
    if acts is None:
        return tuple(default) * ndir
    acts = tuple(a if isinstance(a, Activation) else Activation.from_json(a) for a in acts)
    if len(acts) == per_dir and ndir == 2:
        acts = acts * 2
    if len(acts) != per_dir * ndir:
        raise StreamRNNError(
            f"{what}.activations: expected {per_dir * ndir} activations "
            f"({per_dir} per direction x {ndir}), got {len(acts)}"
        )
    return acts


@dataclass(frozen=True, eq=False)
class _Recurrent:
    """Fields common to LSTM, GRU and RNN layers."""

    input_size: int
    hidden_size: int
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None = None
    direction: str = "forward"
    activations: tuple[Activation, ...] | None = None
    clip: float | None = None

    GATES = 1  # gates per direction
    ACTS = 1  # activations per direction
    DEFAULT_ACTS = (TANH,)

    @property
    def num_directions(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def rec_size(self) -> int:
        """Size of the hidden vector fed back (proj_size for LSTMP, else hidden_size)."""
        return self.hidden_size

    @property
    def output_size(self) -> int:
        return self.rec_size * self.num_directions

    @property
    def streamable(self) -> bool:
        return self.direction == "forward"

    def _check_common(self) -> None:
        name = type(self).__name__
        if self.direction not in DIRECTIONS:
            raise UnsupportedError(
                f"{name}.direction: expected one of {DIRECTIONS}, got {self.direction!r}"
            )
        for k in ("input_size", "hidden_size"):
            v = getattr(self, k)
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise StreamRNNError(f"{name}.{k}: expected a positive int, got {v!r}")
            object.__setattr__(self, k, int(v))
        if self.clip is not None:
            c = float(self.clip)
            if not (c > 0 and math.isfinite(c)):
                raise StreamRNNError(f"{name}.clip: expected a positive finite float, got {self.clip!r}")
            object.__setattr__(self, "clip", c)
        D, G, H, I = self.num_directions, self.GATES, self.hidden_size, self.input_size
        object.__setattr__(self, "W", _arr(self.W, f"{name}.W", (D, G * H, I)))
        object.__setattr__(self, "R", _arr(self.R, f"{name}.R", (D, G * H, self.rec_size)))
        object.__setattr__(self, "B", _opt(self.B, f"{name}.B", (D, 2 * G * H)))
        object.__setattr__(
            self, "activations", _acts(self.activations, self.ACTS, D, self.DEFAULT_ACTS, name)
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """The weight arrays of this layer by field name (None entries left out)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                out[f.name] = v
        return out

    def hyper(self) -> dict[str, Any]:
        """JSON-able hyper-parameters (everything but the arrays)."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray) or (v is None and f.name in self.ARRAY_FIELDS):
                continue
            if f.name == "activations":
                v = [a.to_json() for a in v]
            out[f.name] = v
        return out

    ARRAY_FIELDS = ("W", "R", "B")

    def num_params(self) -> int:
        return int(sum(a.size for a in self.arrays().values()))

    def astype(self, dtype: Any) -> "_Recurrent":
        return replace(self, **{k: np.ascontiguousarray(v, dtype=dtype) for k, v in self.arrays().items()})

    def describe(self) -> str:
        acts = ", ".join(repr(a) for a in self.activations[: self.ACTS])
        extra = []
        if self.direction != "forward":
            extra.append(self.direction)
        if self.clip is not None:
            extra.append(f"clip={self.clip:g}")
        return (
            f"{type(self).__name__[:-5]}(input={self.input_size}, hidden={self.hidden_size}"
            f"{''.join(', ' + e for e in extra)}, acts=[{acts}])"
        )


@dataclass(frozen=True, eq=False)
class LSTMLayer(_Recurrent):
    """One LSTM layer (ONNX ``LSTM`` semantics, plus PyTorch's ``proj_size``)."""

    P: np.ndarray | None = None
    proj: np.ndarray | None = None
    input_forget: bool = False

    GATES = 4
    ACTS = 3
    DEFAULT_ACTS = (SIGMOID, TANH, TANH)
    ARRAY_FIELDS = ("W", "R", "B", "P", "proj")

    @property
    def proj_size(self) -> int:
        return 0 if self.proj is None else int(self.proj.shape[1])

    @property
    def rec_size(self) -> int:
        return self.proj_size or self.hidden_size

    def __post_init__(self) -> None:
        if self.proj is not None:
            p = np.asarray(self.proj)
            if p.ndim != 3:
                raise StreamRNNError(f"LSTMLayer.proj: expected rank 3 (D, proj_size, H), got shape {p.shape}")
            object.__setattr__(self, "proj", p)
        self._check_common()
        D, H = self.num_directions, self.hidden_size
        object.__setattr__(self, "P", _opt(self.P, "LSTMLayer.P", (D, 3 * H)))
        if self.proj is not None:
            object.__setattr__(self, "proj", _arr(self.proj, "LSTMLayer.proj", (D, self.proj_size, H)))
        object.__setattr__(self, "input_forget", bool(self.input_forget))

    def describe(self) -> str:
        s = super().describe()
        extra = []
        if self.P is not None:
            extra.append("peepholes")
        if self.input_forget:
            extra.append("input_forget")
        if self.proj is not None:
            extra.append(f"proj={self.proj_size}")
        return s[:-1] + "".join(", " + e for e in extra) + ")"


@dataclass(frozen=True, eq=False)
class GRULayer(_Recurrent):
    """One GRU layer (ONNX ``GRU``); ``linear_before_reset=True`` is PyTorch's GRU."""

    linear_before_reset: bool = False

    GATES = 3
    ACTS = 2
    DEFAULT_ACTS = (SIGMOID, TANH)

    def __post_init__(self) -> None:
        self._check_common()
        object.__setattr__(self, "linear_before_reset", bool(self.linear_before_reset))

    def describe(self) -> str:
        s = super().describe()
        return s[:-1] + f", linear_before_reset={int(self.linear_before_reset)})"


@dataclass(frozen=True, eq=False)
class RNNLayer(_Recurrent):
    """One simple RNN layer (ONNX ``RNN``): ``h = f(W x + R h + Wb + Rb)``."""

    GATES = 1
    ACTS = 1
    DEFAULT_ACTS = (TANH,)

    def __post_init__(self) -> None:
        self._check_common()


@dataclass(frozen=True, eq=False)
class DenseLayer:
    """A Linear layer ``y = weight @ x + bias`` with an optional activation after it."""

    weight: np.ndarray
    bias: np.ndarray | None = None
    activation: Activation | None = None

    ARRAY_FIELDS = ("weight", "bias")

    def __post_init__(self) -> None:
        w = np.asarray(self.weight)
        if w.ndim != 2:
            raise StreamRNNError(f"DenseLayer.weight: expected rank 2 (out, in), got shape {w.shape}")
        object.__setattr__(self, "weight", _arr(w, "DenseLayer.weight", w.shape))
        object.__setattr__(self, "bias", _opt(self.bias, "DenseLayer.bias", (w.shape[0],)))
        a = self.activation
        if a is not None and not isinstance(a, Activation):
            object.__setattr__(self, "activation", Activation.from_json(a))

    input_size = property(lambda self: int(self.weight.shape[1]))
    output_size = property(lambda self: int(self.weight.shape[0]))
    streamable = True
    num_directions = 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k in ("weight", "bias") if (v := getattr(self, k)) is not None}

    def hyper(self) -> dict[str, Any]:
        return {
            "type": "DenseLayer",
            "activation": None if self.activation is None else self.activation.to_json(),
        }

    def num_params(self) -> int:
        return int(sum(a.size for a in self.arrays().values()))

    def astype(self, dtype: Any) -> "DenseLayer":
        return replace(self, **{k: np.ascontiguousarray(v, dtype=dtype) for k, v in self.arrays().items()})

    def describe(self) -> str:
        act = "" if self.activation is None else f" -> {self.activation!r}"
        b = "" if self.bias is not None else ", no bias"
        return f"Dense({self.input_size} -> {self.output_size}{b}){act}"


@dataclass(frozen=True, eq=False)
class ActivationLayer:
    """An elementwise activation between layers (``size`` features in and out)."""

    size: int
    activation: Activation

    def __post_init__(self) -> None:
        if not isinstance(self.activation, Activation):
            object.__setattr__(self, "activation", Activation.from_json(self.activation))
        object.__setattr__(self, "size", int(self.size))

    input_size = property(lambda self: self.size)
    output_size = property(lambda self: self.size)
    streamable = True
    num_directions = 1
    ARRAY_FIELDS = ()

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def hyper(self) -> dict[str, Any]:
        return {"type": "ActivationLayer", "size": self.size, "activation": self.activation.to_json()}

    def num_params(self) -> int:
        return 0

    def astype(self, dtype: Any) -> "ActivationLayer":
        return self

    def describe(self) -> str:
        return f"{self.activation!r}({self.size})"


@dataclass(frozen=True, eq=False)
class SoftmaxLayer:
    """Softmax (or LogSoftmax with ``log=True``) over the features of each frame."""

    size: int
    log: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "log", bool(self.log))

    input_size = property(lambda self: self.size)
    output_size = property(lambda self: self.size)
    streamable = True
    num_directions = 1
    ARRAY_FIELDS = ()

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def hyper(self) -> dict[str, Any]:
        return {"type": "SoftmaxLayer", "size": self.size, "log": self.log}

    def num_params(self) -> int:
        return 0

    def astype(self, dtype: Any) -> "SoftmaxLayer":
        return self

    def describe(self) -> str:
        return f"{'LogSoftmax' if self.log else 'Softmax'}({self.size})"


Layer = Union[LSTMLayer, GRULayer, RNNLayer, DenseLayer, ActivationLayer, SoftmaxLayer]
RECURRENT = (LSTMLayer, GRULayer, RNNLayer)
LAYER_TYPES: dict[str, type] = {
    c.__name__: c for c in (LSTMLayer, GRULayer, RNNLayer, DenseLayer, ActivationLayer, SoftmaxLayer)
}


@dataclass(frozen=True, eq=False)
class ModelSpec:
    """A chain of layers applied to each frame; ``input_size`` features in."""

    layers: tuple[Layer, ...]
    name: str = "model"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise StreamRNNError("layers: expected at least one layer, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, tuple(LAYER_TYPES.values())):
                raise StreamRNNError(f"layers[{i}]: expected a layer dataclass, got {type(layer).__name__}")
            if i and layer.input_size != layers[i - 1].output_size:
                raise StreamRNNError(
                    f"layers[{i}] ({layer.describe()}): expected input size "
                    f"{layers[i - 1].output_size} (output of layers[{i - 1}]), got {layer.input_size}"
                )
        object.__setattr__(self, "layers", layers)

    @property
    def input_size(self) -> int:
        return int(self.layers[0].input_size)

    @property
    def output_size(self) -> int:
        return int(self.layers[-1].output_size)

    @property
    def streamable(self) -> bool:
        return all(layer.streamable for layer in self.layers)

    def recurrent(self) -> Iterator[tuple[int, _Recurrent]]:
        for i, layer in enumerate(self.layers):
            if isinstance(layer, RECURRENT):
                yield i, layer

    def num_params(self) -> int:
        return sum(layer.num_params() for layer in self.layers)

    def state_size(self) -> int:
        """Floats of recurrent state per stream (h, and c for LSTM, of every layer/direction)."""
        n = 0
        for _, layer in self.recurrent():
            per = layer.rec_size + (layer.hidden_size if isinstance(layer, LSTMLayer) else 0)
            n += per * layer.num_directions
        return n

    def state_slots(self) -> list[tuple[int, int, str, int, int]]:
        """Layout of one stream's flat state vector.

        A list of ``(layer_index, direction, "h" | "c", offset, size)``: for each recurrent layer
        in order, for each direction, ``h`` (rec_size floats) then ``c`` (hidden_size, LSTM only).
        """
        slots, off = [], 0
        for i, layer in self.recurrent():
            for d in range(layer.num_directions):
                slots.append((i, d, "h", off, layer.rec_size))
                off += layer.rec_size
                if isinstance(layer, LSTMLayer):
                    slots.append((i, d, "c", off, layer.hidden_size))
                    off += layer.hidden_size
        return slots

    def astype(self, dtype: Any) -> "ModelSpec":
        return replace(self, layers=tuple(layer.astype(dtype) for layer in self.layers))

    def summary(self) -> str:
        lines = [f"{self.name}: input {self.input_size} -> output {self.output_size}"]
        for i, layer in enumerate(self.layers):
            lines.append(f"  [{i}] {layer.describe():<70} params={layer.num_params()}")
        lines.append(
            f"  parameters={self.num_params()}  state floats/stream={self.state_size()}  "
            f"streamable={'yes' if self.streamable else 'no (run only: reverse/bidirectional layer)'}"
        )
        return "\n".join(lines)

    # -- serialisation helpers (used by the .srnn format) --------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metadata": self.metadata,
            "layers": [layer.hyper() for layer in self.layers],
        }

    def tensors(self) -> dict[str, np.ndarray]:
        out = {}
        for i, layer in enumerate(self.layers):
            for k, v in layer.arrays().items():
                out[f"layers.{i}.{k}"] = v
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], tensors: dict[str, np.ndarray]) -> "ModelSpec":
        layers = []
        used = set()
        if not isinstance(d.get("layers"), list):
            raise StreamRNNError(f"layers: expected a list, got {type(d.get('layers')).__name__}")
        for i, h in enumerate(d["layers"]):
            if not isinstance(h, dict):
                raise StreamRNNError(f"layers[{i}]: expected an object, got {h!r:.60}")
            h = dict(h)
            # a file's flags and numbers as JSON says them: bool("no") would be True
            for k in ("input_forget", "linear_before_reset"):
                if k in h and not isinstance(h[k], bool):
                    raise StreamRNNError(f"layers[{i}].{k}: expected true or false, got {h[k]!r:.60}")
            _json_number(h.get("clip"), f"layers[{i}].clip")
            typ = LAYER_TYPES.get(h.pop("type", None))
            if typ is None:
                raise StreamRNNError(f"layers[{i}].type: expected one of {sorted(LAYER_TYPES)}, got {h!r}")
            for k in getattr(typ, "ARRAY_FIELDS", ()):
                key = f"layers.{i}.{k}"
                if key in tensors:
                    h[k] = tensors[key]
                    used.add(key)
            if "activations" in h and h["activations"] is not None:
                h["activations"] = tuple(Activation.from_json(a) for a in h["activations"])
            try:
                layers.append(typ(**h))
            except TypeError as e:
                raise StreamRNNError(f"layers[{i}]: bad fields for {typ.__name__}: {e}") from None
        unused = sorted(set(tensors) - used)
        if unused:
            raise StreamRNNError(f"tensors: expected every tensor to belong to a layer, unused: {unused}")
        name, meta = d.get("name", "model"), d.get("metadata", {})
        if not isinstance(name, str) or not isinstance(meta, dict):
            raise StreamRNNError(f"name / metadata: expected a string and an object, got {name!r:.40} / {meta!r:.40}")
        return cls(tuple(layers), name=name, metadata=meta)
