"""Pieces of time: a cell's step with its sequences cut into 1, 2, 4, ... pieces, side by side.

The fused scan cuts a batch's sequences into consecutive pieces of time, each with loops of its own
(:func:`recurrax.fused.time_pieces`), so that the matrix products outside one piece's loops run on
the other cores while the loop of the piece beside it runs. The count it chooses was measured on a
2-core CPU, and what a count gains depends on the cell and on where XLA puts memory; on another
machine another count may pay. This script measures, in one process, contenders alternating round
after round, the step of ``jax.vmap(recurrax.Recurrent(cell))`` over a (B, T, H) float32 batch
(input size H), traced under ``recurrax.fused.pieces(n)`` for each count n: ``train`` is the value
and gradient of the summed outputs with respect to the parameters (as ``bench_speed.py`` times
it), ``fwd`` the forward alone. It prints the median time per call of each count and its ratio to
the count the library chooses (marked ``*``, always measured). The values and gradients of all
counts agree (checked). Where an LSTM runs on the native loops (:mod:`recurrax.native`, which use
every core themselves) the library's count is one piece.

    python benchmarks/bench_pieces.py                                   # LSTM and GRU, B=32, T=200, H=128
    python benchmarks/bench_pieces.py --cells all --malloc retain       # every cell with a fused scan
    python benchmarks/bench_pieces.py --cells mgu --batch 64 --length 400 --pieces 1,4,8,12 --mode fwd

To run a program with another count: ``with recurrax.fused.pieces(n): ...`` around its tracing.
"""

from __future__ import annotations

import argparse
import os
import sys

import machine
from alternating import median_call_seconds
from arguments import positive_ints

FUSED_CELLS = ["elman", "forget-elman", "mgu", "gru", "lstm"]


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="lstm,gru",
                   help="registry names (lstm, forget-elman, ...), or all: every cell with a fused scan (default lstm,gru)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--hidden", type=int, default=128, help="hidden size, and input size (default 128)")
    p.add_argument("--pieces", default="1,2,4,6,8", help="counts of pieces to measure (default 1,2,4,6,8)")
    p.add_argument("--mode", choices=("train", "fwd"), default="train")
    p.add_argument("--rounds", type=int, default=7, help="measurements per count (default 7)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement at least (default 0.3)")
    p.add_argument("--malloc", choices=("default", "retain"), default="default",
                   help="retain: keep freed memory in this process (recurrax.allocator.retain_freed_memory)")
    args = p.parse_args(argv)
    args.pieces = positive_ints(args.pieces, "pieces")
    args.cells = FUSED_CELLS if args.cells == "all" else [c for c in args.cells.split(",") if c]
    if min(args.batch, args.length, args.hidden, args.rounds) < 1 or not args.cells:
        raise SystemExit("--cells must name a cell; --batch, --length, --hidden and --rounds must be positive")
    return args


def main(argv=None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if args.malloc == "retain":
        import recurrax.allocator

        if not recurrax.allocator.retain_freed_memory():
            raise SystemExit("--malloc retain: this C library's allocator cannot be set (glibc on Linux only)")
    import jax
    import numpy as np

    import recurrax
    import recurrax.fused

    header = f"{'cell':<12} {'B':>4} {'T':>5} {'H':>4} {'mode':<5} {'pieces':>6} {'ms':>8} {'/chosen':>7}"
    print(header)
    print("-" * len(header))
    for name in args.cells:
        try:
            cell = recurrax.get_cell_class(name)(args.hidden, args.hidden, key=jax.random.key(0))
        except ValueError as error:
            raise SystemExit(f"bench_pieces.py: {error}") from None
        if not recurrax.fused.supports(cell):
            raise SystemExit(f"bench_pieces.py: {type(cell).__name__} has no fused scan, so no pieces of time")
        layer = recurrax.Recurrent(cell)
        xs = jax.random.normal(jax.random.key(1), (args.batch, args.length, args.hidden))

        def forward(layer, xs):
            return jax.vmap(layer)(xs)

        step = jax.value_and_grad(lambda layer, xs: forward(layer, xs).sum()) if args.mode == "train" else forward
        # The library's count: one piece where the native loops run (recurrax.native), else time_pieces'.
        native = recurrax.fused.runs_native(cell, xs[0], cell.init_state())
        chosen = 1 if native else recurrax.fused.time_pieces(cell, args.batch, args.length)
        counts = sorted(set(args.pieces) | {chosen})
        compiled = {}
        for n in counts:
            with recurrax.fused.pieces(n):  # acts while tracing: lower() traces here
                compiled[n] = jax.jit(step).lower(layer, xs).compile()
        reference = jax.block_until_ready(compiled[chosen](layer, xs))
        for n, run in compiled.items():
            got = jax.block_until_ready(run(layer, xs))
            for a, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(reference)):
                scale = float(np.max(np.abs(r))) or 1.0
                np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(r) / scale, atol=1e-4,
                                           err_msg=f"{n} pieces disagree with {chosen}")
        seconds = median_call_seconds(
            {n: (lambda c=c: jax.block_until_ready(c(layer, xs))) for n, c in compiled.items()}, args.rounds,
            args.min_time,
        )
        med = {n: s * 1e3 for n, s in seconds.items()}
        for n in counts:
            mark = "*" if n == chosen else " "
            print(f"{type(cell).__name__:<12} {args.batch:>4} {args.length:>5} {args.hidden:>4} {args.mode:<5} "
                  f"{n:>5}{mark} {med[n]:>8.2f} {med[n] / med[chosen]:>7.2f}", flush=True)
    print(f"\nmedian ms per call over {args.rounds} measurements of >= {args.min_time}s, counts alternating; "
          f"*: the count recurrax.fused.time_pieces chooses; malloc: {args.malloc}")
    print(machine.describe("cpu"))


if __name__ == "__main__":
    main()
