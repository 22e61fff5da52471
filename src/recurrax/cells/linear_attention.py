"""Linear attention: causal attention with a feature map, run as a recurrence."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init

EPS = 1e-6


def elu_plus_one(z: jax.Array) -> jax.Array:
    """φ(z) = elu(z) + 1 > 0."""
    return jax.nn.elu(z) + 1.0


class LinearAttention(AssociativeCell):
    r"""Causal linear attention as a recurrence (Katharopoulos et al., 2020, "Transformers are RNNs:
    fast autoregressive transformers with linear attention").

    .. math::
        q_t, k_t, v_t &= W_q x_t + b_q,\ W_k x_t + b_k,\ W_v x_t + b_v \\
        S_t &= S_{t-1} + \phi(k_t) v_t^\top \in \mathbb{R}^{K \times V}, \qquad
        z_t = z_{t-1} + \phi(k_t) \in \mathbb{R}^K \\
        y_t &= \frac{S_t^\top \phi(q_t)}{z_t^\top \phi(q_t) + \varepsilon}, \qquad
        \phi = \mathrm{elu} + 1, \ \varepsilon = 10^{-6}

    One head, K = ``key_size`` (default 16), V = ``value_size`` (default ``hidden_size``); the
    output y_t has size V (``output_size``), with no output projection. The state is the pair
    (S, z), zeros at the start. The transition is a pure addition, so the element is
    (φ(k_t) v_tᵀ, φ(k_t)) and elements compose by summing; y_t is a ratio of sums, so it stays
    O(1) however long the sequence (S and z grow linearly with t).

    Parameters: ``weight`` (2K + V, X) and ``bias`` (2K + V,) stacked [q; k; v],
    U(−1/√X, 1/√X).
    """

    weight: jax.Array
    bias: jax.Array
    key_size: int = eqx.field(static=True)
    value_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        key: jax.Array,
        key_size: int = 16,
        value_size: int | None = None,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.key_size = _checks.positive_int("key_size", key_size)
        self.value_size = hidden_size if value_size is None else _checks.positive_int("value_size", value_size)
        k1, k2 = jax.random.split(key)
        s = 1.0 / math.sqrt(input_size)
        rows = 2 * self.key_size + self.value_size
        self.weight = uniform_init(k1, (rows, input_size), s)
        self.bias = uniform_init(k2, (rows,), s)

    @property
    def output_size(self) -> int:
        return self.value_size

    def init_state(self):
        dtype = self._dtype()
        return jnp.zeros((self.key_size, self.value_size), dtype), jnp.zeros((self.key_size,), dtype)

    def project(self, x: jax.Array):
        z = self.weight @ x + self.bias
        k_size = self.key_size
        q, k, v = z[:k_size], z[k_size : 2 * k_size], z[2 * k_size :]
        return elu_plus_one(q), elu_plus_one(k), v

    def element(self, p):
        _, phi_k, v = p
        return jnp.outer(phi_k, v), phi_k

    def combine(self, earlier, later):
        s1, z1 = earlier
        s2, z2 = later
        return s1 + s2, z1 + z2

    def apply(self, e, state):
        ds, dz = e
        s, z = state
        return s + ds, z + dz

    def readout(self, state, p) -> jax.Array:
        s, z = state
        phi_q, _, _ = p
        return (phi_q @ s) / (z @ phi_q + EPS)
