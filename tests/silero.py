"""Silero VAD's ONNX files (a real-world streaming LSTM) for the tests, from the pinned PyPI
wheel ``silero-vad==6.2.3`` (its ``silero_vad/data/*.onnx``; the package's own dependencies are
not installed). Looked for in ``$STREAMRNN_TEST_DATA/silero_vad-6.2.3``, then in
``~/.cache/streamrnn-test/silero_vad-6.2.3``; fetched there with ``pip download`` where absent
(CI does so; offline, the tests that need the files skip, saying why). The wheel's SHA-256 is
checked before anything is extracted."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "6.2.3"
WHEEL = f"silero_vad-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"
FILES = ("silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_16k_sequence.onnx", "silero_vad_half.onnx",
         "silero_vad_op18_ifless.onnx", "silero_vad_openvino_16k.onnx")


def _dirs() -> list[Path]:
    out = []
    if os.environ.get("STREAMRNN_TEST_DATA"):
        out.append(Path(os.environ["STREAMRNN_TEST_DATA"]) / f"silero_vad-{VERSION}")
    out.append(Path.home() / ".cache" / "streamrnn-test" / f"silero_vad-{VERSION}")
    return out


def silero_dir() -> tuple[Path | None, str]:
    """(the folder holding every file of FILES, "") or (None, why not)."""
    for d in _dirs():
        if all((d / f).is_file() for f in FILES):
            return d, ""
    d = _dirs()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                "--timeout", "20", "--retries", "2",
                                "-d", tmp, f"silero-vad=={VERSION}"], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"pip download silero-vad=={VERSION} failed: {e}"
        whl = Path(tmp) / WHEEL
        if r.returncode or not whl.is_file():
            return None, f"pip download silero-vad=={VERSION} failed: {(r.stderr or r.stdout).strip()[-300:]}"
        digest = hashlib.sha256(whl.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            return None, f"{WHEEL}: expected SHA-256 {WHEEL_SHA256}, got {digest}"
        d.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(whl) as z:
            for f in FILES:
                (d / f).write_bytes(z.read(f"silero_vad/data/{f}"))
    return d, ""
