"""ONNX -> streamrnn model (:func:`model_from_onnx`, behind ``srnn.load`` / ``srnn.from_onnx``).

1. The file is read and checked (:mod:`.onnx_io`), every node converted by its registered
   converter and constants folded (:class:`.graph.Graph`); an unsupported op or attribute raises
   ``UnsupportedError`` here, naming the node.
2. The model-level roles are assigned (:mod:`.onnx_roles`): frame input X, state inputs paired
   with state outputs, output Y. Probe runs find the axes of X and Y (:mod:`.graph_plan`).
   LSTM / GRU cells written out as plain ops whose state the graph feeds back (an exported
   ``nn.LSTMCell`` step) are fused into LSTM / GRU nodes (:mod:`.onnx_cells`), kept only if the
   rewritten graph reproduces the original on a random frame and state.
3. When the graph is a chain of layers (:mod:`.onnx_chain`) and the chain reproduces the graph
   on random probe inputs and states, the result is the fused :class:`streamrnn.Model`.
   Otherwise it is a :class:`.graph_model.GraphModel` that runs the graph node by node.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import StreamRNNError
from ..model import Model, _resolve_dtype
from . import onnx_io
from .graph import Graph
from .graph_model import GraphModel
from .graph_plan import build_plan
from .onnx_cells import fuse_lstm_cells
from .onnx_chain import extract_chain
from .onnx_roles import find_roles

log = logging.getLogger("streamrnn")


def model_from_onnx(
    model_or_path: Any,
    *,
    dtype: Any = "float32",
    device: str = "cpu",
    state_map: dict[str, str] | None = None,
) -> Model | GraphModel:
    """Load an ONNX model (``ModelProto``, bytes or path) as a streamrnn model.

    Parameters
    ----------
    model_or_path : onnx.ModelProto, bytes or path of a ``.onnx`` file.
    dtype : "float32" (default) or "float64".
    device : "cpu" or "cuda".
    state_map : ``{state input: state output}`` pairs the graph does not show by itself.

    Returns
    -------
    Model (a chain of layers, fused) or GraphModel (any other graph of supported ops).

    Raises
    ------
    FileNotFoundError : a path that does not exist.
    FormatError : an unreadable or malformed file.
    UnsupportedError : an op, attribute or graph shape streamrnn does not support.
    """
    dt = _resolve_dtype(dtype)
    if device not in ("cpu", "cuda"):
        raise StreamRNNError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    if state_map is not None and not (isinstance(state_map, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in state_map.items())):
        raise StreamRNNError(f"state_map: expected a dict of str -> str, got {state_map!r}")
    proto = onnx_io.load_proto(model_or_path)
    graph = Graph(proto, float_dtype=dt)
    roles = find_roles(graph, state_map)
    plan = build_plan(graph, roles, dt, device)
    gm = GraphModel(graph, plan, device=device)
    fused = fuse_lstm_cells(proto, graph, roles)
    if fused is not None:  # LSTM cells written out as plain ops: one LSTM node each, if it agrees
        try:
            graph2 = Graph(fused, float_dtype=dt)
            plan2 = build_plan(graph2, find_roles(graph2, state_map), dt, device)
            gm2 = GraphModel(graph2, plan2, device=device)
            _check_same(gm2, gm)
        except StreamRNNError as e:
            log.info("ONNX graph %r: its LSTM / GRU cells are left as they are (%s)", graph.name, e)
        else:
            log.info("ONNX graph %r: LSTM / GRU cells written out as plain ops fused into LSTM / GRU nodes", graph.name)
            graph, plan, gm = graph2, plan2, gm2
    try:
        spec = extract_chain(graph, plan)
        model = Model(spec, dtype=dt, device=device)
        _check_same(model, gm)
    except StreamRNNError as e:
        log.info("ONNX graph %r runs as a graph model (%s)", graph.name, e)
        return gm
    log.info("ONNX graph %r lowered to a chain of %d layers", graph.name, len(spec.layers))
    return model


def _check_same(model: Model | GraphModel, gm: GraphModel) -> None:
    """StreamRNNError unless ``model`` (a chain, or a rewritten graph) reproduces the graph on
    random inputs and states (in the same state layout)."""
    rng = np.random.default_rng(2)
    B = 1 if gm.plan.per_item else 3
    T = gm.plan.fixed_T or 5
    if model.input_size != gm.input_size or model.output_size != gm.output_size:
        raise StreamRNNError(
            f"the chain maps {model.input_size} -> {model.output_size} features, the graph "
            f"{gm.input_size} -> {gm.output_size}"
        )
    if model.state_size != gm.state_size:
        raise StreamRNNError("the chain's state layout differs from the graph's recurrent nodes")
    X = rng.uniform(-2, 2, size=(B, T, gm.input_size)).astype(gm.dtype)
    states = [None] if gm.state_size == 0 else [None, rng.uniform(-1, 1, size=(B, gm.state_size)).astype(gm.dtype)]
    tol = dict(rtol=1e-3, atol=1e-4) if gm.dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    for st in states:
        Yg, fg = gm._forward(X, st, None)
        Ym, sm = model.run(X, state=st, return_state=True)
        if not np.allclose(Ym, Yg, **tol):
            raise StreamRNNError(f"the chain's output differs from the graph's by {np.abs(Ym - Yg).max():.3g}")
        if not np.allclose(sm.data, fg, **tol):
            raise StreamRNNError("the chain's final state differs from the graph's")
