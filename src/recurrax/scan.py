r"""The scan engine: run a cell's step f over a sequence, scan(f)(h_0, x_1..x_T) = (h_1..h_T).

One entry point, :func:`scan`, with three ways of running the same cell:

* ``"sequential"``: ``jax.lax.scan`` over the steps; works for every cell.
* ``"associative"``: ``jax.lax.associative_scan`` over the cell's transitions, for an
  :class:`~recurrax.cells.AssociativeCell`; O(log T) depth, same numbers to float tolerance.
* ``"chunked"``: associative within chunks of ``chunk_size`` steps, the state carried from chunk
  to chunk by a sequential loop; each chunk is recomputed in the backward pass
  (``jax.checkpoint``), so memory stays bounded for very long sequences.

``chunk_size`` (below T) with ``"associative"`` runs it as ``"chunked"``; with ``"sequential"``
it cuts the loop the same way: the backward pass then stores only the states at chunk boundaries
and recomputes each chunk (rematerialisation), so training memory grows like
T / chunk_size + chunk_size instead of T (plus the inputs and outputs themselves). The chunks'
inputs are sliced inside the rematerialised loop body and projected there, so nothing of size
T x (gates) is kept. By default (``chunk_size=None``) sequential scans
of more than ``AUTO_CHUNK_LENGTH`` = 8192 steps are rematerialised in chunks of about 256 steps (a
divisor of T near 256 when there is one, so that no shorter chunk is left over): at such lengths
this costs little time or none (a chunk's activations stay in cache) and keeps memory bounded;
``chunk_size >= T`` turns it off.

The classic cells with a recurrent matrix product (LSTM, GRU, Elman, ForgetElman, MGU) run
``"sequential"`` on a fused path (:mod:`recurrax.fused`): the same values, a hand-written
backward pass whose loop carries only the state gradients, and weight gradients from one matrix
product over all steps.
On a CPU, ``LinearRecurrence`` runs ``"sequential"`` on native loops where they are built
(:func:`recurrax.fused_native.linear_scan`; no ``starts``, float32), switched off like the fused
path. ``fused=False`` runs the plain ``jax.lax.scan`` of ``cell.step`` instead (needed for
forward-mode or higher-order derivatives).

Both accept

* ``state``: the initial state h_0 (the cell's zeros by default); the final state comes back.
* ``starts``: bool (T,). Where true, the state is reset to h_0 *before* that step, so several
  episodes packed into one row give exactly what separate runs from h_0 give. ``reset_state``
  sets another reset target (without ``starts`` it has nothing to do): truncated BPTT starts a
  chunk from the state carried over from the previous chunk but resets to the model's initial
  state at episode starts.
* ``mask``: bool (T,). Where false (padding), the step leaves the state unchanged and its output
  is **zero**; ``starts`` is ignored at masked steps. The final state is the state after the last
  unmasked step.
* ``reverse``: run from the last step to the first. ``starts`` keeps its forward-time meaning
  (episode starts), so a reversed run resets at each episode's last unmasked step (an episode
  padded at its end resets where its real steps end); outputs are returned in forward time order.

The state-independent part of each step (``cell.project``) is mapped over all steps at once
before the loop, which XLA turns into one matrix product (the fused path computes it step by step
inside its loop instead, and its gradient as one product over all steps).
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp

from . import _checks
from ._batching import mapped_batch_size
from ._trees import tree_where
from . import fused as _fused
from . import fused_native as _fused_native
from .cells.base import AssociativeCell, Cell

ScanMode = Literal["sequential", "associative", "chunked"]
SCAN_MODES = ("sequential", "associative", "chunked")
DEFAULT_CHUNK_SIZE = 256
AUTO_CHUNK_LENGTH = 8192


def auto_chunk_size(length: int) -> int:
    """The chunk size used by default for a long sequential scan: a divisor of ``length`` as close
    to 256 as possible within [128, 512] (no shorter chunk left over), else 256."""
    for delta in range(0, 257):
        for size in (DEFAULT_CHUNK_SIZE - delta, DEFAULT_CHUNK_SIZE + delta):
            if 128 <= size <= 512 and length % size == 0:
                return size
    return DEFAULT_CHUNK_SIZE


def _zero_where_masked(valid: jax.Array | None, ys: jax.Array) -> jax.Array:
    return ys if valid is None else tree_where(valid, ys, jnp.zeros_like(ys))


def reversed_starts(starts: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Episode-start flags for the time-reversed sequence (``starts`` and ``mask`` in forward time).

    Reversed, an episode begins at its last valid forward step: the step t whose next valid step
    u > t starts an episode (masked steps ignore their flags, in either direction, so an episode
    that ends in padding still resets where its last real step is). Returned in forward index
    order; without a mask ``ends[t] = starts[t + 1]`` and ``ends[T-1] = False``.
    """
    no_step = jnp.zeros((1,), jnp.bool_)
    if mask is None:
        return jnp.concatenate([starts[1:], no_step])
    length = starts.shape[0]
    valid_index = jnp.where(mask, jnp.arange(length), length)
    next_valid = jax.lax.cummin(valid_index, reverse=True)  # the first valid step at or after t
    next_after = jnp.concatenate([next_valid[1:], jnp.full((1,), length, next_valid.dtype)])
    return jnp.concatenate([starts, no_step])[next_after]


