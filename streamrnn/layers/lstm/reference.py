"""LSTM in plain numpy loops, ONNX semantics (the oracle every kernel is tested against)."""
from __future__ import annotations

import numpy as np

from ...activations import apply
from ...spec import LSTMLayer


def lstm_direction(layer: LSTMLayer, d: int, X, h, c, lengths, reverse: bool):
    """One direction. X (T, B, I); h (B, Hr); c (B, H); lengths (B,). Returns Y (T, B, Hr), h, c."""
    T, B, _ = X.shape
    H = layer.hidden_size
    f, g, hh = layer.activations[3 * d : 3 * d + 3]
    W, R = layer.W[d], layer.R[d]  # (4H, I), (4H, Hr)
    bias = np.zeros(8 * H) if layer.B is None else layer.B[d]
    wb, rb = bias[: 4 * H], bias[4 * H :]
    P = np.zeros(3 * H) if layer.P is None else layer.P[d]
    pi, po, pf = P[:H], P[H : 2 * H], P[2 * H :]
    clip = (lambda v: np.clip(v, -layer.clip, layer.clip)) if layer.clip is not None else (lambda v: v)
    Y = np.zeros((T, B, layer.rec_size))
    h, c = h.copy(), c.copy()
    for b in range(B):
        n = int(lengths[b])
        for s in range(n):
            t = n - 1 - s if reverse else s
            gates = W @ X[t, b] + R @ h[b] + wb + rb  # (4H,) order i, o, f, c
            gi, go, gf, gc = gates[:H], gates[H : 2 * H], gates[2 * H : 3 * H], gates[3 * H :]
            # clip applies to each pre-activation, peephole term included (as onnxruntime does)
            i = apply(f, clip(gi + pi * c[b]))
            ft = (1.0 - i) if layer.input_forget else apply(f, clip(gf + pf * c[b]))
            ct = apply(g, clip(gc))
            c[b] = ft * c[b] + i * ct
            o = apply(f, clip(go + po * c[b]))
            hn = o * apply(hh, c[b])  # (H,)
            h[b] = hn if layer.proj is None else layer.proj[d] @ hn  # (Hr,)
            Y[t, b] = h[b]
    return Y, h, c
