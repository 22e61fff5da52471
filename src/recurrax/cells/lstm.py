"""Long short-term memory."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .. import _checks
from .base import Cell, uniform_init


class LSTM(Cell):
    r"""Long short-term memory (Hochreiter & Schmidhuber, 1997; forget gate: Gers et al., 2000).

    .. math::
        i_t &= \mathrm{sigmoid}(W_{ix} x_t + W_{ih} h_{t-1} + b_i) \quad\text{(input gate)} \\
        f_t &= \mathrm{sigmoid}(W_{fx} x_t + W_{fh} h_{t-1} + b_f) \quad\text{(forget gate)} \\
        g_t &= \tanh(W_{gx} x_t + W_{gh} h_{t-1} + b_g) \\
        o_t &= \mathrm{sigmoid}(W_{ox} x_t + W_{oh} h_{t-1} + b_o) \quad\text{(output gate)} \\
        c_t &= f_t \odot c_{t-1} + i_t \odot g_t, \qquad h_t = o_t \odot \tanh(c_t)

    The state is the pair ``(h, c)``; a step outputs ``h_t``. Parameters: ``weight_ih`` (4H, X) and
    ``weight_hh`` (4H, H) with gates stacked in the order i, f, g, o (as ``torch.nn.LSTM``),
    ``bias`` (4H,). Weights are U(-1/√H, 1/√H); the forget-gate bias starts at 1 (Jozefowicz et
    al., 2015) so that memories are kept early in training, the other biases at 0.
    """

    weight_ih: jax.Array
    weight_hh: jax.Array
    bias: jax.Array

    def __init__(self, input_size: int, hidden_size: int, *, key: jax.Array):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        k1, k2 = jax.random.split(key)
        s = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = uniform_init(k1, (4 * hidden_size, input_size), s)
        self.weight_hh = uniform_init(k2, (4 * hidden_size, hidden_size), s)
        self.bias = jnp.zeros((4 * hidden_size,)).at[hidden_size : 2 * hidden_size].set(1.0)

    def init_state(self) -> tuple[jax.Array, jax.Array]:
        zeros = jnp.zeros((self.hidden_size,), self._dtype())
        return zeros, zeros

    def project(self, x: jax.Array) -> jax.Array:
        return x @ self.weight_ih.T + self.bias

    def step(self, state: tuple[jax.Array, jax.Array], p: jax.Array):
        h, c = state
        i, f, g, o = jnp.split(p + self.weight_hh @ h, 4)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h
