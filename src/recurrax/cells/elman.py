"""Elman networks: the simplest recurrent cell, and the variant with a forget gate."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .activations import get_activation
from .base import Cell, uniform_init


class Elman(Cell):
    r"""Elman network (Elman, 1990, "Finding structure in time").

    .. math::  h_t = \sigma(W_{hh} h_{t-1} + W_{hx} x_t + b)

    ``σ`` is ``activation`` (``"tanh"`` by default; ``"relu"``, ``"sigmoid"``, ``"identity"``).
    The output of a step is ``h_t``. Parameters: ``weight_ih`` = W_hx (H, X), ``weight_hh`` = W_hh
    (H, H), ``bias`` = b (H,), initialised U(-1/√H, 1/√H).

    >>> import jax, recurrax
    >>> cell = recurrax.Elman(3, 8, key=jax.random.key(0))
    >>> h, y = cell(cell.init_state(), jax.numpy.ones(3))
    >>> h.shape
    (8,)
    """

    weight_ih: jax.Array
    weight_hh: jax.Array
    bias: jax.Array
    activation: str = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, activation: str = "tanh", key: jax.Array):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        get_activation(activation)
        self.activation = activation
        k1, k2, k3 = jax.random.split(key, 3)
        s = 1.0 / math.sqrt(hidden_size)
        self.weight_ih = uniform_init(k1, (hidden_size, input_size), s)
        self.weight_hh = uniform_init(k2, (hidden_size, hidden_size), s)
        self.bias = uniform_init(k3, (hidden_size,), s)

    def project(self, x: jax.Array) -> jax.Array:
        return x @ self.weight_ih.T + self.bias

    def step(self, state: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = get_activation(self.activation)(p + self.weight_hh @ state)
        return h, h


class ForgetElman(Cell):
    r"""Elman network with forgetting, the "add forgetting" variant of the Elman network.

    .. math::
        f_t &= \mathrm{sigmoid}(W_{fx} x_t + W_{fh} h_{t-1} + b_f) \\
        h_t &= \sigma(W_{hx} x_t + W_{hh} (f_t \odot h_{t-1}) + b)

    The forget gate ``f_t`` erases parts of the memory before it is read. (The text writes the
    second line as σ(θ₃ᵀx̄ + θ₄ᵀh ⊙ f); we place the gate on the memory, f ⊙ h, as the text does
    explicitly for the minimal gated unit.) ``σ`` is ``activation``, ``"tanh"`` by default.
    Parameters: ``weight_ih`` = [W_fx; W_hx] (2H, X), ``bias`` = [b_f; b] (2H,),
    ``weight_fh`` = W_fh (H, H), ``weight_hh`` = W_hh (H, H).
    """

    weight_ih: jax.Array
    bias: jax.Array
    weight_fh: jax.Array
    weight_hh: jax.Array
    activation: str = eqx.field(static=True)

    def __init__(self, input_size: int, hidden_size: int, *, activation: str = "tanh", key: jax.Array):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        get_activation(activation)
        self.activation = activation
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
        h = get_activation(self.activation)(p_h + self.weight_hh @ (f * state))
        return h, h
