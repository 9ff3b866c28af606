"""``srnn.InferenceSession``: onnxruntime's call shape on top of :class:`.graph.Graph`.

>>> sess = srnn.InferenceSession("model.onnx")
>>> Y, Y_h = sess.run(None, {"X": X, "W": W, "R": R})

Returns what onnxruntime returns for the same feeds: outputs in the graph's own layouts
(``Y`` of a recurrent node is (T, D, B, H), or (B, T, D, H) with ``layout=1``), onnxruntime's
conventions where the ONNX spec leaves room (see :mod:`.onnx_ops.recurrent`). Weights may be
fed as graph inputs; the recurrent layer is then built from the fed arrays (and reused while
the same weights are fed). The graph computes in the dtypes it declares (float32, or float64
for a double model). Float feeds of another float dtype are cast to the declared one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import ShapeError, StreamRNNError
from . import onnx_io
from .graph import Graph, ValueInfo

log = logging.getLogger("streamrnn")


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: name, shape (ints / names / None), type."""

    name: str
    shape: list
    type: str


def _device_for(providers: Any) -> str:
    """onnxruntime's ``providers`` -> the device of the recurrent nodes: the first of them that
    can be used here ("CUDAExecutionProvider": a GPU, or numba's simulator; the CPU always)."""
    if providers is None:
        return "cpu"
    for p in providers:
        name = p[0] if isinstance(p, (tuple, list)) and p else p
        if name == "CPUExecutionProvider":
            return "cpu"
        if name == "CUDAExecutionProvider":
            try:
                from ..engine.cuda_runtime import check_device

                check_device()
                return "cuda"
            except StreamRNNError as e:
                log.warning("InferenceSession: CUDAExecutionProvider asked for and not available, "
                            "trying the next provider (%s)", e)
                continue
        log.warning("InferenceSession: provider %r is not available in streamrnn, trying the next", name)
    return "cpu"


class InferenceSession:
    """Run an ONNX model with onnxruntime's API (``run``, ``get_inputs``, ``get_outputs``).

    Parameters
    ----------
    path_or_bytes : path of a ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
    providers : onnxruntime's list of execution providers (names, or (name, options) pairs),
        in order of preference: ``"CUDAExecutionProvider"`` runs the recurrent nodes on the
        CUDA engine (``device="cuda"``) where a GPU is there, ``"CPUExecutionProvider"`` on the
        CPU; one that cannot be used is skipped with a warning, as onnxruntime does. Default:
        the CPU.
    sess_options, provider_options, **kwargs : accepted for onnxruntime compatibility, ignored.

    Raises
    ------
    FileNotFoundError, FormatError, UnsupportedError : as :func:`streamrnn.load`.
    """

    def __init__(self, path_or_bytes: Any, sess_options: Any = None, providers: Any = None,
                 provider_options: Any = None, **kwargs: Any):
        self._proto = onnx_io.load_proto(path_or_bytes)
        self._graph = Graph(self._proto)
        self._inputs = {vi.name: vi for vi in self._graph.inputs}
        self._outputs = [vi.name for vi in self._graph.outputs]
        self._device = _device_for(providers)
        log.debug("InferenceSession %r: %d nodes in the file, %d left after constant folding",
                  self._graph.name, len(self._proto.graph.node), len(self._graph.nodes))

    def get_inputs(self) -> list[NodeArg]:
        """The graph inputs that are not initializers."""
        return [NodeArg(v.name, list(v.shape or []), v.type) for v in self._graph.inputs]

    def get_outputs(self) -> list[NodeArg]:
        """The graph outputs, as onnxruntime lists them."""
        return [NodeArg(v.name, list(v.shape or []), v.type) for v in self._graph.outputs]

    def get_providers(self) -> list[str]:
        """The providers in use, as onnxruntime lists them."""
        return (["CUDAExecutionProvider"] if self._device == "cuda" else []) + ["CPUExecutionProvider"]

    def run(self, output_names: Iterable[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """Compute ``output_names`` (all outputs if None or empty, as onnxruntime) from
        ``input_feed``; a list of arrays."""
        names = list(output_names or self._outputs)
        for n in names:
            if n not in self._outputs:
                raise StreamRNNError(f"output_names: expected names among {self._outputs}, got {n!r}")
        if not isinstance(input_feed, Mapping):
            raise StreamRNNError(f"input_feed: expected a dict of name -> array, got {type(input_feed).__name__}")
        feeds = {}
        for k, v in input_feed.items():
            vi = self._inputs.get(k)
            if vi is None:
                raise StreamRNNError(f"input_feed: expected names among {sorted(self._inputs)}, got {k!r}")
            feeds[k] = self._check_feed(vi, v)
        vals, _ = self._graph.evaluate(feeds, names, device=self._device)
        return [np.array(vals[n], copy=True) for n in names]

    @staticmethod
    def _check_feed(vi: ValueInfo, v: Any) -> np.ndarray:
        a = np.asarray(v)
        want = vi.dtype
        if want is not None and a.dtype != want:
            if (a.dtype.kind == "f" and want.kind == "f") or (a.dtype.kind in "iu" and want.kind in "iu"):
                a = a.astype(want)
            else:
                raise ShapeError(f"input_feed[{vi.name!r}]: expected {vi.type}, got {a.dtype}")
        if vi.shape is not None:
            if a.ndim != len(vi.shape):
                raise ShapeError(
                    f"input_feed[{vi.name!r}]: expected rank {len(vi.shape)} {vi.shape}, got shape {a.shape}"
                )
            for i, (d, s) in enumerate(zip(vi.shape, a.shape)):
                if isinstance(d, int) and d != s:
                    raise ShapeError(
                        f"input_feed[{vi.name!r}]: expected shape {vi.shape} (dim {i} = {d}), got {a.shape}"
                    )
        return a
