"""pool.step on the spinning team (engine/team.py) against the numpy reference.

The team's rows are claimed chunk by chunk by whichever thread is free, so every test here
checks outputs AND states over several steps in random id order, and the tests that need the
workers to have taken part say so (``Team.rows``). Each test runs on a team of its own (one or
two workers, whatever the machine's core count; ``use_team`` in conftest.py), stopped afterwards.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

import streamrnn as srnn
from streamrnn.engine import cpu, team
from streamrnn.reference import run_reference

from conftest import assert_close as _assert_close
from conftest import rand_act, rand_layer


def assert_close(actual, ref):
    _assert_close(actual, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def _spec(rng, kinds, I, sizes, O):
    layers, size = [], I
    for kind, H in zip(kinds, sizes):
        layer = rand_layer(rng, kind, size, H, exotic=True, scale=0.15)
        layers.append(layer)
        size = layer.output_size
    if rng.random() < 0.5:
        layers.append(srnn.ActivationLayer(size, rand_act(rng, bounded=True)))
    layers.append(srnn.DenseLayer(rng.standard_normal((O, size)) * 0.2, rng.standard_normal(O) * 0.1,
                                  rand_act(rng, bounded=True) if rng.random() < 0.5 else None))
    return srnn.ModelSpec(tuple(layers))


CASES = [  # kinds, input size, hidden sizes, head outputs (panels + remainder columns)
    (("lstm",), 30, (40,), 16),
    (("gru",), 20, (90,), 16),
    (("rnn",), 7, (130,), 33),
    (("lstm", "gru", "rnn"), 29, (64, 50, 40), 17),
]


def _pool_steps(model, spec, rng, B, T=3, threads=2):
    """T steps of B streams (ids in random order) against the reference; the pool steps with
    ``threads`` threads."""
    I = spec.input_size
    X = rng.standard_normal((B, T, I))
    Yr, str_ = run_reference(spec.astype(np.float32), X.astype(np.float32))
    pool = model.pool(capacity=B + 3)
    pool._batched.threads = threads
    ids = pool.open(B)
    perm = rng.permutation(B)
    for t in range(T):
        assert_close(pool.step(ids[perm], X[perm, t]), Yr[perm, t])
    assert_close(np.stack([pool.get_state(i).data for i in ids]), str_)
    return pool


# how the rows are shared: as the pool decides (equal shares up to two GEMM chunks, then guided
# chunks), guided chunks of >= 6 rows with 6-row GEMM chunks, one share per thread (weights
# beyond L2)
@pytest.mark.parametrize("chunks", ["default", "guided", "shares"])
@pytest.mark.parametrize("B", [12, 41, 100, 1030])  # 1030: two blocks of rows (BLOCK = 1024)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_team_matches_reference(case, B, chunks, use_team, monkeypatch):
    if chunks == "guided":
        monkeypatch.setattr(cpu.BatchedStep, "CHUNK", 6)
    elif chunks == "shares":
        monkeypatch.setattr(cpu.BatchedStep, "TEAM_FINE_BYTES", 0)
    use_team(1)
    rng = np.random.default_rng(700 + 10 * case + B)
    kinds, I, sizes, O = CASES[case]
    spec = _spec(rng, kinds, I, sizes, O)
    _pool_steps(srnn.Model(spec, dtype=np.float32), spec, rng, B)


def test_three_threads(use_team):
    """Two workers and the caller share each step (threads 0-2 in the job), then steps limited
    to two threads (worker 2 must stay out while worker 1 takes part), both right."""
    tm = use_team(2)
    rng = np.random.default_rng(5)
    spec = _spec(rng, ("lstm", "gru"), 24, (70, 33), 9)
    model = srnn.Model(spec, dtype=np.float32)
    _pool_steps(model, spec, rng, 300, T=4, threads=3)
    B, T = 120, 200
    X = rng.standard_normal((T, B, 24)).astype(np.float32)
    pool, ref = model.pool(capacity=B), model.pool(capacity=B)
    pool._batched.threads, ref._batched.threads = 2, 1
    ids, rids = pool.open(B), ref.open(B)
    before = tm.rows()
    Y = np.stack([pool.step(ids, X[t]) for t in range(T)])  # back to back: the workers spin
    after = tm.rows()
    assert after[2] == before[2] and after[1] > before[1], (before, after)
    assert_close(Y, np.stack([ref.step(rids, X[t]) for t in range(T)]))


def _until_worker_rows(tm, fn, timeout=5.0):
    """Call fn until a worker has taken rows (it spins on another core, or is woken)."""
    t0 = time.time()
    while tm.rows()[1:].sum() == 0:
        fn()
        assert time.time() - t0 < timeout, "the team's worker never took a row"


def _team_and_serial(rng, I, H, B, pause=0.0):
    """(pool, ref, step): B streams of a random LSTM model in a pool on the team and in one
    stepping serially; step() feeds both the same random frames (after ``pause`` seconds) and
    checks that they agree."""
    spec = _spec(rng, ("lstm",), I, (H,), 8)
    model = srnn.Model(spec, dtype=np.float32)
    pool, ref = model.pool(capacity=B), model.pool(capacity=B)
    ref._batched.threads = 1
    ids, rids = pool.open(B), ref.open(B)

    def step():
        time.sleep(pause)
        X = rng.standard_normal((B, I)).astype(np.float32)
        assert_close(pool.step(ids, X), ref.step(rids, X))

    return (pool, ids), (ref, rids), step


def test_worker_takes_rows(use_team):
    tm = use_team(1)
    (pool, ids), (ref, rids), step = _team_and_serial(np.random.default_rng(11), 32, 64, 96)
    _until_worker_rows(tm, step)
    for _ in range(5):
        step()
    assert_close(np.stack([pool.get_state(i).data for i in ids]), np.stack([ref.get_state(i).data for i in rids]))


@pytest.mark.parametrize("futex", [True, False])
def test_sleeping_worker_is_woken(futex, use_team):
    """With a spin of ~1 us the worker sleeps between calls, on its futex (Linux) or on an
    Event; each call wakes it and the caller does the work alone until it arrives: results
    stay right either way, and the worker does take part."""
    if futex and not team.FUTEX:
        pytest.skip("no futexes on this system (the Event case runs)")
    tm = use_team(1, spin=1.0, futex=futex)
    # 5 ms between calls: the worker goes to sleep
    _, _, step = _team_and_serial(np.random.default_rng(12), 64, 128, 1000, pause=0.005)
    _until_worker_rows(tm, step, timeout=30.0)
    t0 = time.time()
    while tm.ctl[team.SLEEP + team.LINE] != 1:  # asleep again (soon, unless the machine is busy)
        assert time.time() - t0 < 10.0, "the idle worker never went back to sleep"
        time.sleep(0.001)
    assert tm.ctl[team.MODE] == int(futex)


def test_two_pools_from_two_threads(use_team):
    """Two Python threads step two pools at once: one job at a time owns the team, the other
    call runs alone (``lock``); both stay right."""
    use_team(1)
    rng = np.random.default_rng(13)
    spec = _spec(rng, ("gru",), 16, (48,), 4)
    model = srnn.Model(spec, dtype=np.float32)
    B, T = 64, 40
    X = rng.standard_normal((2, B, T, 16))
    errors = []

    def run(k):
        try:
            Yr, _ = run_reference(spec.astype(np.float32), X[k].astype(np.float32))
            pool = model.pool(capacity=B)
            pool._batched.threads = 2
            ids = pool.open(B)
            for t in range(T):
                assert_close(pool.step(ids, X[k, :, t]), Yr[:, t])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ths = [threading.Thread(target=run, args=(k,)) for k in range(2)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    assert not errors, errors


@pytest.mark.parametrize("bad", ["nan", "repeat", "closed", "unknown"])
def test_refused_call_leaves_states(bad, use_team):
    """The team's job validates the call before it posts any row (cpu._team): a refused call
    names the row and leaves every state as it was; the next call steps normally."""
    rng = np.random.default_rng(14)
    spec = _spec(rng, ("lstm",), 8, (32,), 4)
    model = srnn.Model(spec, dtype=np.float32)
    tm = use_team(1)
    B = 40
    pool = model.pool(capacity=B + 1)
    pool._batched.threads = 2
    ids = pool.open(B)
    pool.close(pool.open())
    pool.step(ids, rng.standard_normal((B, 8)))
    before = np.stack([pool.get_state(i).data for i in ids])
    X = rng.standard_normal((B, 8))
    bad_ids = ids.copy()
    err = {"nan": srnn.NonFiniteError, "repeat": srnn.StreamIdError, "closed": srnn.StreamIdError,
           "unknown": srnn.StreamIdError}[bad]
    if bad == "nan":
        X[33, 2] = np.nan
    else:
        bad_ids[33] = {"repeat": ids[5], "closed": B, "unknown": B + 7}[bad]
    rows = tm.rows().sum()
    with pytest.raises(err, match="33"):
        pool.step(bad_ids, X)
    assert tm.rows().sum() == rows  # refused before any row was posted
    np.testing.assert_array_equal(np.stack([pool.get_state(i).data for i in ids]), before)
    X[33, 2] = 0.5
    pool.step(ids, X)  # a good call after the refused one
    assert tm.rows().sum() == rows + B


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork: POSIX only")
def test_forked_child_starts_its_own_team():
    """A child forked after the team started has none of its threads: its first team step
    starts a new team (os.register_at_fork) instead of waiting on workers that do not exist."""
    rng = np.random.default_rng(15)
    spec = _spec(rng, ("lstm",), 8, (32,), 4)
    model = srnn.Model(spec, dtype=np.float32)
    B = 48
    X = rng.standard_normal((B, 8)).astype(np.float32)
    Yr, _ = run_reference(spec.astype(np.float32), X[:, None])
    tm = team.get(1, cpu._team_loop)
    pid = os.fork()
    if pid == 0:  # child: exit status 0 only if the step ran and was right
        code = 1
        try:
            import signal
            signal.alarm(60)
            assert team._team is None
            cpu.BatchedStep.TEAM_MIN = 0
            pool = model.pool(capacity=B)
            pool._batched.threads = 2
            ids = pool.open(B)
            assert_close(pool.step(ids, X), Yr[:, 0])
            assert team._team is not None and team._team is not tm
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
