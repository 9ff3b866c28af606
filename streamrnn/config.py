"""Numba options in one place (stumpy style).

Every CPU kernel is compiled with these options; ``parallel=True`` is only used by the kernels
whose outer loop runs over streams (``PARALLEL``).
"""
from __future__ import annotations

import os

# numba's OpenMP workers spin-wait after a parallel region by default (libgomp: 300,000 spins,
# milliseconds here), which starves OpenBLAS's threads in the GEMM that follows (measured 35 ms
# instead of 0.2 ms per pool.step; see bench/NOTES.md). Ask libgomp for passive waiting unless
# the user chose a policy or a spin count: a bounded spin (e.g. GOMP_SPINCOUNT=10000, ~0.1-1 ms
# here) makes back-to-back parallel calls cheaper (2 us instead of 60-90 us to wake a worker;
# NOTES entry 23) at some cost where BLAS runs right after. This only takes effect if set
# before libgomp starts, i.e. before the first OpenMP parallel region in the process.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def omp_passive() -> bool:
    """True when OpenMP workers wait passively (parallel kernels may then sit next to BLAS)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


# error_model='numpy': no Python-style divide checks, so LLVM can vectorise the inner loops.
# nogil: kernels release the GIL, so different streams/pools run in parallel from threads.
# fastmath: only 'contract' (fused multiply-add). Full fastmath would let LLVM assume no NaN/Inf
# and reorder sums freely; FMA contraction only makes each multiply-add more exact.
# _nrt=False: no reference counting of array views. The kernels never allocate; with NRT on,
# every slice they take costs an out-of-line NRT_incref / NRT_decref call (79 + 139 call sites
# in the whole-stack step kernel): switching it off halved the H=32 step (bench/NOTES.md).
NJIT = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False, fastmath={"contract"}, _nrt=False)
PARALLEL = dict(NJIT, parallel=True)
#: wrappers and other kernels with one or two callers: inlined into their callers in numba's IR,
#: so they get no compiled library of their own (each library re-optimises and re-emits everything
#: it inlines: ~1.5 s per wrapper level of the whole-stack kernels with a cold cache,
#: bench/NOTES.md 59). Not for kernels with many callers (each caller then types the whole tree:
#: far slower), and only for functions whose options equal NJIT's (an inlined body takes its
#: caller's fastmath; tests/test_kernels_math.py checks it).
NJIT_INLINE = dict(NJIT, inline="always")
#: for kernels that run in a microsecond or two: holding the GIL serialises them for free
NJIT_GIL = dict(NJIT, nogil=False)
#: streams of models with at most this many weights step with the GIL held (no lock)
GIL_STEP_MAX_WEIGHTS = 1 << 19

#: Set STREAMRNN_NO_CACHE=1 to disable numba's on-disk cache (e.g. read-only installs).
if os.environ.get("STREAMRNN_NO_CACHE"):
    NJIT["cache"] = False
    PARALLEL["cache"] = False
    NJIT_GIL["cache"] = False
    NJIT_INLINE["cache"] = False
