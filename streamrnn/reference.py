"""Whole-model reference in float64 numpy: the layer references chained (ONNX semantics)."""
from __future__ import annotations

import numpy as np

from .layers.dense.reference import dense
from .layers.gru.reference import gru_direction
from .layers.lstm.reference import lstm_direction
from .layers.rnn.reference import rnn_direction
from .spec import GRULayer, LSTMLayer, ModelSpec, RNNLayer


def run_reference(spec: ModelSpec, X: np.ndarray, lengths=None, state=None):
    """X (B, T, I) -> (Y (B, T, O), final state (B, S)), all in float64.

    ``state`` (B, S) is the flat initial state (see ``ModelSpec.state_slots``), zeros if None.
    Outputs past a sequence's length are 0; its final state is the one at its last valid step.
    """
    spec = spec.astype(np.float64)
    X = np.asarray(X, dtype=np.float64)
    B, T, _ = X.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    S = spec.state_size()
    state = np.zeros((B, S)) if state is None else np.array(state, dtype=np.float64).reshape(B, S)
    out = state.copy()
    slots = {(i, d, k): (o, n) for i, d, k, o, n in spec.state_slots()}
    cur = X.transpose(1, 0, 2)  # (T, B, F)
    for i, layer in enumerate(spec.layers):
        if not isinstance(layer, (LSTMLayer, GRULayer, RNNLayer)):
            cur = dense(layer, cur)
            continue
        ys = []
        for d in range(layer.num_directions):
            reverse = layer.direction == "reverse" or d == 1
            ho, hn = slots[(i, d, "h")]
            h = state[:, ho : ho + hn]
            if isinstance(layer, LSTMLayer):
                co, cn = slots[(i, d, "c")]
                Y, h, c = lstm_direction(layer, d, cur, h, state[:, co : co + cn], lengths, reverse)
                out[:, co : co + cn] = c
            elif isinstance(layer, GRULayer):
                Y, h = gru_direction(layer, d, cur, h, lengths, reverse)
            else:
                Y, h = rnn_direction(layer, d, cur, h, lengths, reverse)
            out[:, ho : ho + hn] = h
            ys.append(Y)
        cur = np.concatenate(ys, axis=-1)  # (T, B, D*Hr): [forward, backward]
    Y = cur.transpose(1, 0, 2).copy()
    for b in range(B):
        Y[b, int(lengths[b]) :] = 0.0
    return Y, out
