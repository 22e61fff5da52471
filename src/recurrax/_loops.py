"""Two variants of ``jax.lax.scan`` with its values and another memory traffic.

``scan_prefetched``: ``jax.lax.scan`` whose steps read their slice of the inputs one step ahead.

In ``jax.lax.scan(body, init, xs)`` each step slices ``xs[t]`` with a dynamic slice, and XLA's CPU
compiler fuses that slice into the elementwise code that consumes it. For some steps the code
it emits then is much slower than the same code reading a plain buffer: a GRU forward over
hoisted input projections (B = 16, H = 128, T = 200) ran in 6.8 ms that way and in 3.3 ms with
the slice taken one step earlier and carried into the step, as here (the slice is then its own
small copy). The copy is not free: for steps that XLA compiles well either way it cost up to
1.5x (Elman at B = 1), and JAX's autodiff of the carried slices made plain loops slower to
differentiate; so the fused path uses it only where it was measured to pay
(:attr:`recurrax.fused.Rule.prefetch`). Values are those of ``jax.lax.scan``.

``scan_into_buffers``: ``jax.lax.scan`` whose steps write their outputs into carried buffers, which
``jax.vmap`` lays out batch-major (see its docstring).

``scan_in_place``: a loop whose step t reads slot t of carried buffers and writes its outputs over
it, so that a backward pass may put its gradients where the forward pass's residuals were, and a
forward pass its residuals where its hoisted input projections were.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def _next_step(t, length: int, reverse: bool):
    """The index of the step after step ``t`` in the loop's order, clamped to the sequence (the
    last step reads ahead at its own index; nobody uses what it reads)."""
    return jnp.maximum(t - 1, 0) if reverse else jnp.minimum(t + 1, length - 1)


def scan_prefetched(body: Callable, init: Any, xs: Any, *, reverse: bool = False, unroll: int = 1,
                    loop: Callable = jax.lax.scan):
    """``jax.lax.scan(body, init, xs, reverse=reverse, unroll=unroll)``: ``(final carry, stacked ys)``.

    ``xs`` is a pytree of arrays with a common leading (time) axis of length at least 1; ``None``
    leaves pass through as ``None``. ``loop``: the scan that runs the steps
    (:func:`scan_into_buffers` to write the outputs into carried buffers).
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    first = jax.tree_util.tree_map(lambda a: a[length - 1 if reverse else 0], xs)

    def step(carry, t):
        inner, x = carry
        upcoming = _next_step(t, length, reverse)
        x_next = jax.tree_util.tree_map(lambda a: jax.lax.dynamic_index_in_dim(a, upcoming, 0, False), xs)
        inner, y = body(inner, x)
        return (inner, x_next), y

    (final, _), ys = loop(step, (init, first), jnp.arange(length), reverse=reverse, unroll=unroll)
    return final, ys


def scan_into_buffers(body: Callable, init: Any, xs: Any, *, reverse: bool = False, unroll: int = 1):
    """``jax.lax.scan(body, init, xs, reverse=reverse, unroll=unroll)``: ``(final carry, stacked ys)``,
    each step writing its outputs into buffers that the loop carries, at its own index.

    The values are those of ``jax.lax.scan``; the layout under ``jax.vmap`` differs. There a scan's
    stacked outputs are time-major in memory, (T, B, ...), handed on as the (B, T, ...) array ``vmap``
    promises by a change of layout; a product that contracts them over batch and time together with
    a batch-major array (the weight gradients of the fused scan: ``dZᵀ X``) then copies one of them.
    Carried buffers are batched like any carry, batch-major, and each step writes its B rows in
    place.
    """
    length = jax.tree_util.tree_leaves(xs)[0].shape[0]
    first = jax.tree_util.tree_map(lambda a: a[0], xs)
    shapes = jax.eval_shape(lambda c, x: body(c, x)[1], init, first)
    buffers = jax.tree_util.tree_map(lambda s: jnp.zeros((length,) + s.shape, s.dtype), shapes)

    def step(carry, inputs):
        inner, buffers = carry
        t, x = inputs
        inner, y = body(inner, x)
        buffers = jax.tree_util.tree_map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, t, 0), buffers, y)
        return (inner, buffers), None

    (final, ys), _ = jax.lax.scan(step, (init, buffers), (jnp.arange(length), xs), reverse=reverse, unroll=unroll)
    return final, ys


def scan_in_place(body: Callable, init: Any, xs: Any, buffers: Any, *, reverse: bool = False, unroll: int = 1,
                  read_ahead: bool = True):
    """``(final carry, buffers)`` of a loop over the time axis of ``buffers`` whose step
    ``body(carry, (x_t, slot_t)) -> (carry, y_t)`` receives slot t of ``buffers`` and whose output
    ``y_t`` (a pytree of the buffers' structure, shapes and dtypes) replaces it; ``xs`` as in
    ``jax.lax.scan`` (``None`` leaves pass through). Values: the buffers with each slot replaced.

    ``read_ahead`` (the default): each step writes its slot first and then reads the slot of the
    next step from the updated buffers, carrying it into that step. Read in the step itself, a slot
    that feeds computations XLA need not order before the write (the part of a backward step that
    becomes the carry) made XLA copy the whole buffers at every step to keep the read safe; read
    after the write, the only reader of the buffers a step receives is the write, and XLA updates
    them in place. A step whose slot reaches the carry only through the values it writes (a forward
    step that turns its input projections into the gate values written over them) may read its
    slot itself (``read_ahead=False``) and save the copy of the slot: LSTM's training step at
    B = 32, T = 200, H = 128 took 20.0 ms that way and 20.3 ms reading ahead.
    """
    length = jax.tree_util.tree_leaves(buffers)[0].shape[0]

    def read(buffers, t):
        return jax.tree_util.tree_map(lambda b: jax.lax.dynamic_index_in_dim(b, t, 0, False), buffers)

    def step(carry, inputs):
        inner, buffers, slot = carry
        t, x = inputs
        if not read_ahead:
            slot = read(buffers, t)
        inner, y = body(inner, (x, slot))
        buffers = jax.tree_util.tree_map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, t, 0), buffers, y)
        slot = read(buffers, _next_step(t, length, reverse)) if read_ahead else None
        return (inner, buffers, slot), None

    first = read(buffers, length - 1 if reverse else 0) if read_ahead else None
    (final, buffers, _), _ = jax.lax.scan(step, (init, buffers, first), (jnp.arange(length), xs),
                                          reverse=reverse, unroll=unroll)
    return final, buffers
