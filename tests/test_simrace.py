"""The simulator's race checker (tests/simrace.py) finds races in small kernels made to have one,
and none in their corrected versions. Runs in a subprocess with NUMBA_ENABLE_CUDASIM=1."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba.cuda")

HERE = os.path.dirname(os.path.abspath(__file__))

_CODE = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, %r)
    sys.setswitchinterval(1e-6)
    import simrace
    simrace.install(global_memory=True)
    import numpy as np
    from numba import cuda, float32, float64

    def neighbour(B1, B2):  # each thread reads its neighbour's word, then overwrites its own
        @cuda.jit
        def k(out):
            s = cuda.shared.array(8, float32)
            i = cuda.threadIdx.x
            s[i] = i
            if B1:
                cuda.syncthreads()
            out[cuda.grid(1)] = s[(i + 1) %% 8]  # without B1: before the neighbour wrote it?
            if B2:
                cuda.syncthreads()
            s[i] = 0  # without B2: before the other neighbour read it?
        return k

    raw_no_barrier, war_no_barrier, raw_barrier = neighbour(0, 1), neighbour(1, 0), neighbour(1, 1)

    @cuda.jit
    def waw(out):
        s = cuda.shared.array(1, float32)
        s[0] = cuda.threadIdx.x  # every thread, one word
        cuda.syncthreads()
        out[cuda.grid(1)] = s[0]

    def atomics(B):  # every thread adds 1 to one word, then reads it
        @cuda.jit
        def k(out):
            s = cuda.shared.array(1, float32)
            i = cuda.threadIdx.x
            if i == 0:
                s[0] = 0
            cuda.syncthreads()
            cuda.atomic.add(s, 0, 1.0)
            if B:
                cuda.syncthreads()
            out[cuda.grid(1)] = s[0]  # without B: others may still be adding
        return k

    atomic_vs_read, atomics_then_read = atomics(0), atomics(1)

    @cuda.jit
    def dynamic_alias(out):
        # two dynamic arrays of different types are views of one buffer: a write through one
        # and a read through the other overlap in bytes 0-7
        a = cuda.shared.array(0, float64)
        b = cuda.shared.array(0, float32)
        i = cuda.threadIdx.x
        if i == 0:
            a[0] = 1.0
        if i == 1:
            out[cuda.grid(1)] = b[1]

    @cuda.jit
    def dynamic_fine(out):
        a = cuda.shared.array(0, float32)
        i = cuda.threadIdx.x
        a[i] = i
        cuda.syncthreads()
        out[cuda.grid(1)] = a[7 - i]

    @cuda.jit
    def views_2d(out):
        # rows of a 2-D array as views, then elements: row 1 of thread 0 is row 1 of thread 1
        s = cuda.shared.array((2, 4), float32)
        i = cuda.threadIdx.x
        row = s[i %% 2]
        row[i // 2] = i
        out[cuda.grid(1)] = s[1, 0]  # thread 1 wrote it, no barrier

    def global_neighbour(B):
        @cuda.jit
        def k(out):
            i = cuda.threadIdx.x
            if cuda.blockIdx.x == 0:  # one block (blocks are also checked against each other)
                out[i] = i
                if B:
                    cuda.syncthreads()
                out[8 + i] = out[(i + 1) %% 8]  # global memory; without B: a race
        return k

    global_no_barrier, global_barrier = global_neighbour(0), global_neighbour(1)

    @cuda.jit
    def cross_block(out):
        i = cuda.threadIdx.x
        if cuda.blockIdx.x == 0:
            out[i] = i
        else:
            out[8 + i] = out[i]  # block 0's: right in the simulator, which runs block 0 first

    @cuda.jit
    def uninit_shared(out):
        s = cuda.shared.array(8, float32)
        i = cuda.threadIdx.x
        if cuda.blockIdx.x == 0:
            s[i] = i
        cuda.syncthreads()
        out[cuda.grid(1)] = s[i]  # block 1 reads block 0's values: the simulator keeps the array

    @cuda.jit
    def marked_read(out):
        s = cuda.shared.array(8, float32)
        i = cuda.threadIdx.x
        s[i] = i
        v = s[(i + 1) %% 8]  # raced, then dropped (simrace: value unused)
        out[cuda.grid(1)] = 0 * v

    @cuda.jit
    def marked_write(out):
        s = cuda.shared.array(1, float32)
        s[0] = cuda.threadIdx.x  # a write is never excused (simrace: value unused)

    @cuda.jit
    def marked_undefined(out):
        s = cuda.shared.array(8, float32)
        i = cuda.threadIdx.x
        if i < 4:
            s[i] = i
        cuda.syncthreads()
        v = s[i]  # rows past 4 undefined, then dropped (simrace: undefined dropped)
        out[cuda.grid(1)] = v if i < 4 else 0

    @cuda.jit
    def marked_undefined_race(out):
        s = cuda.shared.array(8, float32)
        i = cuda.threadIdx.x
        s[i] = i
        out[cuda.grid(1)] = s[(i + 1) %% 8]  # excuses no race (simrace: undefined dropped)

    @cuda.jit
    def uninit_local(out):
        acc = cuda.local.array(2, float32)
        acc[1] = 1.0
        out[cuda.grid(1)] = acc[0] + acc[1]  # acc[0] never written

    found = {}
    out = np.zeros(16, np.float32)
    names = ("raw_no_barrier raw_barrier war_no_barrier atomics_then_read atomic_vs_read dynamic_alias "
             "dynamic_fine global_no_barrier global_barrier cross_block uninit_shared marked_read "
             "marked_write marked_undefined marked_undefined_race uninit_local views_2d waw").split()
    for name in names:
        simrace.reset()
        out[:] = 0
        globals()[name][2, 8, 0, 64](out)  # two blocks of 8 threads; 64 bytes of dynamic shared memory
        found[name] = simrace.races()
        found["nan " + name] = np.isnan(out).nonzero()[0].tolist()
    try:
        simrace.check()
    except simrace.RaceError as e:
        found["check"] = str(e)
    print(json.dumps(found))
    """
    % HERE
)


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    import json

    path = tmp_path_factory.mktemp("simrace") / "race_kernels.py"  # a file: the marks are read from it
    path.write_text(_CODE)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    p = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel, kinds", [
    ("raw_no_barrier", {"read", "write"}),
    ("war_no_barrier", {"read", "write"}),
    ("waw", {"write"}),
    ("atomic_vs_read", {"atomic", "read"}),
    ("dynamic_alias", {"read", "write"}),
    ("views_2d", {"read", "write"}),
    ("global_no_barrier", {"read", "write"}),
    ("marked_write", {"write"}),
    ("cross_block", {"read", "write"}),
    ("uninit_shared", {"read"}),
    ("marked_undefined_race", {"read", "write"}),
])
def test_race_is_found(found, kernel, kinds):
    undefined = [r for r in found[kernel] if r.endswith("(shared memory starts undefined)")]
    races = [r for r in found[kernel] if r not in undefined]
    if kernel == "uninit_shared":
        assert races == [] and len(undefined) == 1, found[kernel]  # one line of code
        assert undefined[0].startswith("shared array race_kernels.py:"), undefined[0]
        assert " read at " in undefined[0] and "before any thread of block (1, 0, 0) wrote it" in undefined[0]
        return
    assert races, f"{kernel}: no race reported"
    # a read that races a write in the same interval may also come first, before any write
    assert not undefined or kernel in ("raw_no_barrier", "views_2d", "dynamic_alias"), undefined
    for r in races:
        if kernel == "cross_block":
            assert r.endswith("in two blocks of one launch (no barrier orders blocks)"), r
            assert "block (1, 0, 0) read" in r and "block (0, 0, 0) write" in r, r
        else:
            assert "between the same two barriers (block (0, 0, 0), after barrier" in r, r
        assert r.startswith("global array float32(16,)" if kernel in ("global_no_barrier", "cross_block") else ("dynamic shared" if "dynamic" in kernel else "shared array")), r
        assert {w for w in ("read", "write", "atomic") if f" {w} at " in r} == kinds, r


@pytest.mark.parametrize("kernel", ["raw_barrier", "atomics_then_read", "dynamic_fine", "global_barrier",
                                    "marked_read", "marked_undefined"])
def test_no_race_in_correct_kernel(found, kernel):
    assert found[kernel] == []


def test_undefined_memory_is_nan(found):
    # poisoned: block 1 reads the shared array that only block 0 wrote (the simulator would
    # hand it block 0's values), every thread reads a local value it never wrote
    assert found["nan uninit_shared"] == list(range(8, 16))
    assert found["nan uninit_local"] == list(range(16))
    for k in ("raw_barrier", "atomics_then_read", "dynamic_fine", "global_barrier", "marked_undefined"):
        assert found["nan " + k] == [], k


def test_check_raises_with_the_races(found):
    # the last kernel run (waw) had one race: check() names the array and both source lines
    assert "race(s)" in found["check"] and "test_simrace" not in found["check"]
    assert found["check"].startswith("1 race(s):\nshared array race_kernels.py:"), found["check"]
    assert " write at " in found["check"] and " read at " not in found["check"]
    assert found["check"].count("race_kernels.py:") == 3, found["check"]
