"""The ``streamrnn`` command line: inspect, convert, bench, stream, demo.

Exit codes: 0 success; 1 runtime failure (a bug, a missing optional dependency, no GPU...);
2 usage error or bad input (bad arguments, a missing / unreadable / unsupported model file, a bad
input frame). Errors are one line on stderr (``streamrnn: error: ...``); ``-v`` adds the
traceback. Results go to stdout, log messages (``-v``: info, ``-vv``: debug) to stderr.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from typing import Any, Sequence

import numpy as np

log = logging.getLogger("streamrnn.cli")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

DEMO_SIZES = dict(input_size=8, hidden_size=32, output_size=4)  # `streamrnn demo`
BENCH_DEMO_SIZES = dict(input_size=32, hidden_size=32, output_size=16)  # `streamrnn bench --demo`


class UsageError(Exception):
    """Bad command-line input (exit code 2)."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _parse_arch(s: str | None) -> Any:
    if s is None:
        return None
    s = s.strip()
    if s.startswith("{"):
        try:
            return json.loads(s)
        except json.JSONDecodeError as e:
            raise UsageError(f"--arch: expected a kind (lstm, gru, rnn_tanh, rnn_relu) or a JSON object, got {s!r} ({e})") from None
    return s


def _parse_state_map(s: str | None) -> dict[str, str] | None:
    if not s:
        return None
    out = {}
    for part in s.split(","):
        if "=" not in part:
            raise UsageError(f"--state-map: expected IN=OUT pairs separated by commas, got {s!r}")
        a, b = part.split("=", 1)
        out[a.strip()] = b.strip()
    return out


def _load(args: argparse.Namespace, *, dtype: str | None = None, device: str | None = None):
    import streamrnn as srnn

    t0 = time.perf_counter()
    model = srnn.load(
        args.model,
        dtype=dtype or getattr(args, "dtype", None) or "float32",
        device=device or "cpu",
        arch=_parse_arch(getattr(args, "arch", None)),
        state_map=_parse_state_map(getattr(args, "state_map", None)),
    )
    log.info("loaded %s in %.3f s: %s", args.model, time.perf_counter() - t0, repr(model))
    return model


def _layer_info(i: int, layer) -> dict[str, Any]:
    d: dict[str, Any] = {
        "index": i,
        "type": type(layer).__name__,
        "description": layer.describe(),
        "input_size": int(layer.input_size),
        "output_size": int(layer.output_size),
        "parameters": int(layer.num_params()),
        "streamable": bool(layer.streamable),
    }
    hyper = layer.hyper()
    hyper.pop("type", None)
    d["hyper"] = hyper
    if hasattr(layer, "hidden_size"):
        d["state_floats"] = (layer.rec_size + (layer.hidden_size if type(layer).__name__ == "LSTMLayer" else 0)) * layer.num_directions
    return d


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


_RUNS_ALL = "  runs: model.run (offline), model.stream().step (one stream), model.pool().step (many streams)"


def _num_params(model) -> int:
    """Parameters of a chain model (its spec) or of a graph model (its float initializers)."""
    return int(model.spec.num_params() if model.spec is not None else model.num_params())


