"""Two cores inside one loop: a loop step's product split into batch groups.

XLA's CPU runtime runs a loop's body as one sequence of operations (thunks) on one thread when it
has at most 8 of them, and otherwise as a dataflow graph whose independent operations may run on
different threads. A recurrent step is a chain (product, then elementwise work on its result), so
its operations cannot run side by side; split the batch into groups, each with its own product and
elementwise work, and the groups' chains are independent. Whether XLA then runs them on two cores
depends on the body having more than 8 operations and on the groups' results not sharing a buffer
(XLA assigns buffers in one sequential order; two operations that write the same buffer are
ordered).

This script measures, in one process, contenders alternating round after round, a jitted
``jax.lax.scan`` of ``--steps`` steps whose body is an LSTM-sized step, ``h <- tanh(h W)[:, :H]``
with W of H x 4H, on B rows taken as 1, 2, ... groups (``--groups``), each group carrying two running
sums of its states besides (elementwise work that keeps every body above 8 operations, the same
amount of it in every contender). It prints the median time per step, the ratio to one group, and
how many operations the compiled loop body has. The values of all contenders agree (checked).

    python benchmarks/bench_loop_groups.py
    python benchmarks/bench_loop_groups.py --batch 32,64 --hidden 192,256 --groups 1,2,4
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import machine
from alternating import median_call_seconds
from arguments import positive_ints


def _parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", default="32,64,256", help="rows per step (default 32,64,256)")
    p.add_argument("--hidden", default="128,256,512", help="H; the product is (B x H) @ (H x 4H) (default 128,256,512)")
    p.add_argument("--groups", default="1,2", help="batch groups per step; each must divide B (default 1,2)")
    p.add_argument("--steps", type=int, default=200, help="loop steps per call (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="measurements per contender (default 5)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement at least (default 0.3)")
    args = p.parse_args(argv)
    args.batch, args.hidden, args.groups = (positive_ints(getattr(args, n), n) for n in ("batch", "hidden", "groups"))
    if args.steps < 1 or args.rounds < 1:
        raise SystemExit("--steps and --rounds must be positive")
    for b in args.batch:
        for k in args.groups:
            if b % k:
                raise SystemExit(f"--groups: {k} groups do not divide a batch of {b} rows")
    return args


def body_operations(hlo_text: str) -> int:
    """The number of operations (thunks) in the body of the first loop of compiled HLO text: its
    instructions less parameters, constants, tuples, tuple elements and bitcasts (no code)."""
    loop = re.search(r"= [^\n]*? while\([^\n]*?body=%([\w.\-]+)", hlo_text)
    if loop is None:
        raise ValueError("no loop in the compiled program")
    body = re.search(r"^%" + re.escape(loop.group(1)) + r" .*?^}", hlo_text, re.S | re.M).group(0)
    skipped = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast")
    ops = re.findall(r"^\s+(?:ROOT )?%[\w.\-]+ = \S+ ([\w-]+)\(", body, re.M)
    return sum(op not in skipped for op in ops)


def main(argv=None) -> None:
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np

    def loop(groups: int, steps: int):
        """The loop over ``steps`` steps with the batch in ``groups`` groups: (states, sums)."""

        def run(w, h):
            def step(carry, _):
                states, sums = carry
                states = tuple(jnp.tanh(s @ w)[:, : s.shape[1]] for s in states)
                sums = tuple(total + states[i // 2] * (1.0 + i % 2) for i, total in enumerate(sums))
                return (states, sums), None

            states = tuple(jnp.split(h, groups))
            sums = tuple(states[i // 2] for i in range(2 * groups))  # two running sums a group
            (states, sums), _ = jax.lax.scan(step, (states, sums), None, length=steps)
            return jnp.concatenate(states), jnp.concatenate(sums[0::2]) + jnp.concatenate(sums[1::2])

        return run

    header = f"{'B':>4} {'H':>4} {'MFLOP/step':>10} " + " ".join(
        f"{f'{k} group' + ('s' if k > 1 else ''):>9} {'ops':>3}" for k in args.groups) + "  " + " ".join(
        f"{f'{k}/1':>5}" for k in args.groups if k != 1)
    print(header)
    print("-" * len(header))
    for b in args.batch:
        for h in args.hidden:
            w = 0.5 * jax.random.normal(jax.random.key(0), (h, 4 * h)) / h**0.5  # contracting: rounding does not grow
            x = jax.random.normal(jax.random.key(1), (b, h))
            compiled = {k: jax.jit(loop(k, args.steps)).lower(w, x).compile() for k in args.groups}
            ops = {k: body_operations(c.as_text()) for k, c in compiled.items()}
            reference = None
            for k, c in compiled.items():
                out = jax.block_until_ready(c(w, x))
                if reference is None:
                    reference = out
                for a, r in zip(out, reference):
                    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)
            seconds = median_call_seconds(
                {k: (lambda c=c: jax.block_until_ready(c(w, x))) for k, c in compiled.items()}, args.rounds,
                args.min_time,
            )
            med = {k: s / args.steps * 1e6 for k, s in seconds.items()}
            base = med.get(1)
            cells = " ".join(f"{med[k]:7.1f}us {ops[k]:>3}" for k in args.groups)
            ratios = " ".join(f"{med[k] / base:5.2f}" for k in args.groups if k != 1) if base else ""
            print(f"{b:>4} {h:>4} {2 * b * h * 4 * h / 1e6:>10.1f} {cells}  {ratios}", flush=True)
    print(f"\nmedian time per loop step over {args.rounds} measurements of >= {args.min_time}s, contenders "
          f"alternating; ops: operations in the compiled loop body (XLA runs more than 8 as a graph)")
    print(machine.describe("cpu"))


if __name__ == "__main__":
    main()
