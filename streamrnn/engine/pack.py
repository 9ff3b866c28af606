"""Packing a ModelSpec into the kernels' layout: one flat weight buffer + an int64 meta table.

The internal weight layout (documented here, shared by the CPU and CUDA kernels)
--------------------------------------------------------------------------------
Each layer is one row of ``meta`` (``NMETA`` int64 columns, names ``K_*`` below). Weights of all
layers live in one contiguous buffer ``W`` of the model dtype; ``meta`` holds offsets into it.
Gate order stays ONNX's (LSTM i, o, f, c; GRU z, r, h). Per recurrent layer and direction:

* ``Wt`` (I, G*H)   = W[d].T: row k holds input k's weights for every gate unit, so the step is a
  sequence of contiguous ``axpy`` (vectorises; one GEMM for a whole chunk).
* ``Rt`` (Hr, G*H)  = R[d].T, likewise for the recurrent input.
* ``b``  (G*H,)     = Wb + Rb pre-added, except GRU with linear_before_reset, whose h gate keeps
  only Wbh here and Rbh apart in ``rbh`` (H,) because it is multiplied by r.
* ``peep`` (3H,)    LSTM peepholes i, o, f.
* ``Pt`` (H, Hr)    LSTM projection, transposed.
* ``par`` (7,)      clip (0 = none), then (alpha, beta) of the 3 activation slots.

Dense: ``Wt`` (I, O), ``b`` (O,), ``par`` as above (activation in slot 0, id -1 = none), and
the weight once more row-major (O, I) at the ``O_PROJ`` offset: a narrow head (O < 16) is
faster as O vectorised dot products than as axpy rows of O floats.

Column panels (float32, matrices up to ``PANEL_MAX_BYTES``): a second copy of ``Wt`` / ``Rt``
(and of a Dense ``Wt``) as panels of ``PW`` (Dense: ``PWH``) whole columns, panel-major:
``panel[p, k, j] = M[k, p*PW + j]``, offsets in the ``K_PAN`` columns of meta. The per-frame
mat-vecs read them (accumulators in registers, one contiguous stream); the GEMM paths (BLAS)
read the row-major copy. Columns past the last whole panel are read from the row-major copy.

Per stream, the state is a flat vector (``ModelSpec.state_slots``) and the kernels use a scratch
vector of ``scratch_size`` floats: the cell scratch, then two ping-pong feature buffers.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..spec import (
    ActivationLayer,
    DenseLayer,
    GRULayer,
    LSTMLayer,
    ModelSpec,
    RNNLayer,
    SoftmaxLayer,
)

# layer kinds
LSTM, GRU, RNN, DENSE, ACT, SOFTMAX = 0, 1, 2, 3, 4, 5
# meta columns
K_KIND, K_IN, K_H, K_OUT, K_REC, K_NDIR, K_REV, K_FLAGS = range(8)
K_ACT = 8  # 8..13: activation ids, 3 slots per direction
K_DIR = 14  # 14..22 direction 0, 23..31 direction 1 (offsets below, relative to K_DIR + 9*d)
O_H, O_C, O_WT, O_RT, O_B, O_RBH, O_PEEP, O_PROJ, O_PAR = range(9)
K_S, K_CELL, K_FEAT = 32, 33, 34  # state size, cell scratch, feature buffer (same in every row)
K_FAST = 35  # 1 for float32 models: SIMD rational tanh / sigmoid (see layers/cpu_common.py)
K_PAN = 36  # 36..39: panel copies (-1 = none): Wt, Rt of direction 0, then of direction 1;
#             a Dense layer's 16-column panels of Wt in column 36
NMETA = 40
#: column panels are made for float32 matrices of at most this many bytes. Read front to back
#: from L3 they are no faster than the row-major form (NOTES entry 16), but the larger ones are
#: read in alternating panel order (engine/cpu.py: _zig), and the part L2 still holds then
#: reads twice as fast from panels (entry 33). Above 8 MiB the copy is not worth its memory.
PANEL_MAX_BYTES = 8 << 20
PW, PWH = 128, 16  # panel widths (layers/cpu_common.py)
# flag bits
F_INPUT_FORGET, F_PEEP, F_LBR, F_CLIP, F_PROJ, F_BIAS, F_LOG = 1, 2, 4, 8, 16, 32, 64


@dataclass
class Packed:
    W: np.ndarray  # (nW,) model dtype
    meta: np.ndarray  # (L, NMETA) int64
    Wh: np.ndarray  # (nW,) uint16 bfloat16 bits of W, or a (1,) dummy when weights are float
    state_size: int
    scratch_size: int
    cell_scratch: int  # floats of the cell scratch (the two feature buffers follow it)
    feat_size: int  # widest layer output


def _cell_scratch(layer) -> int:
    if isinstance(layer, LSTMLayer):
        return 4 * layer.hidden_size
    if isinstance(layer, GRULayer):
        return 6 * layer.hidden_size
    if isinstance(layer, RNNLayer):
        return layer.hidden_size
    return 0


def to_bfloat16(a: np.ndarray) -> np.ndarray:
    """float values rounded to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return bits.astype(np.uint32).view(np.float32)


