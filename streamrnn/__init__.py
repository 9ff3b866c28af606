"""streamrnn: stateful, per-frame inference of LSTM / GRU / RNN models on Numba kernels.

>>> import streamrnn as srnn
>>> model = srnn.load("model.onnx")          # or .pt / .safetensors / .srnn
>>> s = model.stream(); y = s.step(x)        # one frame, state kept inside
>>> pool = model.pool(4096); Y = pool.step(ids, X)

Importing streamrnn imports neither onnx nor torch; the converters load them on demand.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from .errors import (
    CapacityError,
    FormatError,
    NonFiniteError,
    ShapeError,
    StreamIdError,
    StreamRNNError,
    UnsupportedError,
)
from .model import Model, Pool, Stream
from .spec import (
    Activation,
    ActivationLayer,
    DenseLayer,
    GRULayer,
    LSTMLayer,
    ModelSpec,
    RNNLayer,
    SoftmaxLayer,
)
from .state import State

__version__ = "0.1.0"
logging.getLogger("streamrnn").addHandler(logging.NullHandler())

__all__ = [
    "load", "from_onnx", "from_torch", "InferenceSession", "Model", "Stream", "Pool", "State",
    "ModelSpec", "LSTMLayer", "GRULayer", "RNNLayer", "DenseLayer", "ActivationLayer",
    "SoftmaxLayer", "Activation", "StreamRNNError", "ShapeError", "StreamIdError",
    "CapacityError", "NonFiniteError", "FormatError", "UnsupportedError",
]

_TORCH_EXT = (".pt", ".pth", ".bin", ".ckpt")


def load(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    arch: Any = None,
    state_map: dict[str, str] | None = None,
    weights: str = "float",
) -> Model:
    """Load a model from ``.onnx``, ``.pt``/``.pth``/``.bin``/``.ckpt``, ``.safetensors`` or ``.srnn``.

    Parameters
    ----------
    path : path of the file; the extension picks the reader.
    dtype : "float32" (default) or "float64".
    device : "cpu" (default) or "cuda".
    arch : for PyTorch checkpoints, what a state_dict cannot tell (see ``from_torch``).
    state_map : for ONNX graphs, pairs of state input -> state output names: where the graph
        hides which output carries a recurrent node's final state, or a state the graph computes
        itself (an exported ``nn.LSTMCell`` step) whose names do not pair by themselves
        (``h`` -> ``hn``, ``state`` -> ``stateN`` and the like do).
    weights : "float" (default) or "bfloat16": opt-in reduced-precision recurrent weights for
        the per-frame CPU paths (see ``Model``). Not for ONNX graph models.

    Raises
    ------
    FileNotFoundError : the file does not exist.
    StreamRNNError : the file is unreadable, hostile or holds an unsupported model.
    """
    if isinstance(path, (bytes, bytearray, memoryview)) and (len(path) > 4096 or b"\0" in bytes(path)):
        # a file's contents, not a (bytes) path: FileNotFoundError would print all of them
        raise StreamRNNError(
            f"path: expected a file path, got {len(path)} bytes of data; for ONNX bytes use "
            "srnn.from_onnx(data), for other formats write them to a file first"
        )
    p = os.fsdecode(path)  # str, bytes or PathLike: a str (the suffix picks the reader)
    if not os.path.exists(p):
        raise FileNotFoundError(p)
    ext = os.path.splitext(p)[1].lower()
    # an argument that does not apply to this kind of file is refused, not silently ignored
    if arch is not None and ext in (".srnn", ".onnx"):
        raise StreamRNNError(f"arch: applies to PyTorch checkpoints and .safetensors files, got one for a {ext} file "
                             "(its architecture is in the file)")
    if state_map is not None and ext != ".onnx":
        raise StreamRNNError(f"state_map: applies to ONNX files, got one for a {ext or 'suffix-less'} file")
    if ext == ".srnn":
        from .fileformat import load_srnn

        return Model(load_srnn(p), dtype=dtype, device=device, weights=weights)
    if ext == ".onnx":
        model = from_onnx(p, dtype=dtype, device=device, state_map=state_map)
        if weights != "float":
            if not isinstance(model, Model):
                raise StreamRNNError("weights: 'bfloat16' needs a model that lowers to a layer chain, got a graph model")
            model = Model(model.spec, dtype=dtype, device=device, weights=weights)
        return model
    if ext in _TORCH_EXT or ext == ".safetensors":
        from .converters import torch_import

        spec = torch_import.spec_from_checkpoint(p, arch=arch)
        return Model(spec, dtype=dtype, device=device, weights=weights)
    raise StreamRNNError(
        f"path: expected a file ending in .onnx, .srnn, .safetensors, {', '.join(_TORCH_EXT)}; got {p!r}"
    )


def from_onnx(model_or_path: Any, *, dtype: str = "float32", device: str = "cpu", state_map=None):
    """Build a model from an ONNX ``ModelProto``, bytes or a path (see ``streamrnn.converters``)."""
    from .converters import onnx_import

    return onnx_import.model_from_onnx(model_or_path, dtype=dtype, device=device, state_map=state_map)


def from_torch(module_or_state_dict: Any, *, arch: Any = None, dtype: str = "float32", device: str = "cpu") -> Model:
    """Build a model from a live ``torch.nn.Module`` or a state_dict (tensors or numpy arrays)."""
    from .converters import torch_import

    spec = torch_import.spec_from_torch(module_or_state_dict, arch=arch)
    return Model(spec, dtype=dtype, device=device)


def __getattr__(name: str):
    if name == "InferenceSession":
        from .converters.onnx_session import InferenceSession

        return InferenceSession
    raise AttributeError(name)
