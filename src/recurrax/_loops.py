"""``scan_prefetched``: ``jax.lax.scan`` whose steps read their slice of the inputs one step ahead.

In ``jax.lax.scan(body, init, xs)`` each step slices ``xs[t]`` with a dynamic slice, and XLA's CPU
compiler fuses that slice into the elementwise code that consumes it. For some steps the code
it emits then is much slower than the same code reading a plain buffer: a GRU forward over
hoisted input projections (B = 16, H = 128, T = 200) ran in 6.8 ms that way and in 3.3 ms with
the slice taken one step earlier and carried into the step, as here (the slice is then its own
small copy). The copy is not free: for steps that XLA compiles well either way it cost up to
1.5x (Elman at B = 1), and JAX's autodiff of the carried slices made plain loops slower to
differentiate; so the fused path uses it only where it was measured to pay
(:attr:`recurrax.fused.Rule.prefetch`). Values are those of ``jax.lax.scan``.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def scan_prefetched(body: Callable, init: Any, xs: Any, *, reverse: bool = False, unroll: int = 1):
    """``jax.lax.scan(body, init, xs, reverse=reverse, unroll=unroll)``: ``(final carry, stacked ys)``.

    ``xs`` is a pytree of arrays with a common leading (time) axis of length at least 1; ``None``
    leaves pass through as ``None``.
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    first = jax.tree_util.tree_map(lambda a: a[length - 1 if reverse else 0], xs)

    def step(carry, t):
        inner, x = carry
        upcoming = jnp.maximum(t - 1, 0) if reverse else jnp.minimum(t + 1, length - 1)
        x_next = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, upcoming, 0, False), xs)
        inner, y = body(inner, x)
        return (inner, x_next), y

    (final, _), ys = jax.lax.scan(step, (init, first), jnp.arange(length), reverse=reverse, unroll=unroll)
    return final, ys
