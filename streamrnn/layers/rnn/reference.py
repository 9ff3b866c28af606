"""Simple RNN in plain numpy loops, ONNX semantics (the oracle every kernel is tested against)."""
from __future__ import annotations

import numpy as np

from ...activations import apply
from ...spec import RNNLayer


def rnn_direction(layer: RNNLayer, d: int, X, h, lengths, reverse: bool):
    """One direction. X (T, B, I); h (B, H); lengths (B,). Returns Y (T, B, H), h."""
    T, B, _ = X.shape
    H = layer.hidden_size
    f = layer.activations[d]
    W, R = layer.W[d], layer.R[d]  # (H, I), (H, H)
    bias = np.zeros(2 * H) if layer.B is None else layer.B[d]
    Y = np.zeros((T, B, H))
    h = h.copy()
    for b in range(B):
        n = int(lengths[b])
        for s in range(n):
            t = n - 1 - s if reverse else s
            a = W @ X[t, b] + R @ h[b] + bias[:H] + bias[H:]
            if layer.clip is not None:
                a = np.clip(a, -layer.clip, layer.clip)
            h[b] = apply(f, a)
            Y[t, b] = h[b]
    return Y, h
