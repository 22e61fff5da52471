r"""Sequence losses, as in the texts: per-step losses summed (or averaged) over time, or a loss on
the last step only.

All functions take **one** sequence (batches via ``jax.vmap``) and a ``weights`` array (T,) that
says which steps count (the padding mask, or a loss mask); ``None`` means every step counts.
The targets of steps that do not count never enter the arithmetic, so they may hold anything (NaN
for a missing value, −100 for an ignored label): the loss and its gradient stay finite.

* per-step squared error  :math:`L = \sum_t w_t \lVert \hat y_t - y_t \rVert^2`
* per-step cross-entropy  :math:`L = -\sum_t w_t \log \mathrm{softmax}(z_t)_{y_t}`
* ``reduce="mean"`` divides by :math:`\sum_t w_t` (the average over counted steps)
* last-step losses compare one output (O,) with one target.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .. import _checks

REDUCTIONS = ("sum", "mean")


def _counted(weights: jax.Array) -> jax.Array:
    return jnp.asarray(weights) != 0


def _reduce(per_step: jax.Array, weights: jax.Array | None, reduce: str) -> jax.Array:
    _checks.choice("reduce", reduce, REDUCTIONS)
    if weights is None:
        weights = jnp.ones(per_step.shape[:1], per_step.dtype)
    weights = weights.astype(per_step.dtype)
    total = jnp.sum(per_step * weights)
    return total if reduce == "sum" else total / jnp.maximum(jnp.sum(weights), 1.0)


def per_step_squared_error(preds: jax.Array, targets: jax.Array, weights=None, *, reduce: str = "sum") -> jax.Array:
    """Σ_t w_t ‖ŷ_t − y_t‖² for preds and targets of shape (T, O)."""
    if preds.shape != targets.shape:
        raise ValueError(f"predictions of shape {preds.shape} do not match targets of shape {targets.shape}")
    if weights is not None:  # an uncounted step's target is the prediction itself: error 0, gradient 0
        targets = jnp.where(_counted(weights)[:, None], targets, preds)
    return _reduce(jnp.sum((preds - targets) ** 2, axis=-1), weights, reduce)


def per_step_cross_entropy(logits: jax.Array, labels: jax.Array, weights=None, *, reduce: str = "sum") -> jax.Array:
    """−Σ_t w_t log softmax(z_t)[y_t] for logits (T, V) and integer labels (T,)."""
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits of shape {logits.shape} do not match labels of shape {labels.shape}")
    labels = labels.astype(jnp.int32)
    if weights is not None:  # an uncounted step reads class 0, then scores 0
        labels = jnp.where(_counted(weights), labels, 0)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    if weights is not None:
        nll = jnp.where(_counted(weights), nll, 0.0)
    return _reduce(nll, weights, reduce)


def last_step_squared_error(pred: jax.Array, target: jax.Array) -> jax.Array:
    """‖ŷ_T − y‖² for one output (O,)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction of shape {pred.shape} does not match target of shape {target.shape}")
    return jnp.sum((pred - target) ** 2)


def last_step_cross_entropy(logits: jax.Array, label: jax.Array) -> jax.Array:
    """−log softmax(z_T)[y] for logits (V,) and an integer label."""
    return -jax.nn.log_softmax(logits)[label.astype(jnp.int32)]


# objective name → (reads the last step only?, loss)
OBJECTIVES: dict[str, tuple[bool, Callable]] = {
    "per-step-mse": (False, per_step_squared_error),
    "per-step-xent": (False, per_step_cross_entropy),
    "last-mse": (True, last_step_squared_error),
    "last-xent": (True, last_step_cross_entropy),
}


def is_last_step(objective: str) -> bool:
    """Whether ``objective`` scores the last step only (sequence classification/regression)."""
    return OBJECTIVES[_checks.choice("objective", objective, tuple(OBJECTIVES))][0]


def sequence_loss(objective: str, outputs: jax.Array, targets: jax.Array, weights=None, *, reduce: str = "sum"):
    """The loss of one sequence under ``objective`` (one of :data:`OBJECTIVES`)."""
    last, fn = OBJECTIVES[_checks.choice("objective", objective, tuple(OBJECTIVES))]
    return fn(outputs, targets) if last else fn(outputs, targets, weights, reduce=reduce)