def check_mode(cell: Cell, mode: str) -> str:
    """Return ``mode`` if ``cell`` can run with it; else raise a clear error."""
    _checks.choice("scan mode", mode, SCAN_MODES)
    if mode in ("associative", "chunked") and not isinstance(cell, AssociativeCell):
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
    reset_state: Any = None,
    reverse: bool = False,
    mode: ScanMode = "sequential",
    chunk_size: int | None = None,
    unroll: int = 1,
    fused: bool | None = None,
) -> tuple[jax.Array, Any]:
    """Run ``cell`` over one sequence ``xs`` of shape (T, input_size).

    Returns ``(ys, final_state)`` with ``ys`` of shape (T, cell.output_size). See the module
    docstring for ``starts``, ``mask``, ``reverse``, the modes and ``chunk_size`` (``"chunked"``
    uses 256 when it is not given; ``"sequential"`` chunks sequences longer than
    ``AUTO_CHUNK_LENGTH`` steps). ``unroll`` (a positive integer) is passed to ``jax.lax.scan``
    in sequential mode and has no effect in the others.

    ``fused`` (sequential mode): ``None`` (default) runs the classic cells on the fused path of
    :mod:`recurrax.fused` unless it is switched off with ``recurrax.fused.disabled()``; ``True``
    requires it (an error for other cells or modes); ``False`` runs the plain loop.

    >>> import jax, jax.numpy as jnp, recurrax
    >>> cell = recurrax.LinearRecurrence(2, 4, key=jax.random.key(0))
    >>> xs = jnp.ones((10, 2))
    >>> ys, h = recurrax.scan(cell, xs, mode="associative")
    >>> ys2, h2 = recurrax.scan(cell, xs, mode="sequential")
    >>> bool(jnp.allclose(ys, ys2, atol=1e-5))
    True
    """
    check_mode(cell, mode)
    unroll = _checks.positive_int("unroll", unroll)
    use_fused = _use_fused(cell, mode, fused)
    if chunk_size is not None:
        chunk_size = _checks.positive_int("chunk_size", chunk_size)
    elif mode == "chunked":
        chunk_size = DEFAULT_CHUNK_SIZE
    xs = _checks.sequence(xs, cell.input_size)
    length = xs.shape[0]
    if chunk_size is None and mode == "sequential" and length > AUTO_CHUNK_LENGTH:
        chunk_size = auto_chunk_size(length)
    starts = _checks.step_flags("starts", starts, length)
    mask = _checks.step_flags("mask", mask, length)
    h0 = cell.init_state() if state is None else _checks.state_like("state", state, cell.init_state())
    h_reset = h0 if reset_state is None else _checks.state_like("reset_state", reset_state, cell.init_state())
    _checks.inputs_fit_state(xs, h0)

    if reverse:
        xs = jnp.flip(xs, 0)
        starts = None if starts is None else jnp.flip(reversed_starts(starts, mask), 0)
        mask = None if mask is None else jnp.flip(mask, 0)

    # The batch that vmap maps this call over, read here: inside the chunks' loop it cannot be.
    batch = mapped_batch_size(xs) if use_fused else None
    native_linear = (mode == "sequential" and fused is None and _fused.enabled()
                     and _fused_native.runs_native_linear(cell, xs, h0))

    def run_chunk(x, s, m, h):
        if use_fused:  # projects the inputs itself
            return _fused.fused_scan(cell, x, h, h_reset, s, m, unroll, batch)
        if native_linear:  # projects the inputs itself
            return _fused_native.linear_scan(cell, x, h, h_reset, s, m)
        ps = jax.vmap(cell.project)(x)
        if mode == "sequential":
            return _sequential(cell, ps, h, h_reset, s, m, unroll)
        return _associative(cell, ps, h, h_reset, s, m)

    if chunk_size is None or chunk_size >= length:
        ys, final = run_chunk(xs, starts, mask, h0)
    else:
        ys, final = _over_chunks(run_chunk, xs, starts, mask, h0, chunk_size)
    if reverse:
        ys = jnp.flip(ys, 0)
    return ys, final


