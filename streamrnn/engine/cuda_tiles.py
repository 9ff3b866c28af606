"""Tiles of the CUDA step kernels, chosen by the number of rows (streams) of a call.

A call of n rows falls in a row bucket (``_bucket``); per bucket, each layer kind has a row-tile
``Tile`` (:mod:`streamrnn.layers.dense.cuda`) and, where a tiled GEMM serves it better, a
``GemmTile`` (:mod:`streamrnn.layers.cuda_common`). ``_tile`` / ``_gemm_tile`` shrink a bucket's
tile for a layer: for few units, for the register budget of the item size and for shared
memory. The tables measured on an H200 are in bench/NOTES.md (entries 50, 54, 72, 87, 89); the
simulator gets tiny tiles so that even H = 8 spans several blocks.

Tests and benchmarks may replace a table (``STEP_TILES``, ``GEMM_TILES``, ...) of this module
before a model's pools are built.
"""
from __future__ import annotations

import functools

from .cuda_runtime import simulator


def _tiles():
    """Per row bucket: (most rows, or None for the last; the row-tile kernels' Tile). Built
    once per mode: ``_bucket`` runs in every step (rebuilding this table cost ~2 µs of a ~26
    µs one-row step; bench/NOTES.md entry 80)."""
    return _tiles_for(simulator())


@functools.lru_cache(maxsize=2)
def _tiles_for(sim: bool) -> tuple:
    from ..layers.dense.cuda import Tile

    if sim:  # tiny blocks: several blocks even for H = 8, and fast to simulate
        return ((1, Tile(4, 2, 1, 1, 8, 1)), (None, Tile(2, 2, 2, 2, 8, 2)))
    return (
        # one stream: split-K GEMV over many blocks; the whole input row staged at once (up to
        # 1024 values): one load-and-barrier round per kernel instead of one per 64 values
        # (NOTES entry 54; KT=64 before)
        (1, Tile(8, 32, 1, 1, 1024, 1)),
        (64, Tile(16, 4, 2, 4, 32, 1)),
        (1024, Tile(32, 2, 4, 4, 32, 1)),
        (None, Tile(32, 1, 8, 4, 32, 2)),  # many streams: GEMM-like, 4 rows x 2 units per thread
    )


def _gemm_tiles(stage: str = "pipe"):
    """Per bucket of ``_tiles()``: the shared-memory tiled GEMM tile of the LSTM step (see
    streamrnn/layers/cuda_common.py), or None for the row-tile kernel. ``stage="loop"``: the
    tiles of the unpipelined staging (before NOTES entry 50), for an A/B."""
    from ..layers.cuda_common import GemmTile

    if simulator():  # 16 threads, 8 rows x 4 units per block, 2 k-slices, 2x2 units per thread
        return [None, GemmTile(8, 4, 2, 2, 2, 4)]
    return [
        None,
        GemmTile(32, 8, 4, 1, 4, 64),  # few streams: 256 threads, 4 k-slices, 64-deep chunks
        GemmTile(64, 16, 8, 1, 1, 32),  # 128 threads, 8 rows x 4 gates per thread
        # many streams: 256 threads, output tile 128 rows x 128 gate columns, 8 rows x 2 units x
        # 4 gates per thread (64 FMAs per 16 shared loads)
        GemmTile(128, 32, 8, 2, 1, 16) if stage == "pipe" else GemmTile(128, 16, 8, 1, 1, 32),
    ]


def _dense_gemm_tiles():
    """Per bucket of ``_tiles()``: the tiled GEMM tile of a dense layer (one gate; N is often
    a head of 8-64 outputs, so the tiles are narrow in rows and split K for few rows), or None
    for the row-tile kernel (``make_linear``; one row: its split-K GEMV). NOTES entry 72."""
    from ..layers.cuda_common import GemmTile

    if simulator():
        return [None, GemmTile(4, 4, 2, 2, 2, 4)]
    return [
        None,
        GemmTile(8, 32, 2, 2, 4, 64),  # <= 64 rows: 256 threads, 4 k-slices, 64-deep chunks
        GemmTile(16, 32, 2, 2, 2, 32),  # <= 1024 rows: 64 blocks at 1024 rows
        GemmTile(64, 32, 4, 2, 1, 32),  # many rows: 256 threads, 8 sums per thread
    ]


def _gru_gemm_tiles():
    """Per bucket of ``_tiles()``: the tiled GEMM tile of a GRU step with linear_before_reset
    (``make_gru_gemm``: 3 gates staged, 4 sums per unit), or None for the row-tile kernel. The
    LSTM's tiles with a thread count that 3 x BU divides (the pipelined staging): TY a
    multiple of 3 TU, so BM = TM x TY rows of 96 instead of 64 / 128 (NOTES entry 87)."""
    from ..layers.cuda_common import GemmTile

    if simulator():  # 24 threads: 12 rows x 4 units, 2 x 2 per thread, 2 k-slices; 3 x 4 divides 24
        return [None, GemmTile(12, 4, 2, 2, 2, 4)]
    return [
        None,
        GemmTile(24, 8, 4, 1, 4, 48),  # few streams: 192 threads (6 x 8 x 4), 4 k-slices
        GemmTile(96, 16, 8, 1, 1, 32),  # 192 threads, 8 rows x 4 sums per thread
        GemmTile(96, 32, 8, 2, 1, 16),  # many streams: 192 threads, 8 rows x 2 units x 4 sums
    ]


