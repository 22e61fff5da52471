"""The minimal gated unit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .. import _checks
from .base import Cell, uniform_init


class MGU(Cell):
    r"""Minimal gated unit (Zhou, Wu, Zhang & Zhou, 2016, "Minimal gated unit for recurrent neural networks").

    One gate serves both to forget and to update:

    .. math::
        f_t &= \mathrm{sigmoid}(W_{fx} x_t + W_{fh} h_{t-1} + b_f) \\
        \tilde h_t &= \tanh(W_{hx} x_t + W_{hh} (f_t \odot h_{t-1}) + b) \\
        h_t &= (1 - f_t) \odot h_{t-1} + f_t \odot \tilde h_t

    Parameters: ``weight_ih`` = [W_fx; W_hx] (2H, X), ``bias`` = [b_f; b] (2H,),
    ``weight_fh`` = W_fh (H, H), ``weight_hh`` = W_hh (H, H), initialised U(-1/√H, 1/√H).
    """

    weight_ih: jax.Array
    bias: jax.Array
    weight_fh: jax.Array
    weight_hh: jax.Array

    def __init__(self, input_size: int, hidden_size: int, *, key: jax.Array):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        s = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = uniform_init(k1, (2 * hidden_size, input_size), s)
        self.bias = uniform_init(k2, (2 * hidden_size,), s)
        self.weight_fh = uniform_init(k3, (hidden_size, hidden_size), s)
        self.weight_hh = uniform_init(k4, (hidden_size, hidden_size), s)

    def project(self, x: jax.Array) -> jax.Array:
        return x @ self.weight_ih.T + self.bias

    def step(self, state: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        p_f, p_h = jnp.split(p, 2)
        f = jax.nn.sigmoid(p_f + self.weight_fh @ state)
        candidate = jnp.tanh(p_h + self.weight_hh @ (f * state))
        h = (1.0 - f) * state + f * candidate
        return h, h
