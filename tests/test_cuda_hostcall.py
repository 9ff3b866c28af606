"""The fused graph step (``engine.cuda_stage.graph_step``, STREAMRNN_CUDA_HOSTCALL=njit) on the CPU:
ctypes callbacks stand in for the driver's cuGraphLaunch and cuStreamSynchronize. The launch
"runs the graph" on the staged rows (writes f(row) to the output rows); the test checks what
was staged, the order of the driver calls, the outputs, and that refused calls launch nothing.
On a GPU the pool's self-test runs it against numba's launches (bench/gpu_check.py)."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

pytest.importorskip("numba.cuda")

from streamrnn.engine import cpu as ecpu  # noqa: E402
from streamrnn.engine import cuda_stage as ec  # noqa: E402

P2 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
P1 = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class FakeDriver:
    """Rows of a pool of ``cap`` streams staged as the engine lays them out; the launch of
    graph ``n`` computes out[r, k] = (1000 * id + sum(frame)) * (k + 1) for its n rows."""

    def __init__(self, dtype, I=5, O=3, rows=6, cap=8):
        self.dt = np.dtype(dtype)
        isz = self.dt.itemsize
        P = 8 + -(-I * isz // 8) * 8
        self.I, self.O, self.rows, self.c0 = I, O, rows, 8 // isz
        self.hin = np.zeros((rows, P), np.uint8)
        self.hout = np.full((rows, O), np.nan, self.dt)
        self.stamp = np.zeros(cap, np.int64)
        self.calls, self.err = [], [0, 0]
        self.graph_n = {}  # gexec handle -> n
        self.launch = P2(self._launch)
        self.sync = P1(self._sync)
        x = self.ctx = np.zeros(ec.G_LEN, np.int64)
        x[ec.G_ROWS_AT], x[ec.G_ROWS], x[ec.G_P8], x[ec.G_PF] = self.hin.ctypes.data, rows, P // 8, P // isz
        x[ec.G_C0], x[ec.G_I], x[ec.G_STAMP], x[ec.G_CAP] = self.c0, I, self.stamp.ctypes.data, cap
        x[ec.G_OUT], x[ec.G_O], x[ec.G_STREAM] = self.hout.ctypes.data, O, 0x5EED
        x[ec.G_LAUNCH] = ctypes.cast(self.launch, ctypes.c_void_p).value
        x[ec.G_SYNC] = ctypes.cast(self.sync, ctypes.c_void_p).value

    def _launch(self, g, stream):
        self.calls.append(("launch", g, stream))
        if self.err[0]:
            return self.err[0]
        ids = self.hin.view(np.int64)[:, 0]
        X = self.hin.view(self.dt)[:, self.c0:self.c0 + self.I]
        for r in range(self.graph_n[g]):
            self.hout[r] = (1000.0 * ids[r] + X[r].sum()) * np.arange(1, self.O + 1)
        return 0

    def _sync(self, stream):
        self.calls.append(("sync", stream))
        return self.err[1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_graph_step_with_a_stand_in_driver(dtype):
    rng = np.random.default_rng()
    fn = ec.graph_step(dtype)
    d = FakeDriver(dtype)
    alive = np.ones(8, np.uint8)
    alive[6] = 0
    d.graph_n = {0xA1: 1, 0xA3: 3}
    rtol = 1e-5 if dtype == "float32" else 1e-10
    for step, (g, ids) in enumerate(((0xA3, [4, 0, 7]), (0xA1, [2]), (0xA3, [7, 4, 0]), (0xA3, [1, 5, 3]))):
        ids = np.array(ids, np.int64)
        X = rng.standard_normal((len(ids), d.I)).astype(dtype)
        out = np.full((len(ids), d.O), np.nan, dtype)
        d.calls.clear()
        assert fn(ids, X, out, alive, g, d.ctx) == 0
        assert d.calls == [("launch", g, 0x5EED), ("sync", 0x5EED)], d.calls
        want = (1000.0 * ids[:, None] + X.sum(axis=1, dtype=np.float64)[:, None]) * np.arange(1, d.O + 1)
        np.testing.assert_allclose(out, want, rtol=rtol, err_msg=f"step {step}")
        assert d.ctx[ec.G_EPOCH] == step + 1
    # refused calls launch nothing: a repeated id, a closed one, out of range, a NaN
    for ids, status in (([1, 1, 2], ecpu.E_ID_DUP), ([6], ecpu.E_ID_CLOSED), ([8], ecpu.E_ID_RANGE),
                        ([-1], ecpu.E_ID_RANGE)):
        ids = np.array(ids, np.int64)
        d.calls.clear()
        rc = fn(ids, rng.standard_normal((len(ids), d.I)).astype(dtype), np.empty((len(ids), d.O), dtype),
                alive, 0xA3, d.ctx)
        assert rc & 255 == status and d.calls == [], (ids, rc)
    X = rng.standard_normal((3, d.I)).astype(dtype)
    X[2, 1] = np.inf
    d.calls.clear()
    rc = fn(np.array([0, 1, 2]), X, np.empty((3, d.O), dtype), alive, 0xA3, d.ctx)
    assert rc == ecpu.E_NONFINITE | (2 << 8) and d.calls == []
    # more rows than staged, or outputs of the wrong shape: refused before anything
    assert fn(np.arange(7), rng.standard_normal((7, d.I)).astype(dtype), np.empty((7, d.O), dtype),
              np.ones(8, np.uint8), 0xA3, d.ctx) == ecpu.E_OUTLEN
    assert fn(np.arange(3), X, np.empty((3, d.O + 1), dtype), alive, 0xA3, d.ctx) == ecpu.E_OUTLEN
    # driver errors come back with their CUresult, and a failed launch is not waited for
    ids, X = np.array([0, 1, 2]), rng.standard_normal((3, d.I)).astype(dtype)
    d.err[:] = [700, 0]
    d.calls.clear()
    assert fn(ids, X, np.empty((3, d.O), dtype), alive, 0xA3, d.ctx) == ec.E_LAUNCH | (700 << 8)
    assert [c[0] for c in d.calls] == ["launch"]
    d.err[:] = [0, 999]
    assert fn(ids, X, np.empty((3, d.O), dtype), alive, 0xA3, d.ctx) == ec.E_SYNC | (999 << 8)
    # the other dtype is refused by the dispatcher, never staged as this one
    other = np.float64 if dtype == "float32" else np.float32
    with pytest.raises(TypeError):
        fn(ids, X.astype(other), np.empty((3, d.O), other), alive, 0xA3, d.ctx)