def _use_fused(cell: Cell, mode: str, fused: bool | None) -> bool:
    if fused is None:
        return mode == "sequential" and _fused.enabled() and _fused.supports(cell)
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be None, True or False, got {fused!r}")
    if fused and mode != "sequential":
        raise ValueError(f"fused=True needs mode='sequential', got mode={mode!r}")
    if fused and not _fused.supports(cell):
        raise ValueError(
            f"{type(cell).__name__} has no fused scan (only the classic cells do); use fused=None or False"
        )
    return fused


def _over_chunks(run_chunk, xs: jax.Array, starts, mask, h0: Any, chunk_size: int):
    """Run ``run_chunk`` chunk after chunk, carrying the state; each chunk is rematerialised.

    ``run_chunk`` takes the chunk's *inputs* and projects them itself. The loop runs over chunk
    indices and slices the inputs inside the (checkpointed) body, so the backward pass keeps only the
    states at chunk boundaries, and no chunked copy of the inputs is made. Steps left over after
    the last whole chunk run as one shorter chunk.
    """
    length = xs.shape[0]
    num_chunks, tail = divmod(length, chunk_size)

    def piece(a, start, size):
        return None if a is None else jax.lax.dynamic_slice_in_dim(a, start, size)

    @jax.checkpoint
    def body(h, k):
        start = k * chunk_size
        ys, h_end = run_chunk(piece(xs, start, chunk_size), piece(starts, start, chunk_size),
                              piece(mask, start, chunk_size), h)
        return h_end, ys

    final, ys = jax.lax.scan(body, h0, jnp.arange(num_chunks))
    ys = ys.reshape((num_chunks * chunk_size,) + ys.shape[2:])
    if tail:
        start = num_chunks * chunk_size
        ys_tail, final = jax.checkpoint(run_chunk)(
            piece(xs, start, tail), piece(starts, start, tail), piece(mask, start, tail), final
        )
        ys = jnp.concatenate([ys, ys_tail])
    return ys, final


def _sequential(cell: Cell, ps: Any, h_start: Any, h_reset: Any, starts, mask, unroll: int):
    """lax.scan from ``h_start``; a start flag resets the state to ``h_reset``."""

    def body(h, inputs):
        p, start, valid = inputs
        h_in = h if start is None else tree_where(start, h_reset, h)
        h_new, y = cell.step(h_in, p)
        if valid is not None:
            h_new = tree_where(valid, h_new, h)
            y = _zero_where_masked(valid, y)
        return h_new, y

    final, ys = jax.lax.scan(body, h_start, (ps, starts, mask), unroll=unroll)
    return ys, final


def _associative(cell: AssociativeCell, ps: Any, h_start: Any, h_reset: Any, starts, mask):
    """associative_scan of the transitions, applied to ``h_start`` (or ``h_reset`` after a start)."""
    elements = jax.vmap(cell.element)(ps)
    compose = jax.vmap(cell.combine)
    apply_all = jax.vmap(cell.apply, in_axes=(0, None))

    if starts is None and mask is None:
        states = apply_all(jax.lax.associative_scan(compose, elements), h_start)
        return jax.vmap(cell.readout)(states, ps), jax.tree_util.tree_map(lambda s: s[-1], states)

    # Flags extend the monoid: a reset discards everything earlier, and a masked step is the
    # identity. Both keep the combine associative.
    length = jax.tree_util.tree_leaves(elements)[0].shape[0]
    resets = jnp.zeros((length,), jnp.bool_) if starts is None else starts
    valid = jnp.ones((length,), jnp.bool_) if mask is None else mask
    resets = resets & valid

    def combine(earlier, later):
        e1, r1, v1 = earlier
        e2, r2, v2 = later
        out = tree_where(r2 | ~v1, e2, compose(e1, e2))
        out = tree_where(v2, out, e1)
        return out, r1 | r2, v1 | v2

    prefix, reset_prefix, valid_prefix = jax.lax.associative_scan(combine, (elements, resets, valid))
    states = apply_all(prefix, h_start)
    if starts is not None:
        states = tree_where(reset_prefix, apply_all(prefix, h_reset), states)
    h_start_tiled = jax.tree_util.tree_map(lambda s, h: jnp.broadcast_to(h, s.shape), states, h_start)
    states = tree_where(valid_prefix, states, h_start_tiled)
    ys = _zero_where_masked(mask, jax.vmap(cell.readout)(states, ps))
    final = jax.tree_util.tree_map(lambda s: s[-1], states)
    return ys, final
