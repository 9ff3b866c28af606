"""Timing helpers shared by ``streamrnn bench`` and ``bench/*.py`` (one implementation, no copies).

Measuring rules used everywhere:

* every call is timed on its own with ``time.perf_counter_ns`` (so percentiles, not only a mean);
* warm-up first (compilation, first-call allocation, caches), never counted;
* the garbage collector is paused while timing (as ``timeit`` does);
* several methods are measured **interleaved**: round-robin blocks of calls, so a slow phase of a
  shared, noisy machine hits every method alike (:func:`interleave`).

Nothing here prints; progress bars (tqdm, optional) write to stderr and only on a terminal.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import platform
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import numpy as np

log = logging.getLogger("streamrnn.bench")

#: Environment variables that pin the BLAS / OpenMP / numba pools; set them before importing numpy.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def pin_threads_env(n: int = 1, numba_threads: int | None = None) -> None:
    """Set the thread-count environment variables (effective only before numpy/torch are imported).

    ``NUMBA_NUM_THREADS`` is the *maximum* numba may use later (``numba.set_num_threads`` can only
    lower it), so it is set to ``numba_threads`` (default ``n``).
    """
    for k in THREAD_ENV_VARS:
        os.environ[k] = str(n)
    os.environ["NUMBA_NUM_THREADS"] = str(numba_threads or n)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def random_lstm_spec(
    input_size: int,
    hidden_size: int,
    output_size: int,
    *,
    seed: int = 0,
    dtype: Any = np.float32,
    name: str | None = None,
):
    """A one-layer LSTM + Linear head with PyTorch-style random init (uniform +-1/sqrt(H)).

    Weights are in the ONNX layout of :mod:`streamrnn.spec` (gates i, o, f, c).
    """
    from .spec import DenseLayer, LSTMLayer, ModelSpec

    rng = np.random.default_rng(seed)
    I, H, O = int(input_size), int(hidden_size), int(output_size)
    k = 1.0 / math.sqrt(H)

    def u(*shape):
        return rng.uniform(-k, k, size=shape).astype(dtype)

    lstm = LSTMLayer(I, H, W=u(1, 4 * H, I), R=u(1, 4 * H, H), B=u(1, 8 * H))
    head = DenseLayer(weight=u(O, H), bias=u(O))
    return ModelSpec((lstm, head), name=name or f"lstm_i{I}_h{H}_o{O}")


# ---------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the garbage collector inside the block (restored afterwards)."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _time_into(fn: Callable[[], Any], buf: np.ndarray, start: int, stop: int) -> None:
    pc = time.perf_counter_ns
    for i in range(start, stop):
        t0 = pc()
        fn()
        buf[i] = pc() - t0


def warm_up(fn: Callable[[], Any], *, min_calls: int = 20, min_time_s: float = 0.05,
            max_calls: int = 100_000) -> float:
    """Call ``fn`` until both ``min_calls`` calls and ``min_time_s`` seconds have passed.

    Returns the median nanoseconds per call seen in the second half of the warm-up (an
    estimate used to size the measurement).
    """
    samples: list[int] = []
    pc = time.perf_counter_ns
    t_end = pc() + int(min_time_s * 1e9)
    n = 0
    while n < max_calls and (n < min_calls or pc() < t_end):
        t0 = pc()
        fn()
        samples.append(pc() - t0)
        n += 1
    tail = samples[len(samples) // 2:] or samples
    return float(np.median(tail))


def calls_for_budget(est_ns: float, budget_s: float, lo: int, hi: int) -> int:
    """How many calls of ``est_ns`` each fit in ``budget_s``, clamped to [lo, hi]."""
    n = int(budget_s * 1e9 / max(est_ns, 1.0))
    return int(min(max(n, lo), hi))


def _tqdm(total: int, desc: str | None, enable: bool | None, unit: str = "call"):
    if enable is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional
        return None
    # disable=None: on only when stderr is a terminal
    return tqdm(total=total, desc=desc, unit=unit, disable=None if enable is None else not enable,
                leave=False, dynamic_ncols=True)


def time_calls(
    fn: Callable[[], Any],
    n: int,
    *,
    warmup: int = 0,
    progress: bool | None = False,
    desc: str | None = None,
    chunk: int = 1000,
) -> np.ndarray:
    """Time ``n`` calls of ``fn`` one by one; returns int64 nanoseconds per call.

    ``warmup`` untimed calls first. ``progress``: True / None (auto, on a terminal) shows a
    tqdm bar updated every ``chunk`` calls (outside the timed region).
    """
    for _ in range(int(warmup)):
        fn()
    buf = np.empty(int(n), dtype=np.int64)
    bar = _tqdm(int(n), desc, progress) if progress is not False else None
    with gc_paused():
        i = 0
        while i < n:
            j = min(n, i + chunk)
            _time_into(fn, buf, i, j)
            if bar is not None:
                bar.update(j - i)
            i = j
    if bar is not None:
        bar.close()
    return buf


def interleave(
    fns: Mapping[str, Callable[[], Any]],
    counts: Mapping[str, int] | int,
    *,
    rounds: int = 20,
    pause_s: float = 0.0,
) -> dict[str, np.ndarray]:
    """Time several methods in round-robin blocks so that machine noise hits all alike.

    ``counts``: calls per method (or one int for all), split into ``rounds`` blocks; the order
    of the methods rotates every round. ``pause_s``: sleep between blocks (lets spinning thread
    pools of the previous method go idle before the next one runs). Warm up before calling this.
    Returns nanoseconds per call for each method.
    """
    names = list(fns)
    cnt = {k: int(counts if isinstance(counts, (int, np.integer)) else counts[k]) for k in names}
    bufs = {k: np.empty(cnt[k], dtype=np.int64) for k in names}
    pos = {k: 0 for k in names}
    rounds = max(1, int(rounds))
    with gc_paused():
        for r in range(rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for k in order:
                stop = cnt[k] if r == rounds - 1 else min(cnt[k], math.ceil(cnt[k] * (r + 1) / rounds))
                if stop > pos[k]:
                    if pause_s:
                        time.sleep(pause_s)
                    _time_into(fns[k], bufs[k], pos[k], stop)
                    pos[k] = stop
    return bufs


def summarize(ns: np.ndarray, *, per: int = 1) -> dict[str, float]:
    """Percentiles of per-call nanoseconds, in microseconds (divided by ``per`` items per call)."""
    a = np.asarray(ns, dtype=np.float64) / 1e3 / per
    if a.size == 0:
        return {"n": 0}
    p50, p99, p999 = np.percentile(a, [50, 99, 99.9])
    return {
        "n": int(a.size),
        "p50_us": float(p50),
        "p99_us": float(p99),
        "p99_9_us": float(p999),
        "mean_us": float(a.mean()),
        "min_us": float(a.min()),
        "max_us": float(a.max()),
    }


def fmt_us(v: float | None) -> str:
    """A latency in µs with 3 significant digits (``-`` for None)."""
    if v is None or not math.isfinite(v):
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"  # 0.0673, not 0.07 (the streams tables are in ms)


# ---------------------------------------------------------------------------------------------
# numerics
# ---------------------------------------------------------------------------------------------


def compare(got: np.ndarray, ref: np.ndarray, *, rtol: float = 1e-4) -> dict[str, Any]:
    """``got`` vs ``ref`` elementwise: pass if ``|got - ref| <= rtol * (|ref| + max|ref|)``.

    The ``max|ref|`` term keeps entries near zero from failing on float32 rounding of a sum
    whose terms are of the output's scale. Reports the max absolute and scale-relative errors.
    """
    g = np.asarray(got, dtype=np.float64)
    r = np.asarray(ref, dtype=np.float64)
    if g.shape != r.shape:
        return {"pass": False, "error": f"shape {g.shape} != reference shape {r.shape}"}
    if not np.all(np.isfinite(g)):
        return {"pass": False, "error": "non-finite output"}
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    diff = np.abs(g - r)
    ok = bool(np.all(diff <= rtol * (np.abs(r) + scale)))
    return {
        "pass": ok,
        "max_abs_err": float(diff.max()) if diff.size else 0.0,
        "rel_err": float(diff.max() / scale) if diff.size and scale > 0 else 0.0,
        "rtol": rtol,
    }


# ---------------------------------------------------------------------------------------------
# machine
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1 / 5 / 15 minute load averages (other processes competing for the cores), if known."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info(extra_packages: tuple[str, ...] = ("numpy", "numba", "onnxruntime", "torch", "onnx")) -> dict[str, Any]:
    """CPU model, core counts, OS, Python and package versions (packages not installed: None)."""
    import importlib.metadata as md

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "machine": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    versions = {}
    for p in ("streamrnn",) + tuple(extra_packages):
        try:
            versions[p] = md.version(p)
        except md.PackageNotFoundError:
            versions[p] = None
    info["versions"] = versions
    info["loadavg_1_5_15"] = load_average()
    try:
        import numba

        info["numba_threading_layer_config"] = numba.config.THREADING_LAYER
        info["numba_max_threads"] = numba.config.NUMBA_NUM_THREADS
    except Exception:  # pragma: no cover - numba is a dependency
        pass
    return info
