"""ONNX LSTM, GRU and RNN nodes, run on the engine's kernels (a one-layer ModelSpec per node).

Conventions follow onnxruntime where the ONNX spec leaves room:

* ``activation_alpha`` / ``activation_beta`` are consumed in the order of the activations, one
  value per activation that reads it (Affine, LeakyRelu, ThresholdedRelu, ScaledTanh,
  HardSigmoid, Elu read alpha; Affine, ScaledTanh, HardSigmoid read beta). When the list runs out,
  onnxruntime's defaults apply: LeakyRelu 0.01, HardSigmoid (0.2, 0.5), Elu 1.0, otherwise 0.
* ``Y_h`` / ``Y_c`` of a sequence of length 0 are 0 (not the initial state).
* Also accepted (onnxruntime refuses them): ``layout=1``, and for a bidirectional node an
  ``activations`` list of one direction's length, used for both directions.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ...errors import StreamRNNError, UnsupportedError
from ...spec import (
    ACTIVATION_IDS,
    DIRECTIONS,
    USES_ALPHA,
    USES_BETA,
    Activation,
    GRULayer,
    LSTMLayer,
    ModelSpec,
    RNNLayer,
)
from .registry import NodeView, Op, converter

log = logging.getLogger("streamrnn")

#: per op: (layer class, gates, default activations)
KINDS: dict[str, tuple[type, int, tuple[str, ...]]] = {
    "LSTM": (LSTMLayer, 4, ("Sigmoid", "Tanh", "Tanh")),
    "GRU": (GRULayer, 3, ("Sigmoid", "Tanh")),
    "RNN": (RNNLayer, 1, ("Tanh",)),
}
_ORT_ALPHA = {"LeakyRelu": 0.01, "HardSigmoid": 0.2, "Elu": 1.0}
_ORT_BETA = {"HardSigmoid": 0.5}
_COMMON_ATTRS = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size")


def resolve_activations(
    names: Sequence[str] | None,
    alphas: Sequence[float] | None,
    betas: Sequence[float] | None,
    defaults: tuple[str, ...],
    ndir: int,
    label: str,
) -> tuple[Activation, ...]:
    """The activations of every direction with alpha / beta consumed as onnxruntime does."""
    per_dir = len(defaults)
    if names is None:
        return tuple(Activation(n) for n in defaults) * ndir
    names = list(names)
    if len(names) not in (per_dir * ndir, per_dir):
        raise UnsupportedError(
            f"{label}: activations: expected {per_dir * ndir} names ({per_dir} per direction), got {names}"
        )
    ia, ib = iter(alphas or ()), iter(betas or ())
    acts = []
    for i, n in enumerate(names):
        try:
            canon = Activation(n).name
        except UnsupportedError:
            raise UnsupportedError(
                f"{label}: activations[{i}]: expected one of {sorted(ACTIVATION_IDS)}, got {n!r}"
            ) from None
        a = next(ia, _ORT_ALPHA.get(canon, 0.0)) if canon in USES_ALPHA else None
        b = next(ib, _ORT_BETA.get(canon, 0.0)) if canon in USES_BETA else None
        acts.append(Activation(canon, a, b))
    if len(acts) == per_dir and ndir == 2:
        acts = acts * 2
    return tuple(acts)


class RecurrentOp(Op):
    """An LSTM / GRU / RNN node: inputs X, W, R, B, sequence_lens, initial_h, initial_c, P."""

    foldable = False

    def __init__(self, node: NodeView):
        extra = {"LSTM": ("input_forget",), "GRU": ("linear_before_reset",), "RNN": ()}[node.op_type]
        node.check_attrs(_COMMON_ATTRS + extra + (("layout",) if node.opset >= 14 else ()))
        self.node = node
        self.label = node.label
        self.kind = node.op_type
        self.layer_cls, self.gates, defaults = KINDS[node.op_type]
        self.direction = str(node.attr("direction", "forward"))
        if self.direction not in DIRECTIONS:
            raise node.unsupported(f"direction: expected one of {DIRECTIONS}, got {self.direction!r}")
        self.ndir = 2 if self.direction == "bidirectional" else 1
        self.layout = int(node.attr("layout", 0))
        if self.layout not in (0, 1):
            raise node.unsupported(f"layout: expected 0 or 1, got {self.layout}")
        hs = node.attr("hidden_size")
        self.hidden_size = None if hs is None else int(hs)
        if self.hidden_size is not None and self.hidden_size <= 0:
            raise StreamRNNError(f"{node.label}: hidden_size: expected a positive int, got {self.hidden_size}")
        self.acts = resolve_activations(
            node.attr("activations"), node.attr("activation_alpha"), node.attr("activation_beta"),
            defaults, self.ndir, node.label,
        )
        clip = node.attr("clip")
        self.clip = None if clip is None else float(clip)
        self.extra: dict[str, Any] = {}
        if self.kind == "LSTM":
            self.extra["input_forget"] = bool(node.attr("input_forget", 0))
        if self.kind == "GRU":
            self.extra["linear_before_reset"] = bool(node.attr("linear_before_reset", 0))
        if self.kind != "LSTM" and (node.has_input(6) or node.has_input(7)):
            raise node.unsupported(f"{self.kind} takes 6 inputs, got {len(node.inputs)}")
        self._models: dict[tuple, Any] = {}
        self._last: tuple | None = None  # (weights, layer) of the last fed weights
        self.static = None
        weights = [node.const(i) for i in (1, 2, 3, 7)]
        if weights[0] is not None and weights[1] is not None and all(
            node.const(i) is not None or not node.has_input(i) for i in (3, 7)
        ):
            self.static = self.build_layer(*weights)
            log.debug("%s: %s", self.label, self.static.describe())

    # -- layer spec -------------------------------------------------------------------------
    def build_layer(self, W, R, B=None, P=None):
        """The one-layer spec of this node from its weight arrays (ONNX layout, as the spec)."""
        W, R = np.asarray(W), np.asarray(R)
        if W.ndim != 3 or R.ndim != 3:
            raise StreamRNNError(f"{self.label}: W, R: expected rank-3 arrays, got shapes {W.shape}, {R.shape}")
        H = self.hidden_size or int(R.shape[-1])
        G, D = self.gates, self.ndir
        if W.shape[:2] != (D, G * H):
            raise StreamRNNError(
                f"{self.label}: W: expected shape ({D}, {G * H}, input_size) for hidden_size={H}, "
                f"direction={self.direction}, got {W.shape}"
            )
        kw: dict[str, Any] = dict(self.extra)
        if self.kind == "LSTM" and P is not None:
            kw["P"] = np.asarray(P)
        try:
            return self.layer_cls(
                input_size=int(W.shape[2]), hidden_size=H, W=W, R=R,
                B=None if B is None else np.asarray(B), direction=self.direction,
                activations=self.acts, clip=self.clip, **kw,
            )
        except StreamRNNError as e:
            raise type(e)(f"{self.label}: {e}") from None

    def layer_for(self, W, R, B, P):
        if self.static is not None:
            return self.static
        if W is None or R is None:
            raise StreamRNNError(f"{self.label}: W, R: expected weight arrays, got none")
        key = (W, R, B, P)
        if self._last is not None and all(_same(a, b) for a, b in zip(self._last[0], key)):
            return self._last[1]
        layer = self.build_layer(W, R, B, P)
        self._last = (tuple(None if a is None else np.array(a) for a in key), layer)
        return layer

    def model_for(self, layer, dtype, device: str = "cpu"):
        from ...model import Model

        k = (id(layer), np.dtype(dtype).str, device)
        m = self._models.get(k)
        if m is None or m.spec.layers[0] is not layer:
            if len(self._models) > 8:
                self._models.clear()
            m = self._models[k] = Model(ModelSpec((layer,), name=self.node.name), dtype=dtype, device=device)
        return m

    # -- running ----------------------------------------------------------------------------
    def __call__(self, inputs):
        return self.run(inputs)[0]

    def run(self, inputs, init: np.ndarray | None = None, lengths: np.ndarray | None = None,
            device: str = "cpu"):
        """Run the node.

        Parameters
        ----------
        inputs : the node's inputs (None for omitted ones).
        init : (B, S) flat initial state in the node model's layout; replaces initial_h/c.
        lengths : (B,) ints; replaces sequence_lens.

        Returns
        -------
        (outputs, final) : the ONNX outputs [Y, Y_h, Y_c] and the (B, S) final engine state
        (for a length-0 sequence: its initial state; Y_h / Y_c hold 0 there, as onnxruntime).
        """
        ins = list(inputs) + [None] * (8 - len(inputs))
        X, W, R, B, seq, h0, c0, P = ins
        X = np.asarray(X)
        if X.ndim != 3:
            raise StreamRNNError(f"{self.label}: X: expected rank 3, got shape {X.shape}")
        out_dtype = X.dtype
        if X.dtype.kind != "f":
            raise UnsupportedError(f"{self.label}: X: expected a float tensor, got {X.dtype}")
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float32)
        Xb = X if self.layout == 1 else X.transpose(1, 0, 2)  # (B, T, I)
        Bsz, T = Xb.shape[0], Xb.shape[1]
        layer = self.layer_for(W, R, B, P)
        model = self.model_for(layer, dtype, device)
        if init is None:
            init = self.initial_state(model, Bsz, h0, c0, dtype)
        else:  # C order: Model.run hands a non-C-contiguous state to the kernels as is
            init = np.ascontiguousarray(np.broadcast_to(init, (Bsz, init.shape[-1])), dtype=dtype)
        L = np.asarray(seq if lengths is None else lengths) if (seq is not None or lengths is not None) else None
        if L is not None:
            L = L.reshape(-1)
        try:
            Y, st = model.run(Xb.astype(dtype, copy=False), state=init, lengths=L, return_state=True)
        except StreamRNNError as e:
            raise type(e)(f"{self.label}: {e}") from None
        final = st.data.reshape(Bsz, model.state_size)
        D, Hr = self.ndir, layer.rec_size
        Y4 = Y.reshape(Bsz, T, D, Hr)
        outs = [Y4 if self.layout == 1 else Y4.transpose(1, 2, 0, 3)]
        zero = None if L is None else (L == 0)
        for kind in ("h", "c")[: 2 if self.kind == "LSTM" else 1]:
            s = self.state_part(model, final, kind)  # (D, B, n)
            if zero is not None and zero.any():
                s[:, zero] = 0
            outs.append(s.transpose(1, 0, 2) if self.layout == 1 else s)
        return [np.ascontiguousarray(o, dtype=out_dtype) for o in outs], final

    def initial_state(self, model, Bsz: int, h0, c0, dtype) -> np.ndarray:
        """(B, S) flat state from the ONNX initial_h / initial_c inputs (zeros where absent)."""
        st = np.zeros((Bsz, model.state_size), dtype=dtype)
        for kind, v in (("h", h0), ("c", c0)):
            if v is None:
                continue
            v = np.asarray(v)
            if self.layout == 1 and v.ndim == 3:
                v = v.transpose(1, 0, 2)
            for _, d, k, off, n in model.spec.state_slots():
                if k != kind:
                    continue
                if v.shape != (self.ndir, Bsz, n):
                    want = (Bsz, self.ndir, n) if self.layout == 1 else (self.ndir, Bsz, n)
                    got = v.transpose(1, 0, 2).shape if self.layout == 1 and v.ndim == 3 else v.shape
                    raise StreamRNNError(f"{self.label}: initial_{kind}: expected shape {want}, got {got}")
                st[:, off : off + n] = v[d]
        return st

    @staticmethod
    def state_part(model, final: np.ndarray, kind: str) -> np.ndarray:
        """(D, B, n) slice of a flat (B, S) state: h or c of every direction."""
        parts = [final[:, off : off + n] for _, _, k, off, n in model.spec.state_slots() if k == kind]
        return np.stack(parts, axis=0)


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)


for _op in KINDS:
    converter(_op, since=7)(RecurrentOp)
