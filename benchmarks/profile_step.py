"""Where one step's time goes: the compiled operations of a cell's forward or training step, timed.

Compiles ``jax.vmap(recurrax.Recurrent(cell))`` over a (B, T, H) float32 batch, forward
(``--mode fwd``) or value and gradient of the summed outputs with respect to the parameters
(``--mode train``, as ``bench_speed.py`` times them), runs it ``--calls`` times under
``jax.profiler`` and adds up the time of each operation XLA's CPU runtime executed (its thunks,
named after the instructions of the optimised HLO module). Each row: milliseconds per call, how
many times per call the operation ran (200 for an operation inside a loop of 200 steps), and
what it is: its shape and the JAX operation it came from (``while/body`` for loop steps,
``transpose(...)`` for the backward pass). Loops are listed with the time of everything in them,
so the rows add up to more than the call.

    python benchmarks/profile_step.py --cell lstm --batch 32 --length 200 --hidden 128
    python benchmarks/profile_step.py --cell gru --batch 256 --mode fwd --top 15
    python benchmarks/profile_step.py --cell lstm --malloc retain   # the process keeps freed memory

It profiles XLA's CPU code, so JAX runs on the CPU here even on a machine with a GPU. Times under
the profiler run a few percent longer than without it; compare rows within a run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

_RUNTIME_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "CommonPjRt", "$")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="lstm", help="a registry name (lstm, gru, elman, ...) or class name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size, and input size")
    parser.add_argument("--mode", choices=("train", "fwd"), default="train")
    parser.add_argument("--calls", type=int, default=5, help="profiled calls (after compiling and 3 warm-up calls)")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--malloc", choices=("default", "retain"), default="default",
                        help="retain: keep freed memory in this process (recurrax.allocator.retain_freed_memory)")
    args = parser.parse_args(argv)
    for name in ("batch", "length", "hidden", "calls", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args


def _instructions(hlo_text: str) -> dict[str, str]:
    """Instruction name -> "shape  op_name" from an optimised HLO module's text."""
    described = {}
    pattern = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+)")
    for line in hlo_text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        source = re.sub(r"^jit\([^)]*\)/", "", op_name.group(1).split(";")[0]) if op_name else ""
        shape = "a loop" if match.group(2).startswith("(") and " while(" in line else match.group(2)
        described[match.group(1)] = f"{shape}, {source}" if source else shape
    return described


def _thunk_times(trace_dir: str, calls: int) -> tuple[dict[str, float], dict[str, float]]:
    """(milliseconds per call, executions per call) of each operation in the profile's trace."""
    (path,) = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    micros, counts = collections.defaultdict(float), collections.Counter()
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(_RUNTIME_EVENTS):
            micros[event["name"]] += event.get("dur", 0)
            counts[event["name"]] += 1
    return ({n: t / calls / 1e3 for n, t in micros.items()}, {n: c / calls for n, c in counts.items()})


def main(argv=None) -> None:
    args = _parse_args(argv)
    os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported: the events read are XLA's CPU runtime's
    if args.malloc == "retain":
        import recurrax.allocator

        if not recurrax.allocator.retain_freed_memory():
            sys.exit("--malloc retain: this C library's allocator cannot be set (glibc on Linux only)")
    import jax

    import recurrax

    if jax.default_backend() != "cpu":
        sys.exit(f"profile_step.py reads XLA's CPU runtime events; JAX already runs on {jax.default_backend()}")
    try:
        cell_class = recurrax.get_cell_class(args.cell)
    except ValueError as error:
        sys.exit(f"profile_step.py: {error}")
    cell = cell_class(args.hidden, args.hidden, key=jax.random.key(0))
    layer = recurrax.Recurrent(cell)
    xs = jax.random.normal(jax.random.key(1), (args.batch, args.length, args.hidden))

    def forward(layer, xs):
        return jax.vmap(layer)(xs)

    step = jax.value_and_grad(lambda layer, xs: forward(layer, xs).sum()) if args.mode == "train" else forward
    compiled = jax.jit(step).lower(layer, xs).compile()
    for _ in range(3):
        jax.block_until_ready(compiled(layer, xs))
    wall = []
    for _ in range(args.calls):
        start = time.perf_counter()
        jax.block_until_ready(compiled(layer, xs))
        wall.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.calls):
                jax.block_until_ready(compiled(layer, xs))
        per_call, counts = _thunk_times(trace_dir, args.calls)
    described = _instructions(compiled.as_text())
    print(f"{type(cell).__name__} {args.mode}, B={args.batch} T={args.length} H={args.hidden}, malloc {args.malloc}: "
          f"{statistics.median(wall) * 1e3:.2f} ms per call without the profiler (median of {args.calls})")
    print(f"{'ms/call':>9} {'runs/call':>9}  operation  (shape, source)")
    for name, ms in sorted(per_call.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{ms:9.3f} {counts[name]:9.0f}  {name}  ({described.get(name, '')})")


if __name__ == "__main__":
    main()
