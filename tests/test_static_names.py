"""Static checks for code that the test machines cannot run.

Much of the CUDA engine runs only on a real GPU: the driver and graph launch paths, their
self-tests, kernel timing (``# pragma: no cover - real GPU only``), and ``bench/gpu_check.py``
runs only on a lent device. A name left undefined there, or a table assigned on a module that
no longer reads it (after a refactor, say), fails only on hardware, or silently measures the
wrong thing. These tests find both without running that code:

* every name that the library, the converters, the tests, the benchmarks and the simulator
  cases' scripts use is defined (pyflakes' undefined-name checks);
* every attribute that the tests and benchmarks read or assign on a streamrnn module they
  imported (``from streamrnn.engine import cuda_tiles as ce; ce.GEMM_TILES = ...``) exists on
  that module.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import textwrap

import pytest

from pyflakes import checker, messages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNDEFINED = (messages.UndefinedName, messages.UndefinedLocal, messages.UndefinedExport)


def _sources() -> list[tuple[str, str]]:
    """(label, source) of every Python file of the project, and of each simulator case's script
    (its prelude + case + epilogue, as tests/test_cuda_sim.py runs it)."""
    out = []
    for top in ("streamrnn", "converters", "tests", "bench"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith(".py"):
                    p = os.path.join(d, f)
                    with open(p, encoding="utf-8") as fh:
                        out.append((os.path.relpath(p, ROOT), fh.read()))
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        import test_cuda_sim as tcs
    finally:
        sys.path.pop(0)
    for name, body in tcs._CASES.items():
        out.append((f"tests/test_cuda_sim.py case {name!r}", tcs._PRELUDE + textwrap.dedent(body) + tcs._EPILOGUE))
    return out


SOURCES = _sources()


def _undefined(src: str, label: str) -> list[str]:
    w = checker.Checker(ast.parse(src, label), filename=label)
    return [str(m) for m in w.messages if isinstance(m, UNDEFINED)]


def test_sources_found():
    labels = [label for label, _ in SOURCES]
    assert "streamrnn/engine/cuda_pool.py" in labels and "bench/gpu_check.py" in labels
    assert sum("case" in label for label in labels) >= 10


@pytest.mark.parametrize("label,src", SOURCES, ids=[label for label, _ in SOURCES])
def test_no_undefined_names(label, src):
    assert _undefined(src, label) == []


def test_undefined_names_are_found():
    # the check itself: a name used in a branch that never runs, a name deleted then used
    src = "def f(x):\n    if x > 1e9:\n        return cuda_launch(x)\n    return x\n"
    assert [m.split(": ", 1)[1] for m in _undefined(src, "t.py")] == ["undefined name 'cuda_launch'"]
    assert _undefined("import os\n\ndef g():\n    return os.sep\n", "t.py") == []


def _module_attributes(src: str) -> list[tuple[str, str, int]]:
    """(module, attribute, line) for each ``alias.attr`` (read or assigned) where ``alias`` was
    bound to a streamrnn module by an import in ``src`` and to nothing else (the walk does not
    follow scopes)."""
    tree = ast.parse(src)
    alias: dict = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamrnn") and node.level == 0:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                try:
                    spec = importlib.util.find_spec(full)
                except ModuleNotFoundError:
                    spec = None
                if spec is not None:  # a submodule, not a function or class of the package
                    alias[a.asname or a.name] = full
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("streamrnn.") and a.asname:
                    alias[a.asname] = a.name
    for node in ast.walk(tree):  # a name also bound to something else somewhere: not followed
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            alias.pop(node.id, None)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in alias:
            out.append((alias[node.value.id], node.attr, node.lineno))
    return out


@pytest.mark.parametrize("label,src", [(lb, s) for lb, s in SOURCES if lb.startswith(("tests", "bench"))],
                         ids=[lb for lb, _ in SOURCES if lb.startswith(("tests", "bench"))])
def test_module_attributes_exist(label, src):
    missing = []
    for mod, attr, line in _module_attributes(src):
        m = importlib.import_module(mod)
        if not hasattr(m, attr):
            missing.append(f"line {line}: {mod}.{attr}")
    assert missing == []


def test_module_attributes_are_checked():
    # the check itself: a table assigned on the module that no longer holds it is found
    src = "from streamrnn.engine import cuda_tiles as ce, pack\nce.GEMM_TILES = None\nce.NO_SUCH_TABLE = 1\n"
    found = _module_attributes(src)
    assert _module_attributes(src + "def f():\n    ce = 3\n    return ce.real\n") == []  # rebound: skipped
    assert ("streamrnn.engine.cuda_tiles", "GEMM_TILES", 2) in found
    m = importlib.import_module("streamrnn.engine.cuda_tiles")
    assert [a for mod, a, _ in found if not hasattr(m, a)] == ["NO_SUCH_TABLE"]
