"""One folder per layer type; one file per backend with the same names:
``reference.py`` (numpy, ONNX semantics in plain loops), ``cpu.py`` (numba kernels)."""
