"""Gated recurrent unit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .. import _checks
from .base import Cell, uniform_init


class GRU(Cell):
    r"""Gated recurrent unit (Cho et al., 2014), in the form cuDNN and ``torch.nn.GRU`` use.

    .. math::
        r_t &= \mathrm{sigmoid}(W_{rx} x_t + W_{rh} h_{t-1} + b_r) \\
        z_t &= \mathrm{sigmoid}(W_{zx} x_t + W_{zh} h_{t-1} + b_z) \\
        n_t &= \tanh(W_{nx} x_t + b_n + r_t \odot (W_{nh} h_{t-1} + b_{hn})) \\
        h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}

    The reset gate multiplies the recurrent product (rather than h_{t-1} before it), so all three
    recurrent products are one matrix product per step. Parameters: ``weight_ih`` (3H, X) and
    ``weight_hh`` (3H, H) with gates stacked in the order r, z, n; ``bias`` (3H,) = [b_r; b_z; b_n];
    ``bias_hn`` (H,), initialised U(-1/√H, 1/√H).
    """

    weight_ih: jax.Array
    weight_hh: jax.Array
    bias: jax.Array
    bias_hn: jax.Array

    def __init__(self, input_size: int, hidden_size: int, *, key: jax.Array):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        s = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = uniform_init(k1, (3 * hidden_size, input_size), s)
        self.weight_hh = uniform_init(k2, (3 * hidden_size, hidden_size), s)
        self.bias = uniform_init(k3, (3 * hidden_size,), s)
        self.bias_hn = uniform_init(k4, (hidden_size,), s)

    def project(self, x: jax.Array) -> jax.Array:
        return x @ self.weight_ih.T + self.bias

    def step(self, state: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        p_r, p_z, p_n = jnp.split(p, 3)
        g_r, g_z, g_n = jnp.split(self.weight_hh @ state, 3)
        r = jax.nn.sigmoid(p_r + g_r)
        z = jax.nn.sigmoid(p_z + g_z)
        n = jnp.tanh(p_n + r * (g_n + self.bias_hn))
        h = (1.0 - z) * n + z * state
        return h, h
