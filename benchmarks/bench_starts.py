"""Episode starts: a batch of packed sequences on the native loops, XLA's fused loops and the plain scan.

A sequence that packs several episodes resets its state at each episode's first step (``starts``:
the state becomes ``reset_state`` before the step). This script measures, in one process,
contenders alternating round after round, ``jax.vmap`` of ``recurrax.scan(cell, x, starts=s)``
over a (B, T, H) float32 batch (input size H) whose starts are drawn with probability ``--start``
per step: ``native`` the library's default (the native loops, :mod:`recurrax.native`, where they
are built), ``xla`` the fused scan on XLA's loops (``recurrax.native.disabled()``), ``plain`` the
plain ``lax.scan`` of the cell's step (``recurrax.fused.disabled()``). ``train`` is the gradient of
the sum of the squared outputs with respect to the parameters, ``fwd`` the outputs alone. It prints
the median ms per call and the ratios native / xla and native / plain (below 1: native is faster).
The contenders' values and gradients agree (checked). LinearRecurrence has no fused scan on XLA's
loops: its ``xla`` row is its plain scan.

    python benchmarks/bench_starts.py                              # every classic cell, B=32, T=200, H=128
    python benchmarks/bench_starts.py --cells lstm --batch 8 --start 0.1 --malloc retain
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import machine
from alternating import median_call_seconds

CELLS = {"linear": "LinearRecurrence", "elman": "Elman", "forget-elman": "ForgetElman", "mgu": "MGU", "gru": "GRU",
         "lstm": "LSTM"}
CONTENDERS = ("native", "xla", "plain")


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="all", help=f"some of {', '.join(CELLS)}, separated by commas, or all (default)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--hidden", type=int, default=128, help="hidden size, and input size (default 128)")
    p.add_argument("--start", type=float, default=0.02,
                   help="probability that a step starts an episode (default 0.02: episodes of about 50 steps)")
    p.add_argument("--rounds", type=int, default=5, help="measurements per contender (default 5)")
    p.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement at least (default 0.2)")
    p.add_argument("--malloc", choices=("default", "retain"), default="default",
                   help="retain: keep freed memory in this process (recurrax.allocator.retain_freed_memory)")
    args = p.parse_args(argv)
    args.cells = list(CELLS) if args.cells == "all" else [c for c in args.cells.split(",") if c]
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown or not args.cells:
        p.error(f"--cells: unknown {', '.join(unknown) or 'nothing'}; known: {', '.join(CELLS)}")
    if min(args.batch, args.length, args.hidden, args.rounds) < 1 or not 0.0 <= args.start <= 1.0:
        p.error("--batch, --length, --hidden and --rounds must be positive, --start a probability")
    return args


def main(argv=None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.malloc == "retain":
        import recurrax.allocator

        recurrax.allocator.retain_freed_memory()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import recurrax
    import recurrax.fused
    import recurrax.native

    shape = (args.batch, args.length, args.hidden)
    xs = jax.random.normal(jax.random.key(1), shape)
    starts = jax.random.bernoulli(jax.random.key(2), args.start, shape[:2])
    contexts = {"native": contextlib.nullcontext, "xla": recurrax.native.disabled, "plain": recurrax.fused.disabled}
    print(f"# {machine.describe()}; episode starts with probability {args.start} per step")
    print(f"{'cell':16s} {'B':>4s} {'T':>5s} {'H':>4s} {'mode':5s} {'native':>8s} {'xla':>8s} {'plain':>8s}"
          f" {'n/xla':>6s} {'n/plain':>7s}")
    for name in args.cells:
        cell = getattr(recurrax, CELLS[name])(args.hidden, args.hidden, key=jax.random.key(0))

        def layer(c, x):
            return jax.vmap(lambda x, s: recurrax.scan(c, x, starts=s)[0])(x, starts)

        def loss(c, x):
            return jnp.sum(layer(c, x) ** 2)

        calls, answers = {}, {}
        for contender in CONTENDERS:
            with contexts[contender]():  # traced here: the switches are read while tracing
                compiled = {"train": jax.jit(jax.grad(loss)).lower(cell, xs).compile(),
                            "fwd": jax.jit(layer).lower(cell, xs).compile()}
            for mode, f in compiled.items():
                calls[(contender, mode)] = lambda f=f: jax.block_until_ready(f(cell, xs))
                answers[(contender, mode)] = jax.tree_util.tree_leaves(f(cell, xs))
        for (contender, mode), leaves in answers.items():
            for got, want in zip(leaves, answers[("plain", mode)]):
                scale = float(np.max(np.abs(want))) or 1.0
                if not np.allclose(got, want, rtol=1e-3, atol=1e-4 * scale):
                    raise SystemExit(f"{CELLS[name]} {mode}: {contender} disagrees with the plain scan")
        seconds = median_call_seconds(calls, rounds=args.rounds, min_time=args.min_time)
        for mode in ("fwd", "train"):
            native, xla, plain = (seconds[(c, mode)] * 1e3 for c in CONTENDERS)
            print(f"{CELLS[name]:16s} {args.batch:4d} {args.length:5d} {args.hidden:4d} {mode:5s} {native:8.2f}"
                  f" {xla:8.2f} {plain:8.2f} {native / xla:6.2f} {native / plain:7.2f}")


if __name__ == "__main__":
    main()
