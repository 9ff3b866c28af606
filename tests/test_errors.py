"""Bad input raises StreamRNNError naming argument, expected and actual; no state changes."""
from __future__ import annotations

import numpy as np
import pytest

import streamrnn as srnn

from conftest import rand_spec


@pytest.fixture
def model():
    return srnn.Model(rand_spec(np.random.default_rng(0), n_rec=2, exotic=False))


def _fresh(model, rng):
    X = rng.standard_normal((3, model.input_size))
    s = model.stream()
    s.push(X)
    return s


def test_stream_step_errors_leave_state(model):
    rng = np.random.default_rng(1)
    s = _fresh(model, rng)
    before = s.state
    I = model.input_size
    bad = [
        (np.zeros(I + 1), srnn.ShapeError, "x"),
        (np.zeros((1, I)), srnn.ShapeError, "x"),
        (np.array(["a"] * I), srnn.ShapeError, "x"),
        (np.r_[np.full(I - 1, 0.5), np.nan], srnn.NonFiniteError, "x"),
        (np.r_[np.inf, np.zeros(I - 1)], srnn.NonFiniteError, "x"),
    ]
    for x, exc, name in bad:
        with pytest.raises(exc, match=name):
            s.step(x)
        assert s.state == before
    with pytest.raises(srnn.ShapeError, match="out"):
        s.step(np.zeros(I), out=np.zeros(model.output_size + 1, np.float32))
    with pytest.raises(srnn.ShapeError, match="out"):
        s.step(np.zeros(I), out=np.zeros(model.output_size, np.float64))
    X = rng.standard_normal((4, I))
    X[2, 0] = np.nan
    with pytest.raises(srnn.NonFiniteError, match="frame 2"):
        s.push(X)
    assert s.state == before
    with pytest.raises(srnn.ShapeError, match=r"expected .*features"):
        s.push(np.zeros((4, I + 2)))
    assert s.state == before
    assert isinstance(srnn.ShapeError("x"), ValueError)


def test_pool_errors_change_no_stream(model):
    rng = np.random.default_rng(2)
    pool = model.pool(capacity=4)
    ids = pool.open(3)
    pool.step(ids, rng.standard_normal((3, model.input_size)))
    snaps = [pool.get_state(i) for i in ids]
    I = model.input_size
    X = rng.standard_normal((3, I))
    cases = [
        (np.array([ids[0], ids[1], 99]), X, srnn.StreamIdError, "unknown"),
        (np.array([ids[0], -1, ids[2]]), X, srnn.StreamIdError, "unknown"),
        (np.array([ids[0], ids[1], 3]), X, srnn.StreamIdError, "closed"),  # id 3 never opened
        (np.array([ids[0], ids[1], ids[0]]), X, srnn.StreamIdError, "repeated"),
        (ids, X[:2], srnn.ShapeError, "X"),
        (ids, np.zeros((3, I + 1)), srnn.ShapeError, "X"),
        (ids, np.where(np.arange(3)[:, None] == 1, np.nan, X), srnn.NonFiniteError, "row 1"),
        (np.array([0.5, 1, 2]), X, srnn.StreamIdError, "int"),
        (np.array([ids[0], 2**63 + 5, ids[2]], np.uint64), X, srnn.StreamIdError, r"ids\[1\].* 9223372036854775813"),
    ]
    for i, x, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            pool.step(i, x)
        for sid, snap in zip(ids, snaps):
            assert pool.get_state(sid) == snap
    with pytest.raises(srnn.StreamIdError):
        pool.push(3, X)
    with pytest.raises(srnn.NonFiniteError):
        pool.push(ids[0], np.full((2, I), np.inf))
    assert pool.get_state(ids[0]) == snaps[0]


def test_pool_capacity_and_closed_ids(model):
    pool = model.pool(capacity=3)
    a = pool.open(2)
    with pytest.raises(srnn.CapacityError, match="capacity 3"):
        pool.open(2)
    assert len(pool) == 2  # nothing was opened
    pool.open()
    with pytest.raises(srnn.CapacityError):
        pool.open()
    pool.close(a[0])
    with pytest.raises(srnn.StreamIdError, match="closed"):
        pool.close(a[0])  # a second close raises
    for call in (lambda: pool.step([a[0]], np.zeros((1, model.input_size))),
                 lambda: pool.get_state(a[0]), lambda: pool.reset([a[0]]),
                 lambda: pool.set_state(a[0], pool.get_state(a[1])), lambda: pool.push(a[0], np.zeros((1, model.input_size)))):
        with pytest.raises(srnn.StreamIdError):
            call()
    with pytest.raises(srnn.StreamIdError):
        pool.get_state(-3)
    with pytest.raises(srnn.StreamRNNError, match="capacity"):
        model.pool(capacity=0)


