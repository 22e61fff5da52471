r"""Backpropagation through time: three ways of cutting data and carrying state, one update.

Every strategy builds a pure function

    update(params, opt_state, carry, batch, key, stage) -> (params, opt_state, carry, metrics)

of the parameters, the optimiser state, the recurrent state carried in (``carry``: one state per
sequence of the batch, or ``None`` for the model's initial state) and a batch, so it can be
jitted once and later sharded over devices. A batch is a mapping of arrays with a leading batch
axis: ``inputs`` (B, T, F) or token ids (B, T), ``targets``, ``mask`` (B, T) bool (valid steps)
and optionally ``loss_mask`` (B, T) (steps that are scored; defaults to ``mask``) and ``starts``
(B, T) (episode starts: the state is reset to the initial state there).

* **full**: one gradient of the loss over whole sequences. The tied weights receive the sum of
  the gradients from every time step (that is what the chain rule through the unrolled network
  gives).
* **truncated** (chunk k): the sequences are cut into chunks of k steps (k beyond their length: one
  chunk of their length); each chunk is one update, starting from the state the previous chunk
  ended in, without gradient through that state (``stop_gradient``); episode starts inside a
  chunk reset to the initial state. For last-step objectives only the final chunk is scored:
  earlier chunks just advance the state (padded sequences are first right-aligned, so that the
  final chunk holds each one's last steps).
* **curriculum** (the first text's schedule): train on the prefixes of length 1, 2, …, N (every
  ``stride``-th length, N always included). Prefix k is the same batch with the steps t ≥ k masked
  out (inputs too: a bidirectional model does not read them), so every stage shares one compiled
  function; its gradient equals the gradient of the loss on the first k steps. Prefixes that
  score no step (the copy task scores only its recall steps) are skipped.

The optimiser takes one update per chunk under truncated BPTT, so a step of the trainer is
:meth:`BPTT.updates_per_step` updates; learning-rate schedules count steps, not updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from .. import _checks
from ..layers import last_valid_index
from .losses import is_last_step, sequence_loss

STRATEGIES = ("full", "truncated", "curriculum")


@dataclass(frozen=True)
class BPTT:
    """A BPTT strategy: ``kind`` in :data:`STRATEGIES`, ``chunk`` (truncated), ``stride`` (curriculum)."""

    kind: str = "full"
    chunk: int | None = None
    stride: int = 1

    def __post_init__(self):
        _checks.choice("bptt", self.kind, STRATEGIES)
        if self.kind == "truncated":
            if self.chunk is None:
                raise ValueError("truncated BPTT needs a chunk length (e.g. --chunk 50)")
            _checks.positive_int("chunk", self.chunk)
        _checks.positive_int("stride", self.stride)

    def stages(self, length: int, first_scored: int = 0) -> list[int]:
        """Prefix lengths of one curriculum pass: stride, 2·stride, …, and always ``length``; only
        those longer than ``first_scored`` (the first step any loss scores), which score something."""
        if self.kind != "curriculum":
            return [length]
        stages = list(range(self.stride, length + 1, self.stride))
        stages = stages if stages and stages[-1] == length else stages + [length]
        return [k for k in stages if k > first_scored]

    def updates_per_step(self, length: int, last_step: bool) -> int:
        """Optimiser updates in one step on sequences of ``length``: one per chunk under truncated
        BPTT (only the last chunk for a last-step objective), else one."""
        if self.kind != "truncated" or last_step:
            return 1
        return -(-length // self.chunk)


PER_STEP = frozenset({"inputs", "mask", "loss_mask", "starts"})
"""The batch arrays with a time axis (besides per-step targets)."""


def batched_initial_state(model, batch_size: int):
    """The model's initial state, repeated for every sequence of a batch."""
    return jax.tree_util.tree_map(lambda z: jnp.broadcast_to(z, (batch_size,) + z.shape), model.init_state())


def batch_loss(params, static, batch: Mapping[str, jax.Array], *, objective: str, reduce: str, key=None,
               carry=None, reset_to_initial: bool = False, scored=None):
    """Mean loss over a batch and the final states. ``scored`` (T,) optionally restricts the scored steps."""
    model = eqx.combine(params, static)
    inputs, targets, mask = batch["inputs"], batch["targets"], batch["mask"]
    weights = batch.get("loss_mask", mask)
    if scored is not None:
        mask, weights = mask & scored, weights & scored
    size = inputs.shape[0]
    keys = None if key is None else jax.random.split(key, size)
    reset_state = model.init_state() if reset_to_initial else None

    def one(x, y, m, w, s, h0, k):
        outputs, final = model(x, h0, starts=s, mask=m, reset_state=reset_state, key=k, return_state=True)
        return sequence_loss(objective, outputs, y, w, reduce=reduce), final

    losses, finals = jax.vmap(one)(inputs, targets, mask, weights, batch.get("starts"), carry, keys)
    return jnp.mean(losses), finals