def _rnn_gemm_tiles():
    """Per bucket of ``_tiles()``: the tiled GEMM tile of a simple RNN step (``make_rnn_gemm``,
    one gate), or None for the row-tile kernel: the LSTM's thread counts and per-thread sums
    (8 x 8 for many streams), its 4 gates of a unit becoming 4 more units (NOTES entry 89)."""
    from ..layers.cuda_common import GemmTile

    if simulator():  # 16 threads: 8 rows x 8 units, 2 x 4 per thread, 2 k-slices
        return [None, GemmTile(8, 8, 2, 4, 2, 4)]
    return [
        None,
        GemmTile(32, 32, 4, 4, 4, 64),  # few streams: 256 threads, 4 k-slices
        GemmTile(64, 64, 8, 4, 1, 32),  # 128 threads, 8 rows x 4 units per thread
        GemmTile(128, 128, 8, 8, 1, 16),  # many streams: 256 threads, 8 rows x 8 units per thread
    ]


#: (max rows, Tile) buckets; tests and benchmarks may replace it before building a model.
STEP_TILES = None
#: per bucket, a GemmTile or None (parallel to STEP_TILES / _tiles()); replaceable likewise
GEMM_TILES = None
#: per bucket, the GRU's GemmTile or None (``_gru_gemm_tiles()``); replaceable likewise
GRU_GEMM_TILES = None
#: per bucket, the simple RNN's GemmTile or None (``_rnn_gemm_tiles()``); replaceable likewise
RNN_GEMM_TILES = None
#: per bucket, the dense layers' GemmTile or None (``_dense_gemm_tiles()``); replaceable likewise
DENSE_GEMM_TILES = None
#: accumulators per thread that stay in registers (ptxas, sm_90), by item size
MAX_ACC = {4: 64, 8: 16}
#: static shared memory budget of a row-tile block (bytes)
MAX_SMEM = 40 * 1024


def step_tiles() -> tuple:
    """The row buckets in use: ``STEP_TILES`` where a test or benchmark set it, else ``_tiles()``."""
    return STEP_TILES or _tiles()


def _bucket(n: int) -> int:
    """The row bucket of a call of n rows (an index into ``step_tiles()``; runs in every step:
    ``step_tiles`` inlined)."""
    tiles = STEP_TILES or _tiles()
    for i, (mx, _) in enumerate(tiles):
        if mx is None or n <= mx:
            return i
    return len(tiles) - 1


def _tile(bucket: int, N: int, AW: int = 1, isz: int = 4):
    """The bucket's tile for a layer of N output units with AW accumulators per unit and row:
    fewer units / rows per thread where registers or shared memory would run out, fewer units
    per block for a small head."""
    from ..layers.dense.cuda import Tile, red_size

    tiles = step_tiles()
    U, KS, RS, RPT, KT, UPT = tiles[bucket][1]
    if not simulator():
        lim = MAX_ACC.get(isz, 16)
        while UPT > 1 and (RPT * UPT * AW > lim or U * UPT // 2 >= N):
            UPT //= 2
        while RPT > 1 and RPT * UPT * AW > lim:
            RPT //= 2
    U0 = U
    while U > 4 and U // 2 >= N:
        U //= 2
    f = U0 // U
    if f > 1:
        if KS > 1:
            KS *= f
            KT = max(KT, KS)
        else:
            RS *= f
    t = Tile(U, KS, RS, RPT, KT, UPT)
    while t.RPT > 1 and (t.RS * t.RPT * t.KT + red_size(t, t.UPT * AW)) * isz > MAX_SMEM:
        t = t._replace(RPT=t.RPT // 2)
    return t


def _gemm_tile(bucket: int, N: int, G: int, isz: int, stage: str = "pipe", dense: bool = False,
               vec: bool = False, gru: bool = False, rnn: bool = False):
    """The bucket's GEMM tile for N units of G gates (None: use the row-tile kernel), shrunk
    for small N, for the accumulator budget of the item size and for shared memory (``vec``:
    of the vector layout). ``dense``: the tiles of dense layers (``_dense_gemm_tiles``)
    instead of the LSTM's; ``gru``: a GRU's (``_gru_gemm_tiles``; G = 4 sums per unit, 3
    staged); ``rnn``: a simple RNN's (``_rnn_gemm_tiles``)."""
    if dense:
        gts = DENSE_GEMM_TILES if DENSE_GEMM_TILES is not None else _dense_gemm_tiles()
    elif gru:
        gts = GRU_GEMM_TILES if GRU_GEMM_TILES is not None else _gru_gemm_tiles()
    elif rnn:
        gts = RNN_GEMM_TILES if RNN_GEMM_TILES is not None else _rnn_gemm_tiles()
    else:
        gts = GEMM_TILES if GEMM_TILES is not None else _gemm_tiles(stage)
    gt = gts[bucket] if bucket < len(gts) else None
    if gt is None:
        return None
    from ..layers.cuda_common import gemm_smem

    if not simulator():
        lim = MAX_ACC.get(isz, 16)
        while gt.TU > 1 and gt.TM * gt.TU * G > lim:
            gt = gt._replace(TU=gt.TU // 2, BU=gt.BU // 2)
        while gt.TM > 1 and gt.TM * gt.TU * G > lim:  # more threads, same rows per block
            gt = gt._replace(TM=gt.TM // 2)
        while gt.BU > 4 * gt.TU and gt.BU // 2 >= N:
            gt = gt._replace(BU=gt.BU // 2)
    while gemm_smem(gt, G, vec) * isz > MAX_SMEM:
        if gt.BK > 16:
            gt = gt._replace(BK=gt.BK // 2)
        elif gt.KS > 1:
            gt = gt._replace(KS=gt.KS // 2)
        elif gt.BK > 4:
            gt = gt._replace(BK=gt.BK // 2)
        else:
            break
    return gt


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