def test_run_errors(model):
    I = model.input_size
    with pytest.raises(srnn.ShapeError, match="rank"):
        model.run(np.zeros(I))
    with pytest.raises(srnn.ShapeError, match="features"):
        model.run(np.zeros((2, 3, I + 1)))
    with pytest.raises(srnn.NonFiniteError):
        model.run(np.full((2, I), np.nan))
    # the first non-finite value, by its index in the array as passed (2-D or 3-D)
    X = np.zeros((3, I))
    X[2, I - 1] = np.inf
    with pytest.raises(srnn.NonFiniteError, match=rf"X: .* inf at index \(2, {I - 1}\) "):
        model.run(X)
    with pytest.raises(srnn.NonFiniteError, match=rf"X: .* inf at index \(1, 2, {I - 1}\) "):
        model.run(np.stack([np.zeros((3, I)), X]))
    with pytest.raises(srnn.ShapeError, match="lengths"):
        model.run(np.zeros((2, 3, I)), lengths=[1, 4])
    with pytest.raises(srnn.ShapeError, match="lengths"):
        model.run(np.zeros((2, 3, I)), lengths=[1])
    with pytest.raises(srnn.ShapeError, match="state"):
        model.run(np.zeros((2, 3, I)), state=np.zeros(model.state_size + 1))
    other = srnn.Model(rand_spec(np.random.default_rng(9), n_rec=1, kinds=("gru",)))
    with pytest.raises(srnn.StreamRNNError, match="state"):
        model.stream().state = other.stream().state
    with pytest.raises(srnn.StreamRNNError, match="dtype"):
        srnn.Model(model.spec, dtype="int8")
    with pytest.raises(srnn.StreamRNNError, match="device"):
        srnn.Model(model.spec, device="tpu")


def test_state_bytes_errors(model):
    s = model.stream()
    blob = s.state_bytes()
    for bad, msg in [(b"garbage", "magic"), (blob[:-4], "bytes"), (blob[:20], "header|bytes")]:
        with pytest.raises(srnn.FormatError, match=msg):
            s.load_state_bytes(bad)
    other = srnn.Model(rand_spec(np.random.default_rng(9), n_rec=1, kinds=("gru",)))
    with pytest.raises(srnn.FormatError, match="different model"):
        other.stream().load_state_bytes(blob)


def test_spec_validation_messages():
    with pytest.raises(srnn.StreamRNNError, match=r"LSTMLayer.W: expected shape \(1, 8, 3\), got \(1, 8, 4\)"):
        srnn.LSTMLayer(3, 2, np.zeros((1, 8, 4)), np.zeros((1, 8, 2)))
    with pytest.raises(srnn.UnsupportedError, match="activation"):
        srnn.Activation("Swish")
    with pytest.raises(srnn.StreamRNNError, match=r"layers\[1\].*expected input size 2"):
        srnn.ModelSpec((srnn.RNNLayer(3, 2, np.ones((1, 2, 3)), np.ones((1, 2, 2))), srnn.DenseLayer(np.ones((1, 5)))))


def test_state_of_any_memory_order_is_accepted():
    model = srnn.Model(rand_spec(np.random.default_rng(3), n_rec=2, exotic=False))
    rng = np.random.default_rng(4)
    X = rng.standard_normal((3, 4, model.input_size))
    _, st = model.run(X, return_state=True)
    ref = model.run(X, state=st)
    for s in (np.asfortranarray(st.data), st.data[::1], np.broadcast_to(st.data[:1], st.data.shape)):
        got = model.run(X, state=s)
        if s.base is not None and s.strides[0] == 0:
            np.testing.assert_allclose(got, model.run(X, state=np.repeat(st.data[:1], 3, 0)))
        else:
            np.testing.assert_allclose(got, ref)


