"""Import of ONNX models and PyTorch checkpoints; installed as ``streamrnn.converters``."""
