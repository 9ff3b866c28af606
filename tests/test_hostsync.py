"""The host-side atomics (streamrnn.engine.hostsync) between two threads: a poll that LLVM could
hoist out of its loop would never see the other thread's store (and this test would hang until
its timeout); a payload stored before a release store is seen after the acquire load."""
from __future__ import annotations

import threading

import numpy as np
from numba import njit

from streamrnn.engine.hostsync import load_acquire, store_release


@njit(nogil=True)
def _echo(flag, ack, data, out, rounds):
    """The other side: for each round r waits for flag[0] == r, copies data[0] to out[r], then
    answers ack[0] = r."""
    for r in range(1, rounds + 1):
        while load_acquire(flag, 0) != r:
            pass
        out[r - 1] = data[0]
        store_release(ack, 0, r)


@njit(nogil=True)
def _drive(flag, ack, data, rounds, seed):
    """This side: per round a fresh payload, then the flag; waits for the answer."""
    v = seed
    for r in range(1, rounds + 1):
        v = (v * 6364136223846793005 + 1442695040888963407) & 0x7FFFFFFFFFFFFFFF
        data[0] = v
        store_release(flag, 0, r)
        while load_acquire(ack, 0) != r:
            pass


def test_ping_pong_between_threads():
    rounds = 20000
    flag, ack, data = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.int64)
    out = np.zeros(rounds, np.int64)
    seed = int(np.random.default_rng().integers(1, 1 << 62))
    t = threading.Thread(target=_echo, args=(flag, ack, data, out, rounds), daemon=True)
    t.start()
    _drive(flag, ack, data, rounds, seed)
    t.join(timeout=60)
    assert not t.is_alive()
    want, v = np.empty(rounds, np.int64), seed
    for r in range(rounds):
        v = (v * 6364136223846793005 + 1442695040888963407) & 0x7FFFFFFFFFFFFFFF
        want[r] = v
    np.testing.assert_array_equal(out, want)
    assert ack[0] == rounds


def test_refuses_other_arrays():
    import pytest
    from numba.core.errors import TypingError

    @njit
    def f(a):
        return load_acquire(a, 0)

    with pytest.raises(TypingError):
        f(np.zeros(2, np.float64))


def test_cycles_count_time():
    import time

    from streamrnn.engine.hostsync import cycles

    @njit
    def now():
        return cycles()

    a = now()
    time.sleep(0.02)
    b = now()
    assert b - a > 20e-3 * 1e8  # a counter of at least 100 MHz, which moved forward