def test_openmp_wait_policy_default_and_user_choice():
    """import streamrnn asks libgomp for passive waiting unless the user chose a wait policy
    or a spin count (README, "Choices where the contract is silent")."""
    import os
    import subprocess
    import sys

    code = "import os, streamrnn; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], env={**env, **extra},  # noqa: E731
                                       capture_output=True, text=True, check=True).stdout.strip()
    assert run({}) == "PASSIVE"
    assert run({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    assert run({"GOMP_SPINCOUNT": "10000"}) == "None"


def test_stream_step_of_other_dtype_is_converted_not_misread(model):
    """The one-stream kernel takes its buffers by address; with the float64 kernel compiled too,
    a float32 stream given float64 x must convert x (and refuse a float64 out), never read the
    float32 weights through a float64 kernel."""
    spec = rand_spec(np.random.default_rng(5), n_rec=1, exotic=False)
    srnn.Model(spec, dtype="float64").stream().step(np.ones(spec.input_size))  # float64 kernel in use
    rng = np.random.default_rng(6)
    x = rng.standard_normal(model.input_size)
    a, b = model.stream(), model.stream()
    y64 = a.step(x)  # float64 x: converted
    y32 = b.step(x.astype(np.float32))
    assert y64.dtype == np.float32
    np.testing.assert_array_equal(y64, y32)
    with pytest.raises(srnn.ShapeError, match="out"):
        a.step(x, out=np.zeros(model.output_size, np.float64))
    assert a.state == b.state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pool_step_reports_the_first_bad_row(dtype):
    """Frames are checked for NaN / Inf in one pass over the whole batch, then row by row only
    where that fails: the error must still name the first bad row, whatever its kind."""
    rng = np.random.default_rng(9)
    model = srnn.Model(rand_spec(rng, n_rec=1, exotic=False), dtype=dtype)
    B, I = 40, model.input_size
    pool = model.pool(capacity=B + 1)
    ids = pool.open(B)
    pool.step(ids, rng.standard_normal((B, I)))
    snaps = [pool.get_state(i) for i in ids]

    def call(ids_, X, exc, msg):
        with pytest.raises(exc, match=msg):
            pool.step(ids_, X)
        assert all(pool.get_state(i) == s for i, s in zip(ids, snaps))

    for val in (np.nan, np.inf, -np.inf):
        for row in (0, 17, B - 1):
            X = rng.standard_normal((B, I))
            X[row, rng.integers(I)] = val
            call(ids, X, srnn.NonFiniteError, f"row {row}")
    X = rng.standard_normal((B, I))
    X[5, 0] = np.nan
    closed = ids.copy()
    closed[9] = B  # never opened
    call(closed, X, srnn.NonFiniteError, "row 5")  # the NaN comes first
    closed = ids.copy()
    closed[2] = B
    call(closed, X, srnn.StreamIdError, "closed")  # the closed id comes first
    X = rng.standard_normal((B, I))
    X[-1, -1] = np.inf
    call(ids, X, srnn.NonFiniteError, f"row {B - 1}")
    Y = pool.step(ids, rng.standard_normal((B, I)))  # a good call still goes through
    assert np.isfinite(Y).all()


def test_out_buffer_errors_say_what_is_wrong():
    """A refused ``out=`` names its dtype, shape and, where that is the fault, its layout (the
    CUDA stream's own check: tests/test_cuda_sim.py, check_stream)."""
    m = srnn.Model(rand_spec(np.random.default_rng(0), n_rec=1, exotic=False, head=False))
    I, O = m.input_size, m.output_size
    assert O > 1  # so that a strided / Fortran-order buffer is not contiguous by accident
    s = m.stream()
    x = np.ones(I)
    cases = [
        (np.zeros(2 * O, np.float32)[::2], rf"got float32 \({O},\), not C-contiguous"),
        (np.zeros(O, np.float64), rf"got float64 \({O},\)$"),
        ([0.0] * O, "got list"),
    ]
    for out, msg in cases:
        with pytest.raises(srnn.ShapeError, match="out: expected a C-contiguous float32 array .*" + msg):
            s.step(x, out=out)
    assert not s.state.data.any()  # nothing was stepped
    pool = m.pool(4)
    ids = pool.open(3)
    with pytest.raises(srnn.ShapeError, match=rf"out: .*got float32 \(3, {O}\), not C-contiguous"):
        pool.step(ids, np.ones((3, I)), out=np.zeros((3, O), np.float32, order="F"))
    assert not any(pool.get_state(i).data.any() for i in ids)


def test_pool_step_of_one_int_id_checks_its_frame_and_buffer():
    """``pool.step(sid, x)`` (one int id): x must be (input_size,) and ``out`` a C-contiguous
    (output_size,) buffer of the model dtype. Before, any x of input_size values was reshaped
    (a (1, 1, I) or (I, 1) frame went through), True stepped stream 1, and a refused ``out`` was
    described by its reshaped (1, n) shape."""
    m = srnn.Model(rand_spec(np.random.default_rng(3), n_rec=1, exotic=False, head=False))
    I, O = m.input_size, m.output_size
    assert O > 1
    pool = m.pool(4)
    ids = pool.open(2)
    lone = m.stream()
    x = np.random.default_rng(4).standard_normal(I)
    for bad, got in ((x.reshape(1, 1, I), rf"\(1, 1, {I}\)"), (x.reshape(I, 1), rf"\({I}, 1\)")):
        with pytest.raises(srnn.ShapeError, match=rf"X: expected shape \({I},\) with one int stream id, got {got}"):
            pool.step(ids[0], bad)
    for out, got in ((np.zeros(2 * O, np.float32)[::2], rf"float32 \({O},\), not C-contiguous"),
                     (np.zeros((1, O), np.float32), rf"float32 \(1, {O}\)$")):
        with pytest.raises(srnn.ShapeError, match=rf"out: expected a C-contiguous float32 array of shape \({O},\), got {got}"):
            pool.step(ids[0], x, out=out)
    with pytest.raises(srnn.StreamIdError, match="got bool"):  # True is not stream 1
        pool.step(True, x)
    assert not any(pool.get_state(i).data.any() for i in ids)  # nothing was stepped
    one = srnn.Model(rand_spec(np.random.default_rng(5), n_rec=1, exotic=False, I=1))
    p1 = one.pool(2)
    i1 = p1.open()
    np.testing.assert_allclose(p1.step(i1, 0.5), one.stream().step(0.5), rtol=1e-5, atol=1e-6)  # a scalar frame, I = 1
    out = np.full(O, np.nan, np.float32)
    y = pool.step(np.int32(ids[1]), x, out=out)
    assert np.shares_memory(y, out)
    np.testing.assert_allclose(out, lone.step(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool.get_state(ids[1]).data, lone.state.data, rtol=1e-5, atol=1e-6)


def test_one_id_calls_take_exactly_one_id(model):
    """get_state / set_state / push act on one stream: a list of two ids, or none, is refused
    (before, the first id was used and the others ignored; an empty list raised IndexError)."""
    pool = model.pool(4)
    a, b = pool.open(2)
    X = np.random.default_rng(8).standard_normal((2, model.input_size))
    snap = model.stream().state
    for call in (lambda ids: pool.get_state(ids), lambda ids: pool.set_state(ids, snap),
                 lambda ids: pool.push(ids, X)):
        for ids, got in (([a, b], rf"got 2: \[{a}, {b}\]"), ([], r"got 0: \[\]")):
            with pytest.raises(srnn.StreamIdError, match=rf"sid: expected one stream id, {got}"):
                call(ids)
    assert not pool.get_state(a).data.any() and not pool.get_state(b).data.any()
    lone = model.stream()
    np.testing.assert_allclose(pool.push(np.array([b], np.int32), X), lone.push(X), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool.get_state([b]).data, lone.state.data, rtol=1e-5, atol=1e-6)


def _live_ids_loop(ids, name, alive):
    """The id rules as a plain loop (what model._live_ids did before it was vectorised)."""
    for r, sid in enumerate(ids):
        if sid < 0 or sid >= alive.shape[0]:
            return f"{name}[{r}]: expected an id of an open stream, got {sid} (unknown)"
        if not alive[sid]:
            return f"{name}[{r}]: expected an open stream id, got {sid} (closed or never opened)"
    if len(set(ids)) != len(ids):
        return f"{name}: expected distinct ids, got repeats in {list(ids)}"
    return None


def test_live_ids_reports_as_a_loop_over_the_ids_would():
    """model._live_ids (the id checks of close / reset / get_state and of graph pools) is
    vectorised; on random id lists with unknown, negative, closed and repeated ids it accepts
    and refuses as the plain loop, naming the same row and id."""
    from streamrnn.model import _live_ids

    rng = np.random.default_rng(17)
    for trial in range(400):
        cap = int(rng.integers(1, 12))
        alive = (rng.random(cap) < 0.7).astype(np.uint8 if trial % 2 else bool)
        ids = rng.integers(-2, cap + 2, size=int(rng.integers(0, 6))).astype(np.int64)
        want = _live_ids_loop(ids.tolist(), "ids", alive)
        if want is None:
            np.testing.assert_array_equal(_live_ids(ids, "ids", alive), ids)
        else:
            with pytest.raises(srnn.StreamIdError) as e:
                _live_ids(ids, "ids", alive)
            assert str(e.value) == want, (ids, alive)


def test_load_of_a_files_contents_says_so(tmp_path):
    """srnn.load(data) with a file's contents (bytes) instead of its path raised FileNotFoundError
    whose message was the whole contents; now StreamRNNError saying what it got and what to do.
    A short bytes path is a path (its suffix was compared as bytes: "expected a file ending in")."""
    with pytest.raises(srnn.StreamRNNError, match=r"path: expected a file path, got 5000 bytes of data"):
        srnn.load(b"PK\x03\x04" + bytes(4996))
    with pytest.raises(FileNotFoundError):
        srnn.load(str(tmp_path / "missing.srnn").encode())
    from streamrnn.benchutil import random_lstm_spec

    path = str(tmp_path / "m.srnn")
    srnn.Model(random_lstm_spec(3, 4, 2, seed=1)).save(path)
    assert srnn.load(path.encode()).input_size == 3