def make_update(static, optimizer: optax.GradientTransformation, objective: str, reduce: str, bptt: BPTT) -> Callable:
    """The jitted update of one batch under ``bptt`` (see the module docstring)."""
    loss_and_grad = jax.value_and_grad(batch_loss, has_aux=True)
    last_step = is_last_step(objective)
    if bptt.kind == "curriculum" and last_step:
        raise ValueError(
            f"curriculum BPTT trains on prefixes scored at every step; objective {objective!r} scores only the last step"
        )

    def descend(params, opt_state, batch, key, carry, scored=None, reset_to_initial=False):
        (loss, finals), grads = loss_and_grad(
            params, static, batch, objective=objective, reduce=reduce, key=key, carry=carry,
            reset_to_initial=reset_to_initial, scored=scored,
        )
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
        return optax.apply_updates(params, updates), opt_state, finals, metrics

    def full(params, opt_state, carry, batch, key, stage):
        del stage
        return descend(params, opt_state, batch, key, carry)

    def curriculum(params, opt_state, carry, batch, key, stage):
        scored = jnp.arange(batch["mask"].shape[1]) < stage
        return descend(params, opt_state, batch, key, carry, scored=scored)

    def truncated(params, opt_state, carry, batch, key, stage):
        del stage
        model = eqx.combine(params, static)
        if last_step:
            batch = _right_aligned(batch)
        # a chunk longer than the sequences is one chunk of their length, not one padded to ``chunk`` steps
        chunk = min(bptt.chunk, batch["mask"].shape[1])
        chunks = _split_in_chunks(batch, chunk, per_step_targets=not last_step)
        num_chunks = chunks["mask"].shape[0]
        if carry is None:
            carry = batched_initial_state(model, batch["mask"].shape[0])
        keys = jax.random.split(key, num_chunks)

        def advance(carry, chunk):
            _, finals = batch_loss(params, static, chunk, objective=objective, reduce=reduce, carry=carry,
                                   reset_to_initial=True)
            return finals, None

        def train_chunk(state, chunk_and_key):
            params, opt_state, carry = state
            chunk, k = chunk_and_key
            params, opt_state, finals, metrics = descend(
                params, opt_state, chunk, k, jax.lax.stop_gradient(carry), reset_to_initial=True
            )
            return (params, opt_state, finals), metrics

        if last_step:
            head = jax.tree_util.tree_map(lambda a: a[:-1], chunks)
            tail = jax.tree_util.tree_map(lambda a: a[-1:], chunks)
            carry, _ = jax.lax.scan(advance, carry, head)
            chunks, keys = tail, keys[-1:]
        (params, opt_state, carry), metrics = jax.lax.scan(train_chunk, (params, opt_state, carry), (chunks, keys))
        return params, opt_state, carry, jax.tree_util.tree_map(jnp.mean, metrics)

    return jax.jit({"full": full, "curriculum": curriculum, "truncated": truncated}[bptt.kind])


def _right_aligned(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Each row's steps rolled right so that its last valid step is the batch's last step: its
    padding then comes first, where masked steps keep the initial state (the same outputs), and the
    final chunk of truncated BPTT holds every sequence's last steps (else a short sequence would be
    read from a chunk of padding: the head's bias, and no gradient)."""
    mask = batch["mask"]
    length = mask.shape[1]
    shift = length - 1 - jax.vmap(lambda m: last_valid_index(length, m))(mask)
    roll = jax.vmap(lambda a, k: jnp.roll(a, k, axis=0))
    return {name: roll(a, shift) if name in PER_STEP else a for name, a in batch.items()}


def _split_in_chunks(batch: Mapping[str, Any], chunk: int, *, per_step_targets: bool) -> dict[str, jax.Array]:
    """(B, T, ...) arrays → (num_chunks, B, chunk, ...); the last chunk is padded with masked steps.

    Last-step targets (no time axis) are repeated whole for every chunk.
    """
    length = batch["mask"].shape[1]
    num_chunks = -(-length // chunk)
    pad = num_chunks * chunk - length
    per_step = PER_STEP | ({"targets"} if per_step_targets else set())
    out = {}
    for name, a in batch.items():
        if name in per_step:
            a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
            a = a.reshape((a.shape[0], num_chunks, chunk) + a.shape[2:])
            out[name] = jnp.moveaxis(a, 1, 0)
        else:
            out[name] = jnp.broadcast_to(a, (num_chunks,) + a.shape)
    return out