def _aligned(a: np.ndarray, boundary: int = 64) -> np.ndarray:
    """A copy of the 1-D array ``a`` whose data starts on a ``boundary``-byte address."""
    buf = np.empty(a.nbytes + boundary, np.uint8)
    start = -buf.ctypes.data % boundary
    out = buf[start : start + a.nbytes].view(a.dtype)
    out[:] = a
    return out


def column_panels(M: np.ndarray, width: int) -> np.ndarray:
    """The whole-column panels of M (rows, cols), panel-major: (cols // width, rows, width)."""
    rows, cols = M.shape
    n = cols // width
    return M[:, : n * width].reshape(rows, n, width).transpose(1, 0, 2)


def pack(spec: ModelSpec, dtype, weights: str = "float") -> Packed:
    """Lay the spec's weights out for the kernels (see the module docstring).

    ``weights="bfloat16"`` (float32 models only): the recurrent matrices (Wt, Rt) are rounded to
    bfloat16; ``W`` holds the rounded values (used by the GEMM paths) and ``Wh`` their bits (read
    by the per-frame mat-vecs, half the bytes). Every path then sees the same weights.
    """
    dtype = np.dtype(dtype)
    bf16 = weights == "bfloat16"
    chunks: list[np.ndarray] = []
    size = 0

    def put(a, round_bf16: bool = False, align: int = 1) -> int:
        nonlocal size
        if size % align:  # pad so that the chunk starts on an ``align``-element boundary
            chunks.append(np.zeros(align - size % align))
            size += align - size % align
        a = np.ascontiguousarray(a, dtype=np.float64).ravel()
        if round_bf16 and bf16:
            a = to_bfloat16(a).astype(np.float64)
        off = size
        chunks.append(a)
        size += a.size
        return off

    meta = np.zeros((len(spec.layers), NMETA), dtype=np.int64)
    meta[:, K_ACT : K_ACT + 6] = -1
    meta[:, K_PAN : K_PAN + 4] = -1
    panels = dtype == np.float32 and not bf16

    def put_panels(M, width: int) -> int:
        """The whole-column panels of M (rows, cols) as a second copy, or -1 (none / not worth it)."""
        M = np.asarray(M, np.float64)
        rows, cols = M.shape
        if not panels or cols < width or rows == 0 or M.size * 4 > PANEL_MAX_BYTES:
            return -1
        # on a 64-byte boundary: each row of a panel is whole cache lines
        return put(column_panels(M, width), align=16)
    slots = {(i, d, k): o for i, d, k, o, _ in spec.state_slots()}
    for li, layer in enumerate(spec.layers):
        m = meta[li]
        m[K_IN], m[K_OUT] = layer.input_size, layer.output_size
        if isinstance(layer, (LSTMLayer, GRULayer, RNNLayer)):
            m[K_KIND] = {LSTMLayer: LSTM, GRULayer: GRU, RNNLayer: RNN}[type(layer)]
            H, G, D = layer.hidden_size, layer.GATES, layer.num_directions
            m[K_H], m[K_REC], m[K_NDIR] = H, layer.rec_size, D
            m[K_REV] = int(layer.direction == "reverse")
            flags = 0
            if layer.clip is not None:
                flags |= F_CLIP
            if isinstance(layer, LSTMLayer):
                flags |= F_INPUT_FORGET * layer.input_forget
                flags |= F_PEEP * (layer.P is not None)
                flags |= F_PROJ * (layer.proj is not None)
            if isinstance(layer, GRULayer):
                flags |= F_LBR * layer.linear_before_reset
            m[K_FLAGS] = flags
            A = layer.ACTS
            for d in range(D):
                base = K_DIR + 9 * d
                acts = layer.activations[A * d : A * d + A]
                for s, a in enumerate(acts):
                    m[K_ACT + 3 * d + s] = a.id
                bias = np.zeros(2 * G * H) if layer.B is None else np.asarray(layer.B[d], np.float64)
                wb, rb = bias[: G * H], bias[G * H :]
                b = wb + rb
                rbh = np.zeros(H)
                if isinstance(layer, GRULayer) and layer.linear_before_reset:
                    b[2 * H :] = wb[2 * H :]
                    rbh = rb[2 * H :]
                m[base + O_H] = slots[(li, d, "h")]
                m[base + O_C] = slots.get((li, d, "c"), -1)
                m[base + O_WT] = put(np.asarray(layer.W[d], np.float64).T, True)  # (I, G*H)
                m[base + O_RT] = put(np.asarray(layer.R[d], np.float64).T, True)  # (Hr, G*H)
                m[K_PAN + 2 * d] = put_panels(np.asarray(layer.W[d]).T, PW)
                m[K_PAN + 2 * d + 1] = put_panels(np.asarray(layer.R[d]).T, PW)
                m[base + O_B] = put(b)  # (G*H,)
                m[base + O_RBH] = put(rbh)  # (H,)
                if isinstance(layer, LSTMLayer) and layer.P is not None:
                    m[base + O_PEEP] = put(layer.P[d])  # (3H,)
                if isinstance(layer, LSTMLayer) and layer.proj is not None:
                    m[base + O_PROJ] = put(np.asarray(layer.proj[d], np.float64).T)  # (H, Hr)
                par = [layer.clip or 0.0]
                for s in range(3):
                    a = acts[s] if s < len(acts) else None
                    par += [a.alpha, a.beta] if a is not None else [0.0, 0.0]
                m[base + O_PAR] = put(par)
        elif isinstance(layer, DenseLayer):
            m[K_KIND] = DENSE
            m[K_H] = layer.output_size
            m[K_DIR + O_WT] = put(np.asarray(layer.weight, np.float64).T)  # (I, O)
            m[K_DIR + O_PROJ] = put(layer.weight)  # (O, I) as well: dot products for narrow heads
            m[K_PAN] = put_panels(np.asarray(layer.weight).T, PWH)
            bias = np.zeros(layer.output_size) if layer.bias is None else layer.bias
            m[K_DIR + O_B] = put(bias)
            a = layer.activation
            m[K_ACT] = -1 if a is None else a.id
            m[K_DIR + O_PAR] = put([0.0, a.alpha if a else 0.0, a.beta if a else 0.0, 0, 0, 0, 0])
        elif isinstance(layer, ActivationLayer):
            m[K_KIND] = ACT
            a = layer.activation
            m[K_ACT] = a.id
            m[K_DIR + O_PAR] = put([0.0, a.alpha, a.beta, 0, 0, 0, 0])
        elif isinstance(layer, SoftmaxLayer):
            m[K_KIND] = SOFTMAX
            m[K_FLAGS] = F_LOG * layer.log
        else:  # pragma: no cover - ModelSpec validates layer types
            raise TypeError(type(layer))
    meta[:, K_S] = spec.state_size()
    meta[:, K_FAST] = int(dtype == np.float32)
    meta[:, K_CELL] = max(_cell_scratch(layer) for layer in spec.layers)
    meta[:, K_FEAT] = max(max(layer.output_size, layer.input_size) for layer in spec.layers)
    W = _aligned(np.concatenate(chunks).astype(dtype) if chunks else np.zeros(1, dtype))
    cell, feat = int(meta[0, K_CELL]), int(meta[0, K_FEAT])
    Wh = (W.view(np.uint32) >> 16).astype(np.uint16) if bf16 else np.zeros(1, np.uint16)
    # read-only, like the kernels' own dummy (a frozen global): numba then types every Wh the
    # same and compiles the shared stack kernels once, not once per flag (NOTES entry 57)
    Wh.setflags(write=False)
    return Packed(
        W=W,
        meta=meta,
        Wh=Wh,
        state_size=spec.state_size(),
        scratch_size=cell + 2 * feat,
        cell_scratch=cell,
        feat_size=feat,
    )
