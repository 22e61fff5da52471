r"""The scan engine: run a cell's step f over a sequence, scan(f)(h_0, x_1..x_T) = (h_1..h_T).

One entry point, :func:`scan`, with two ways of running the same cell:

* ``"sequential"``: ``jax.lax.scan`` over the steps; works for every cell.
* ``"associative"``: ``jax.lax.associative_scan`` over the cell's transitions, for an
  :class:`~recurrax.cells.AssociativeCell`; O(log T) depth, same numbers to float tolerance.

Both accept

* ``state``: the initial state h_0 (the cell's zeros by default); the final state comes back.
* ``starts``: bool (T,). Where true, the state is reset to h_0 *before* that step, so several
  episodes packed into one row give exactly what separate runs from h_0 give.
* ``mask``: bool (T,). Where false (padding), the step leaves the state unchanged and its output
  is **zero**; ``starts`` is ignored at masked steps. The final state is the state after the last
  unmasked step.
* ``reverse``: run from the last step to the first. ``starts`` keeps its forward-time meaning
  (episode starts), so a reversed run resets at each episode's last step; outputs are returned in
  forward time order.

The state-independent part of each step (``cell.project``) is mapped over all steps at once
before the loop, which XLA turns into one matrix product.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from . import _checks
from .cells.base import AssociativeCell, Cell

ScanMode = Literal["sequential", "associative"]
SCAN_MODES = ("sequential", "associative")


def _where(cond: jax.Array, a: Any, b: Any) -> Any:
    """``jnp.where`` over two pytrees, broadcasting ``cond`` (leading axes) against each leaf."""

    def pick(x, y):
        c = jnp.reshape(cond, cond.shape + (1,) * (jnp.ndim(x) - cond.ndim))
        return jnp.where(c, x, y)

    return jax.tree_util.tree_map(pick, a, b)


def _zero_where_masked(valid: jax.Array | None, ys: jax.Array) -> jax.Array:
    return ys if valid is None else _where(valid, ys, jnp.zeros_like(ys))


def reversed_starts(starts: jax.Array) -> jax.Array:
    """Episode-start flags for the time-reversed sequence (starts given in forward time).

    Reversed, an episode begins at its last forward step, i.e. one step before the next start.
    Returned in forward index order: ``ends[t] = starts[t + 1]``, ``ends[T-1] = False``.
    """
    return jnp.concatenate([starts[1:], jnp.zeros((1,), jnp.bool_)])


def check_mode(cell: Cell, mode: str) -> str:
    """Return ``mode`` if ``cell`` can run with it; else raise a clear error."""
    _checks.choice("scan mode", mode, SCAN_MODES)
    if mode == "associative" and not isinstance(cell, AssociativeCell):
        raise ValueError(
            f"{type(cell).__name__} has no associative form (its step is not an associative combine); "
            "use scan='sequential' (or 'auto')"
        )
    return mode


def scan(
    cell: Cell,
    xs: jax.Array,
    state: Any = None,
    *,
    starts: jax.Array | None = None,
    mask: jax.Array | None = None,
    reverse: bool = False,
    mode: ScanMode = "sequential",
    unroll: int = 1,
) -> tuple[jax.Array, Any]:
    """Run ``cell`` over one sequence ``xs`` of shape (T, input_size).

    Returns ``(ys, final_state)`` with ``ys`` of shape (T, cell.output_size). See the module
    docstring for ``starts``, ``mask`` and ``reverse``. ``unroll`` is passed to ``jax.lax.scan``
    in sequential mode.

    >>> import jax, jax.numpy as jnp, recurrax
    >>> cell = recurrax.LinearRecurrence(2, 4, key=jax.random.key(0))
    >>> xs = jnp.ones((10, 2))
    >>> ys, h = recurrax.scan(cell, xs, mode="associative")
    >>> ys2, h2 = recurrax.scan(cell, xs, mode="sequential")
    >>> bool(jnp.allclose(ys, ys2, atol=1e-5))
    True
    """
    check_mode(cell, mode)
    xs = _checks.sequence(xs, cell.input_size)
    length = xs.shape[0]
    starts = _checks.step_flags("starts", starts, length)
    mask = _checks.step_flags("mask", mask, length)
    h0 = cell.init_state() if state is None else state
    _checks.same_structure("state", h0, cell.init_state())

    if reverse:
        xs = jnp.flip(xs, 0)
        starts = None if starts is None else jnp.flip(reversed_starts(starts), 0)
        mask = None if mask is None else jnp.flip(mask, 0)

    ps = jax.vmap(cell.project)(xs)
    if mode == "sequential":
        ys, final = _sequential(cell, ps, h0, starts, mask, unroll)
    else:
        ys, final = _associative(cell, ps, h0, starts, mask)
    if reverse:
        ys = jnp.flip(ys, 0)
    return ys, final


def _sequential(cell: Cell, ps: Any, h0: Any, starts, mask, unroll: int):
    def body(h, inputs):
        p, start, valid = inputs
        h_in = h if start is None else _where(start, h0, h)
        h_new, y = cell.step(h_in, p)
        if valid is not None:
            h_new = _where(valid, h_new, h)
            y = _zero_where_masked(valid, y)
        return h_new, y

    final, ys = jax.lax.scan(body, h0, (ps, starts, mask), unroll=unroll)
    return ys, final


def _associative(cell: AssociativeCell, ps: Any, h0: Any, starts, mask):
    elements = jax.vmap(cell.element)(ps)
    compose = jax.vmap(cell.combine)

    if starts is None and mask is None:
        prefix = jax.lax.associative_scan(compose, elements)
        valid_prefix = None
    else:
        # Flags extend the monoid: a reset discards everything earlier, and a masked step is the
        # identity. Both keep the combine associative.
        length = jax.tree_util.tree_leaves(elements)[0].shape[0]
        resets = jnp.zeros((length,), jnp.bool_) if starts is None else starts
        valid = jnp.ones((length,), jnp.bool_) if mask is None else mask
        resets = resets & valid

        def combine(earlier, later):
            e1, r1, v1 = earlier
            e2, r2, v2 = later
            out = _where(r2 | ~v1, e2, compose(e1, e2))
            out = _where(v2, out, e1)
            return out, r1 | r2, v1 | v2

        prefix, _, valid_prefix = jax.lax.associative_scan(combine, (elements, resets, valid))

    states = jax.vmap(cell.apply, in_axes=(0, None))(prefix, h0)
    if valid_prefix is not None:
        h0_tiled = jax.tree_util.tree_map(lambda s, h: jnp.broadcast_to(h, s.shape), states, h0)
        states = _where(valid_prefix, states, h0_tiled)
    ys = _zero_where_masked(mask, jax.vmap(cell.readout)(states, ps))
    final = jax.tree_util.tree_map(lambda s: s[-1], states)
    return ys, final
