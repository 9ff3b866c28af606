"""Streaming equivalences, pool isolation under random interleavings, snapshots, threads."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import streamrnn as srnn

from conftest import assert_close, rand_spec


def _model(seed, dtype=np.float32, n_rec=2):
    rng = np.random.default_rng(seed)
    return srnn.Model(rand_spec(rng, n_rec=n_rec), dtype=dtype), rng


@pytest.fixture(params=["matvec", "gemm", "gemm-blocks", "gemm-team", "gemm-team-blocks"])
def pool_path(request, monkeypatch, use_team):
    """Run a test on every pool.step path: per-stream mat-vecs; batched (float32: panel GEMM
    fused with the gates; float64: BLAS), serial, over blocks of rows (here 3 streams per
    block; 1024 in use), and on the spinning team of threads from 2 rows on (float32), in one
    job or one per block."""
    from streamrnn.engine.cpu import BatchedStep

    monkeypatch.setattr(srnn.Pool, "GEMM_MIN_STREAMS", 10**9 if request.param == "matvec" else 1)
    if request.param == "matvec":
        monkeypatch.setattr(srnn.Pool, "BATCH_MIN_WORK", 1 << 62)
    if request.param.endswith("blocks"):
        monkeypatch.setattr(BatchedStep, "BLOCK", 3)
    if request.param.startswith("gemm-team"):
        use_team(1)
    else:
        monkeypatch.setattr(BatchedStep, "TEAM_MIN", 1 << 62)
    return request.param


@pytest.mark.parametrize("seed", range(8))
def test_pool_random_interleavings_equal_lone_streams(seed, dtype, pool_path):
    model, rng = _model(seed, dtype, n_rec=1 + seed % 3)
    n_streams, T = 7, 12
    X = rng.standard_normal((n_streams, T, model.input_size))
    expected = model.run(X)
    pool = model.pool(capacity=16)
    decoy = pool.open(3)  # streams that are stepped with garbage in between
    ids = pool.open(n_streams)
    pos = np.zeros(n_streams, int)
    got = np.zeros_like(expected)
    while (pos < T).any():
        live = np.flatnonzero(pos < T)
        pick = rng.permutation(live)[: rng.integers(1, len(live) + 1)]
        if rng.random() < 0.3:  # one stream gets a chunk through pool.push
            k = pick[0]
            n = int(rng.integers(1, T - pos[k] + 1))
            got[k, pos[k] : pos[k] + n] = pool.push(ids[k], X[k, pos[k] : pos[k] + n])
            pos[k] += n
            continue
        Y = pool.step(ids[pick], X[pick, pos[pick]])
        got[pick, pos[pick]] = Y
        pos[pick] += 1
        pool.step(decoy, rng.standard_normal((3, model.input_size)) * 5)
    assert_close(got, expected, dtype)


def test_pool_step_picks_the_batch_from_a_few_streams(monkeypatch):
    """pool.step runs one stream at a time below GEMM_MIN_STREAMS streams (or below BATCH_MIN_WORK
    streams x weights), else the batch; every call's outputs equal the lone streams'."""
    from streamrnn.benchutil import random_lstm_spec
    from streamrnn.engine import cpu

    rng = np.random.default_rng(5)
    cases = []
    for H, n_first_batch in ((8, srnn.Pool.GEMM_MIN_STREAMS), (128, 2)):
        model = srnn.Model(random_lstm_spec(H, H, 4, seed=int(rng.integers(1 << 30))))
        assert (model._packed.W.size * 2 >= srnn.Pool.BATCH_MIN_WORK) == (n_first_batch == 2)
        cases.append((H, n_first_batch, model, model.pool(capacity=16)))  # kernels compiled here
    calls = []
    serial, batched = cpu._pool_step, cpu.BatchedStep.step
    monkeypatch.setattr(cpu, "_pool_step", lambda *a: calls.append("serial") or serial(*a))
    monkeypatch.setattr(cpu.BatchedStep, "step", lambda self, *a: calls.append("batch") or batched(self, *a))
    for H, n_first_batch, model, pool in cases:
        ids = pool.open(12)
        for n in range(1, 13):
            calls.clear()
            pick = rng.permutation(ids)[:n]
            X = rng.standard_normal((n, H)).astype(np.float32)
            state = {int(i): pool.get_state(int(i)) for i in pick}
            Y = pool.step(pick, X)
            assert calls == ["serial" if n < n_first_batch else "batch"], (H, n, calls)
            for r, sid in enumerate(pick):
                lone = model.stream()
                lone.state = state[int(sid)]
                assert_close(Y[r], lone.step(X[r]), np.float32)


def test_snapshot_restore_and_bytes(dtype):
    model, rng = _model(11, dtype)
    X = rng.standard_normal((10, model.input_size))
    s = model.stream()
    s.push(X[:4])
    snap = s.state
    blob = s.state_bytes()
    after = s.push(X[4:])
    snap.data[:] = 123.0 if False else snap.data  # no-op write path is allowed
    mutated = s.state
    mutated.data[:] = 7.0  # mutating a snapshot never changes the stream
    assert not np.allclose(s.state.data, 7.0)
    s.state = snap
    assert_close(s.push(X[4:]), after, dtype)
    s2 = model.stream()
    s2.load_state_bytes(blob)
    assert_close(s2.push(X[4:]), after, dtype)
    # the same snapshot goes to a pool stream and to model.run
    pool = model.pool(4)
    sid = pool.open()
    pool.set_state(sid, snap)
    assert_close(pool.push(sid, X[4:]), after, dtype)
    assert_close(model.run(X[4:], state=snap), after, dtype)
    assert pool.get_state(sid) == s2.state
    # state_bytes from a float64 model load into a float32 one of the same layout
    other = srnn.Model(model.spec, dtype=np.float32 if dtype == np.float64 else np.float64)
    s3 = other.stream()
    s3.load_state_bytes(blob)
    assert_close(s3.state.data, snap.data, np.float32)


def test_state_views_by_layer():
    model, rng = _model(2, np.float64)
    s = model.stream()
    s.push(rng.standard_normal((3, model.input_size)))
    st = s.state
    for (i, d, k), v in st.layers().items():
        layer = model.spec.layers[i]
        assert v.shape == ((layer.rec_size,) if k == "h" else (layer.hidden_size,))
    i = next(i for i, _ in model.spec.recurrent())
    assert st.h(i).shape[0] == model.spec.layers[i].rec_size
    # np.asarray of a State is its flat data (it was a 0-d object array)
    assert np.asarray(st) is st.data and np.asarray(st, np.float32).dtype == np.float32
    assert np.array(st, copy=True) is not st.data and np.array_equal(np.array(st), st.data)
    Y, batch = model.run(rng.standard_normal((2, 3, model.input_size)), return_state=True)
    assert np.asarray(batch).shape == (2, model.state_size)


def test_reset_and_open_after_close_start_from_zero():
    model, rng = _model(4)
    X = rng.standard_normal((5, model.input_size))
    fresh = model.run(X)
    s = model.stream()
    s.push(X)
    s.reset()
    assert_close(s.push(X), fresh)
    pool = model.pool(2)
    a = pool.open()
    pool.push(a, X)
    pool.close(a)
    b = pool.open()
    assert_close(pool.push(b, X), fresh)
    pool.reset([b])
    assert_close(pool.push(b, X), fresh)
    assert len(pool) == 1 and pool.capacity == 2


def test_threads_on_one_stream_are_serialised_and_streams_run_in_parallel():
    model, rng = _model(6, np.float64, n_rec=1)
    X = rng.standard_normal((4, 200, model.input_size))
    expected = model.run(X)
    streams = [model.stream() for _ in range(4)]
    outs = [np.zeros((200, model.output_size)) for _ in range(4)]

    def work(k):
        for t in range(200):
            outs[k][t] = streams[k].step(X[k, t])

    th = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in th]
    [t.join() for t in th]
    assert_close(np.stack(outs), expected, np.float64)
    # many threads hammering one pool: each thread owns one stream id
    pool = model.pool(8)
    ids = pool.open(4)
    outs2 = [np.zeros((200, model.output_size)) for _ in range(4)]

    def work2(k):
        for t in range(200):
            outs2[k][t] = pool.step(ids[k : k + 1], X[k, t : t + 1])[0]

    th = [threading.Thread(target=work2, args=(k,)) for k in range(4)]
    [t.start() for t in th]
    [t.join() for t in th]
    assert_close(np.stack(outs2), expected, np.float64)


def test_bidirectional_is_run_only():
    rng = np.random.default_rng(0)
    for direction in ("bidirectional", "reverse"):
        spec = rand_spec(rng, n_rec=1, direction=direction)
        model = srnn.Model(spec)
        assert not model.streamable
        model.run(rng.standard_normal((3, spec.input_size)))
        with pytest.raises(srnn.StreamRNNError, match="run"):
            model.stream()
        with pytest.raises(srnn.StreamRNNError, match="bidirectional|reverse"):
            model.pool(4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("seed", range(6))
def test_pool_paths_each_cell_kind(kind, seed, dtype, pool_path):
    rng = np.random.default_rng(seed + 100)
    spec = rand_spec(rng, n_rec=2, kinds=(kind,))
    model = srnn.Model(spec, dtype=dtype)
    X = rng.standard_normal((20, 4, spec.input_size))
    pool = model.pool(32)
    ids = rng.permutation(pool.open(20))
    Y = np.stack([pool.step(ids, X[:, t]) for t in range(4)], 1)
    assert_close(Y, model.run(X), dtype)


@pytest.mark.parametrize("seed", range(4))
def test_long_push_takes_gemm_path_and_equals_steps(seed, dtype):
    from streamrnn.engine import cpu

    model, rng = _model(seed + 50, dtype, n_rec=1 + seed % 3)
    T = 3 * cpu.PUSH_GEMM_MIN_FRAMES + 1
    X = rng.standard_normal((T, model.input_size))
    s, s2 = model.stream(), model.stream()
    stepped = np.stack([s.step(x) for x in X])
    pushed = np.concatenate([s2.push(X[:2]), s2.push(X[2:])])  # short chunk, then a long one
    assert_close(pushed, stepped, dtype)
    assert_close(s2.state.data, s.state.data, dtype)
    before = s2.state
    bad = rng.standard_normal((T, model.input_size))
    bad[T - 3, 0] = np.inf
    with pytest.raises(srnn.NonFiniteError, match=f"frame {T - 3}"):
        s2.push(bad)
    assert s2.state == before
    pool = model.pool(2)
    sid = pool.open()
    assert_close(pool.push(sid, X), stepped, dtype)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_empty_inputs_give_empty_outputs_and_keep_states(direction, dtype):
    """No sequences, no steps, no frames, no ids: empty outputs of the right shape and dtype,
    every state as it was (a bug once: run with B * T == 0 raised numpy's reshape error)."""
    rng = np.random.default_rng(7)
    spec = rand_spec(rng, n_rec=2, direction=direction)
    model = srnn.Model(spec, dtype=dtype)
    I, O, S = spec.input_size, model.output_size, model.state_size
    for shape in [(3, 0, I), (0, 4, I), (0, 0, I), (0, I)]:
        Y = model.run(rng.standard_normal(shape))
        assert Y.shape == shape[:-1] + (O,) and Y.dtype == model.dtype, (shape, Y.shape, Y.dtype)
    st0 = rng.standard_normal((3, S))
    Y, st = model.run(np.empty((3, 0, I)), state=st0, return_state=True)
    assert Y.shape == (3, 0, O)
    assert_close(st.data, st0, dtype)  # no step taken: the initial state comes back
    Y, st = model.run(np.empty((0, 4, I)), return_state=True)
    assert st.data.shape == (0, S)
    if direction != "forward":
        return
    s = model.stream()
    s.push(rng.standard_normal((2, I)))
    before = s.state
    assert s.push(np.empty((0, I))).shape == (0, O)
    assert s.state == before
    pool = model.pool(4)
    ids = pool.open(3)
    pool.step(ids, rng.standard_normal((3, I)))
    snaps = [pool.get_state(i) for i in ids]
    assert pool.push(ids[1], np.empty((0, I))).shape == (0, O)
    assert pool.step(np.empty(0, np.int64), np.empty((0, I))).shape == (0, O)
    assert pool.step([], np.empty((0, I))).shape == (0, O)  # an empty list: numpy makes it float64
    pool.reset([])
    pool.close([])
    assert len(pool) == 3
    assert all(pool.get_state(i) == sn for i, sn in zip(ids, snaps))
