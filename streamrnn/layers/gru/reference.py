"""GRU in plain numpy loops, ONNX semantics (the oracle every kernel is tested against)."""
from __future__ import annotations

import numpy as np

from ...activations import apply
from ...spec import GRULayer


def gru_direction(layer: GRULayer, d: int, X, h, lengths, reverse: bool):
    """One direction. X (T, B, I); h (B, H); lengths (B,). Returns Y (T, B, H), h."""
    T, B, _ = X.shape
    H = layer.hidden_size
    f, g = layer.activations[2 * d : 2 * d + 2]
    W, R = layer.W[d], layer.R[d]  # (3H, I), (3H, H), gate order z, r, h
    bias = np.zeros(6 * H) if layer.B is None else layer.B[d]
    wb, rb = bias[: 3 * H], bias[3 * H :]
    clip = (lambda v: np.clip(v, -layer.clip, layer.clip)) if layer.clip is not None else (lambda v: v)
    Y = np.zeros((T, B, H))
    h = h.copy()
    for b in range(B):
        n = int(lengths[b])
        for s in range(n):
            t = n - 1 - s if reverse else s
            xw = W @ X[t, b] + wb  # (3H,)
            z = apply(f, clip(xw[:H] + R[:H] @ h[b] + rb[:H]))
            r = apply(f, clip(xw[H : 2 * H] + R[H : 2 * H] @ h[b] + rb[H : 2 * H]))
            Rh, rbh = R[2 * H :], rb[2 * H :]
            if layer.linear_before_reset:
                hc = apply(g, clip(xw[2 * H :] + r * (Rh @ h[b] + rbh)))
            else:
                hc = apply(g, clip(xw[2 * H :] + Rh @ (r * h[b]) + rbh))
            h[b] = (1.0 - z) * hc + z * h[b]
            Y[t, b] = h[b]
    return Y, h