def _inspect_graph(args: argparse.Namespace, model) -> int:
    """``inspect`` of a graph model (an ONNX graph that is not a chain of layers: no spec)."""
    S, isz, n = int(model.state_size), model.dtype.itemsize, _num_params(model)
    why = model.not_streamable_because
    info = {
        "path": os.fspath(args.model),
        "name": model.graph.name,
        "kind": "onnx graph model",
        "input_size": model.input_size,
        "output_size": model.output_size,
        "parameters": n,
        "weight_bytes": n * isz,
        "state_floats_per_stream": S,
        "state_bytes_per_stream": S * isz,
        "dtype": str(model.dtype),
        "streamable": why is None,
        "not_streamable_because": why,
        "supports": {"run": True, "stream": why is None, "pool": why is None},
        "frame_step": model.frame_step,
        "nodes": [{"op": n.op_type, "name": n.name} for n in model.graph.nodes],
        "recurrent_nodes": [
            {"name": r.node.name, "op": r.node.op_type, "state_offset": int(r.offset), "state_floats": int(r.size),
             "layer": _layer_info(0, r.model.spec.layers[0])}
            for r in model.plan.rec
        ],
        "states_fed_back": [
            {"input": f.name, "output": f.out, "state_offset": int(f.offset), "state_floats": int(f.size)}
            for f in model.plan.feedback
        ],
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    print(model)
    print(f"  weights: {_fmt_bytes(info['weight_bytes'])} as {model.dtype}   "
          f"state per stream: {S} floats ({_fmt_bytes(S * isz)})")
    if why is None:
        print(_RUNS_ALL)
    else:
        print(f"  runs: model.run (offline) only; stream() and pool() refuse this graph: {why}")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    model = _load(args)
    spec = model.spec
    if spec is None:
        return _inspect_graph(args, model)
    offline = [l.describe() for l in spec.layers if not l.streamable]
    weight_bytes = sum(a.size for a in spec.tensors().values()) * model.dtype.itemsize
    info = {
        "path": os.fspath(args.model),
        "name": spec.name,
        "input_size": model.input_size,
        "output_size": model.output_size,
        "parameters": int(spec.num_params()),
        "weight_bytes": int(weight_bytes),
        "state_floats_per_stream": int(spec.state_size()),
        "state_bytes_per_stream": int(spec.state_size() * model.dtype.itemsize),
        "dtype": str(model.dtype),
        "streamable": bool(spec.streamable),
        "offline_only_layers": offline,
        "supports": {"run": True, "stream": bool(spec.streamable), "pool": bool(spec.streamable)},
        "layers": [_layer_info(i, l) for i, l in enumerate(spec.layers)],
        "state_slots": [
            {"layer": i, "direction": d, "kind": k, "offset": off, "size": n}
            for (i, d, k, off, n) in spec.state_slots()
        ],
        "metadata": spec.metadata,
    }
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return EXIT_OK
    print(spec.summary())
    print(f"  weights: {_fmt_bytes(weight_bytes)} as {model.dtype}   state per stream: "
          f"{spec.state_size()} floats ({_fmt_bytes(spec.state_size() * model.dtype.itemsize)})")
    if spec.streamable:
        print(_RUNS_ALL)
    else:
        print("  runs: model.run (offline) only; stream() and pool() refuse this model because of:")
        for d in offline:
            print(f"    {d}  (needs the future of the sequence)")
    return EXIT_OK


def cmd_convert(args: argparse.Namespace) -> int:
    from .fileformat import save_srnn

    dt = np.dtype(args.dtype)
    model = _load(args, dtype="float32")  # the spec keeps the file's weights; cast below
    out = args.output
    if not out.lower().endswith(".srnn"):
        raise UsageError(f"-o/--output: expected a path ending in .srnn, got {out!r}")
    if model.spec is None:  # a graph model: UnsupportedError, which says why and what to keep
        model.save(out)
    t0 = time.perf_counter()
    save_srnn(model.spec.astype(dt), out)  # what model.save does, with the weights cast to --dtype
    size = os.path.getsize(out)
    log.info("wrote %s in %.3f s", out, time.perf_counter() - t0)
    print(f"wrote {out}: {_fmt_bytes(size)}, {model.spec.num_params()} parameters, {dt}")
    return EXIT_OK


def _demo_model(sizes: dict[str, int], seed: int, dtype: str = "float32"):
    import streamrnn as srnn

    from .benchutil import random_lstm_spec

    spec = random_lstm_spec(**sizes, seed=seed, dtype=np.dtype(dtype), name="demo")
    return srnn.Model(spec, dtype=dtype)


def cmd_demo(args: argparse.Namespace) -> int:
    sizes = dict(input_size=args.input_size, hidden_size=args.hidden_size, output_size=args.output_size)
    for k, v in sizes.items():
        if v <= 0:
            raise UsageError(f"--{k.replace('_', '-')}: expected a positive int, got {v}")
    model = _demo_model(sizes, args.seed)
    out = args.output
    if not out.lower().endswith(".srnn"):
        raise UsageError(f"-o/--output: expected a path ending in .srnn, got {out!r}")
    model.save(out)
    print(f"wrote {out}: random LSTM (input {sizes['input_size']}, hidden {sizes['hidden_size']}) "
          f"+ Dense {sizes['output_size']}, {model.spec.num_params()} parameters")
    print(f"try:  streamrnn inspect {out}  |  streamrnn bench {out}  |  "
          f"streamrnn stream {out} --input frames.csv")
    return EXIT_OK


def bench_model(model, *, streams: int = 1, steps: int = 10_000, warmup: int | None = None,
                progress: bool | None = None, seed: int = 0) -> dict[str, Any]:
    """Latency percentiles of ``stream.step(x, out=y)`` (streams == 1) or ``pool.step(ids, X, out=Y)``.

    Returns a JSON-able dict. Used by ``streamrnn bench``; reusable from Python.
    """
    from .benchutil import summarize, time_calls, warm_up

    rng = np.random.default_rng(seed)
    I, O = model.input_size, model.output_size
    if streams == 1:
        s = model.stream()
        x = rng.standard_normal(I).astype(model.dtype)
        y = np.empty(O, model.dtype)

        def fn(step=s.step, x=x, y=y):
            step(x, out=y)

        what = "stream.step(x, out=y)"
    else:
        pool = model.pool(capacity=streams)
        ids = pool.open(streams)
        rng.shuffle(ids)
        X = rng.standard_normal((streams, I)).astype(model.dtype)
        Y = np.empty((streams, O), model.dtype)

        def fn(step=pool.step, ids=ids, X=X, Y=Y):
            step(ids, X, out=Y)

        what = f"pool.step(ids, X, out=Y) with {streams} ids in random order"
    t0 = time.perf_counter()
    if warmup is None:
        est = warm_up(fn, min_calls=20, min_time_s=0.2)
    else:
        est = warm_up(fn, min_calls=max(int(warmup), 1), min_time_s=0.0, max_calls=max(int(warmup), 1))
    log.info("warm-up %.2f s, about %.2f us per call", time.perf_counter() - t0, est / 1e3)
    show = progress if progress is not None else (True if est * steps > 3e9 else False)
    if show and not sys.stderr.isatty():
        show = False
    t0 = time.perf_counter()
    ns = time_calls(fn, steps, progress=show, desc="bench")
    wall = time.perf_counter() - t0
    lat = summarize(ns)
    total_s = float(ns.sum()) / 1e9
    return {
        "method": what,
        "model": {"input_size": I, "output_size": O, "parameters": _num_params(model),
                  "state_floats": int(model.state_size), "dtype": str(model.dtype)},
        "device": model.device,
        "streams": int(streams),
        "steps": int(steps),
        "latency_us": {k: v for k, v in lat.items() if k != "n"},
        "latency_per_stream_us": float(lat["p50_us"]) / streams,
        "calls_per_s": steps / total_s if total_s else None,
        "throughput_stream_steps_per_s": steps * streams / total_s if total_s else None,
        "wall_s": wall,
    }


def _bench_compare(extra: list[str]) -> int:
    """``streamrnn bench --compare [ARGS]``: the side-by-side suite of the source tree."""
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "latency.py"
    if not script.is_file():
        raise UsageError(f"--compare: expected the comparison suite at {script} (a source checkout "
                         "installed with `pip install -e .[bench]`), got no such file")
    return subprocess.call([sys.executable, str(script), *extra])


def cmd_bench(args: argparse.Namespace) -> int:
    from .benchutil import fmt_us, machine_info

    if args.compare is not None:
        if args.model or args.demo:
            raise UsageError("--compare runs its own models: give no MODEL and no --demo")
        return _bench_compare(args.compare)
    if args.demo and args.model:
        raise UsageError("give either MODEL or --demo, not both")
    if not args.demo and not args.model:
        raise UsageError("expected a MODEL path (or --demo for a built-in random LSTM)")
    if args.streams < 1:
        raise UsageError(f"--streams: expected a positive int, got {args.streams}")
    if args.steps < 1:
        raise UsageError(f"--steps: expected a positive int, got {args.steps}")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup: expected a non-negative int, got {args.warmup}")
    if args.threads is not None:
        import numba

        if not 1 <= args.threads <= numba.config.NUMBA_NUM_THREADS:
            raise UsageError(f"--threads: expected 1..{numba.config.NUMBA_NUM_THREADS} "
                             f"(NUMBA_NUM_THREADS), got {args.threads}")
        numba.set_num_threads(args.threads)
    if args.demo:
        if args.device != "cpu":
            import streamrnn as srnn

            model = srnn.Model(_demo_model(BENCH_DEMO_SIZES, 0).spec, dtype=args.dtype, device=args.device)
        else:
            model = _demo_model(BENCH_DEMO_SIZES, 0, args.dtype)
        name = "demo: LSTM(input 32, hidden 32) + Dense 16"
    else:
        model = _load(args, device=args.device)
        name = os.fspath(args.model)
    if not model.streamable:
        raise UsageError(f"{name}: has a reverse or bidirectional layer, so it cannot stream; "
                         "bench measures streaming (stream.step / pool.step)")
    res = bench_model(model, streams=args.streams, steps=args.steps, warmup=args.warmup,
                      progress=None if not args.no_progress else False)
    res["name"] = name
    try:
        import numba

        res["threads"] = numba.get_num_threads()
    except Exception:  # pragma: no cover
        pass
    res["machine"] = machine_info(extra_packages=("numpy", "numba"))
    if args.json:
        print(json.dumps(res, indent=2))
        return EXIT_OK
    lat = res["latency_us"]
    print(f"{name}  ({res['device']}, {res['model']['dtype']}, {res.get('threads', '?')} numba thread(s), "
          f"{res['machine']['cpu']})")
    print(f"  {res['method']}: {res['steps']} calls after warm-up")
    print(f"  latency us/call   p50 {fmt_us(lat['p50_us'])}   p99 {fmt_us(lat['p99_us'])}   "
          f"p99.9 {fmt_us(lat['p99_9_us'])}   mean {fmt_us(lat['mean_us'])}   max {fmt_us(lat['max_us'])}")
    if res["streams"] > 1:
        print(f"  per stream-step    {fmt_us(res['latency_per_stream_us'])} us (p50 / streams)")
    print(f"  throughput        {res['throughput_stream_steps_per_s']:,.0f} stream-steps/s")
    return EXIT_OK


_SPLIT = re.compile(r"[,\s;]+")


def _csv_frames(f, name: str, n: int):
    """Yield (line_number, frame) from a text stream; blank lines and '#' comments skipped."""
    for lineno, line in enumerate(iter(f.readline, ""), start=1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        parts = [p for p in _SPLIT.split(s) if p]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            bad = next(p for p in parts if not _is_float(p))
            raise UsageError(f"{name}:{lineno}: expected {n} comma-separated numbers, got {bad!r} in {s[:60]!r}") from None
        if len(vals) != n:
            raise UsageError(f"{name}:{lineno}: expected {n} values (the model's input_size), got {len(vals)}")
        yield lineno, vals


def _is_float(p: str) -> bool:
    try:
        float(p)
        return True
    except ValueError:
        return False


def cmd_stream(args: argparse.Namespace) -> int:
    from .errors import StreamRNNError

    src = args.input
    fmt = args.format or ("npy" if src != "-" and src.lower().endswith(".npy") else "csv")
    name = "<stdin>" if src == "-" else src
    if src != "-" and not os.path.exists(src):
        raise FileNotFoundError(src)
    model = _load(args, device=args.device)
    if not model.streamable:
        raise UsageError(f"{args.model}: has a reverse or bidirectional layer, so it cannot stream "
                         "(use model.run offline)")
    s = model.stream()
    I, O = model.input_size, model.output_size
    y = np.empty(O, model.dtype)
    digits = 9 if model.dtype == np.float32 else 17
    fmt_line = ",".join([f"{{:.{digits}g}}"] * O) + "\n"
    out = sys.stdout
    n = 0
    t0 = time.perf_counter()

    def emit():
        out.write(fmt_line.format(*y.tolist()))
        out.flush()

    if fmt == "npy":
        try:
            if src == "-":
                import io

                X = np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False)
            else:
                X = np.load(src, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UsageError(f"{name}: expected a .npy array of shape (T, {I}), could not read it ({e})") from None
        if X.ndim == 1 and X.shape[0] == I:
            X = X[None]
        if X.ndim != 2 or X.shape[1] != I or X.dtype.kind not in "fiu":
            raise UsageError(f"{name}: expected a numeric .npy array of shape (T, {I}), got {X.dtype} {X.shape}")
        X = np.ascontiguousarray(X, dtype=model.dtype)
        for t in range(X.shape[0]):
            try:
                s.step(X[t], out=y)
            except StreamRNNError as e:
                raise UsageError(f"{name}: frame {t}: {e}") from None
            emit()
            n += 1
    else:
        f = sys.stdin if src == "-" else open(src, encoding="utf-8", errors="replace")
        try:
            x = np.empty(I, model.dtype)
            for lineno, vals in _csv_frames(f, name, I):
                x[:] = vals
                try:
                    s.step(x, out=y)
                except StreamRNNError as e:
                    raise UsageError(f"{name}:{lineno}: {e}") from None
                emit()
                n += 1
        finally:
            if f is not sys.stdin:
                f.close()
    dt = time.perf_counter() - t0
    log.info("streamed %d frames in %.3f s", n, dt)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                   help="log progress and timings to stderr (-vv: debug; errors get a traceback)")


def _loader_opts(p: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    if dtype:
        p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="precision of weights, state and outputs (default float32)")
    p.add_argument("--arch", default=None,
                   help="PyTorch checkpoints: kind of the recurrent modules (lstm, gru, rnn_tanh, rnn_relu) "
                        "or a JSON object {prefix: kind}")
    p.add_argument("--state-map", default=None, metavar="IN=OUT[,IN=OUT]",
                   help="ONNX: pair state inputs with state outputs, e.g. h0=hn,c0=cn")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="streamrnn",
        description="Stateful per-frame inference of LSTM / GRU / RNN models (ONNX, PyTorch, .srnn).",
        epilog="Start here:  streamrnn demo -o demo.srnn && streamrnn bench demo.srnn",
    )
    parser.add_argument("--version", action="version", version=f"streamrnn {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress and timings to stderr (-vv: debug; errors get a traceback)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("inspect", help="layers, sizes, state size, parameter count",
                       description="Show a model's layers, sizes, state size, parameter count, and "
                                   "whether it streams or runs offline only.")
    p.add_argument("model", metavar="MODEL", help=".onnx, .pt/.pth/.bin/.ckpt, .safetensors or .srnn")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    _loader_opts(p)
    _common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("convert", help="convert a model to streamrnn's .srnn format",
                       description="Load MODEL (.onnx / .pt / .safetensors / .srnn) and write it as .srnn "
                                   "(memory-mapped, no pickle; loads fast).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-o", "--output", required=True, metavar="OUT.srnn", help="output path (.srnn)")
    _loader_opts(p)
    _common(p)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("bench", help="latency percentiles and throughput of streaming steps",
                       description="Time stream.step(x, out=y) (--streams 1) or pool.step(ids, X, out=Y) "
                                   "(--streams N) one call at a time after a warm-up; report p50 / p99 / "
                                   "p99.9 latency and stream-steps per second.")
    p.add_argument("model", metavar="MODEL", nargs="?", help="model file (or --demo)")
    p.add_argument("--demo", action="store_true",
                   help="benchmark a built-in random LSTM (input 32, hidden 32) + Dense 16 head")
    p.add_argument("--streams", type=int, default=1, metavar="N", help="streams advanced per call (default 1)")
    p.add_argument("--steps", type=int, default=10_000, metavar="T", help="timed calls (default 10000)")
    p.add_argument("--warmup", type=int, default=None, metavar="K",
                   help="untimed calls first (default: at least 20 calls and 0.2 s)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the model runs (default cpu; cuda: a GPU through numba.cuda)")
    p.add_argument("--threads", type=int, default=None, help="numba threads (pool.step over streams)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    p.add_argument("--compare", nargs=argparse.REMAINDER, metavar="ARGS", default=None,
                   help="run the side-by-side suite instead (bench/latency.py of the source tree: "
                        "streamrnn vs onnxruntime vs PyTorch, every section, results under "
                        "bench/results); ARGS go to it, e.g. --compare --quick --sections latency")
    _loader_opts(p)
    _common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("stream", help="real-time: read frames, print outputs as they come",
                       description="Step every input frame through one stream and print each output as a "
                                   "CSV line at once (flushed). Frames: CSV lines of input_size numbers "
                                   "(commas or spaces; blank lines and '#' comments skipped) from a file "
                                   "or stdin, or a .npy array (T, input_size).")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("-i", "--input", default="-", metavar="FILE|-", help="frames file, or - for stdin (default)")
    p.add_argument("--format", choices=("csv", "npy"), default=None,
                   help="input format (default: npy for *.npy files, else csv)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the stream runs (default cpu; cuda: a GPU through numba.cuda)")
    _loader_opts(p)
    _common(p)
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("demo", help="write a small random model to try the other commands",
                       description="Write a random LSTM (input 8, hidden 32) + Dense 4 model as .srnn, so "
                                   "there is a model to run at once: streamrnn demo -o demo.srnn && "
                                   "streamrnn bench demo.srnn")
    p.add_argument("-o", "--output", default="demo.srnn", metavar="OUT.srnn", help="default demo.srnn")
    p.add_argument("--input-size", type=int, default=DEMO_SIZES["input_size"])
    p.add_argument("--hidden-size", type=int, default=DEMO_SIZES["hidden_size"])
    p.add_argument("--output-size", type=int, default=DEMO_SIZES["output_size"])
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=cmd_demo)
    return parser


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger("streamrnn")
    for h in list(root.handlers):
        if getattr(h, "_streamrnn_cli", False):
            root.removeHandler(h)
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    h._streamrnn_cli = True  # type: ignore[attr-defined]
    root.addHandler(h)
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 failure, 2 usage / bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0) if isinstance(e.code, int) or e.code is None else EXIT_USAGE
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    verbose = int(getattr(args, "verbose", 0) or 0)
    _setup_logging(verbose)
    from .errors import StreamRNNError

    def fail(code: int, msg: str) -> int:
        if verbose:
            log.exception("%s", msg)
        sys.stderr.write(f"streamrnn {args.command}: error: {msg}\n")
        return code

    try:
        return int(args.func(args))
    except UsageError as e:
        return fail(EXIT_USAGE, str(e))
    except FileNotFoundError as e:
        return fail(EXIT_USAGE, f"no such file: {e.filename or e}")
    except StreamRNNError as e:
        return fail(EXIT_USAGE, f"{type(e).__name__}: {e}")
    except IsADirectoryError as e:
        return fail(EXIT_USAGE, f"is a directory: {e.filename or e}")
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as Unix tools do
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception as e:  # runtime failure: one line, traceback with -v
        return fail(EXIT_FAIL, f"{type(e).__name__}: {e}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
