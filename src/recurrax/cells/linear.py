"""The linear recurrence with forgetting."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init


class LinearRecurrence(AssociativeCell):
    r"""Linear recurrence with forgetting: a diagonal linear recurrent layer.

    .. math::  h_t = \gamma \odot h_{t-1} + W x_t + b, \qquad \gamma = \mathrm{sigmoid}(\lambda) \in (0, 1)^H

    The decay γ is learned per unit through its logit λ, so memories fade at a learned rate and
    never blow up. Because the step is affine in h, it is associative: the transition of a step is
    the pair (a, b) = (γ, W x_t + b), composed as (a₁, b₁) then (a₂, b₂) = (a₂a₁, a₂b₁ + b₂), so the
    sequence runs with ``jax.lax.associative_scan`` in O(log T) depth (Blelloch, 1990; Martin &
    Cundy, 2018). A step outputs h_t. γ starts spread uniformly over [0.5, 0.99] across units.
    """

    weight: jax.Array
    bias: jax.Array
    decay_logit: jax.Array

    def __init__(self, input_size: int, hidden_size: int, *, key: jax.Array):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        k1, k2, k3 = jax.random.split(key, 3)
        s = 1.0 / math.sqrt(input_size)
        self.weight = uniform_init(k1, (hidden_size, input_size), s)
        self.bias = uniform_init(k2, (hidden_size,), s)
        gamma = jax.random.uniform(k3, (hidden_size,), minval=0.5, maxval=0.99)
        self.decay_logit = jnp.log(gamma) - jnp.log1p(-gamma)

    @property
    def decay(self) -> jax.Array:
        """γ = sigmoid(λ), the per-unit forgetting factor."""
        return jax.nn.sigmoid(self.decay_logit)

    def project(self, x: jax.Array) -> jax.Array:
        return x @ self.weight.T + self.bias

    def element(self, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.decay, p

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        return a * state + b
