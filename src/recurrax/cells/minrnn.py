"""minGRU and minLSTM: gated recurrences whose gates read only the input."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init

CANDIDATES = ("g", "linear")


def g(z: jax.Array) -> jax.Array:
    """The paper's positive activation: g(z) = z + ½ for z ≥ 0, sigmoid(z) for z < 0 (continuous)."""
    return jnp.where(z >= 0, jnp.maximum(z, 0.0) + 0.5, jax.nn.sigmoid(jnp.minimum(z, 0.0)))


def log_g(z: jax.Array) -> jax.Array:
    """log g(z), computed without overflow: log(z + ½) for z ≥ 0, log sigmoid(z) for z < 0."""
    return jnp.where(z >= 0, jnp.log(jnp.maximum(z, 0.0) + 0.5), jax.nn.log_sigmoid(jnp.minimum(z, 0.0)))


class _MinRNN(AssociativeCell):
    """Shared machinery: h_t = a_t ⊙ h_{t−1} + b_t with (a_t, b_t) from the input alone.

    Subclasses give ``_coefficients(p)`` → (a, b) and ``_log_coefficients(p)`` → (log a, log b).
    """

    weight: jax.Array
    bias: jax.Array
    log_space: bool = eqx.field(static=True)
    candidate: str = eqx.field(static=True)

    _num_blocks = 2

    def __init__(self, input_size: int, hidden_size: int, *, key: jax.Array, log_space: bool = True,
                 candidate: str = "g"):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.candidate = _checks.choice("candidate", candidate, CANDIDATES)
        self.log_space = bool(log_space)
        if self.log_space and candidate != "g":
            raise ValueError(
                "log_space=True needs a positive candidate (candidate='g'): log h̃ must exist; "
                "use log_space=False with candidate='linear'"
            )
        k1, k2 = jax.random.split(key)
        s = 1.0 / math.sqrt(input_size)
        self.weight = uniform_init(k1, (self._num_blocks * hidden_size, input_size), s)
        self.bias = uniform_init(k2, (self._num_blocks * hidden_size,), s)

    def project(self, x: jax.Array) -> jax.Array:
        return self.weight @ x + self.bias

    def _candidate(self, k: jax.Array) -> jax.Array:
        return g(k) if self.candidate == "g" else k

    def element(self, p):
        return self._log_coefficients(p) if self.log_space else self._coefficients(p)

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        if self.log_space:
            # (log a, log b): a = a₂a₁, b = a₂b₁ + b₂, both in log space.
            return a1 + a2, jnp.logaddexp(a2 + b1, b2)
        return a2 * a1, a2 * b1 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        if self.log_space:
            return jnp.exp(a) * state + jnp.exp(b)
        return a * state + b


class MinGRU(_MinRNN):
    r"""minGRU (Feng et al., 2024, "Were RNNs all we needed?").

    .. math::
        z_t = \mathrm{sigmoid}(W_z x_t + b_z), \quad
        \tilde h_t = g(W_h x_t + b_h), \quad
        h_t = (1 - z_t) \odot h_{t-1} + z_t \odot \tilde h_t

    The gate and the candidate read only x_t, so the step is affine in h_{t−1} with a diagonal
    transition: the element is (1 − z_t, z_t ⊙ h̃_t), composed as in :class:`LinearRecurrence`.

    ``candidate="g"`` (default) uses the paper's positive activation g(z) = z + ½ (z ≥ 0),
    sigmoid(z) (z < 0); ``candidate="linear"`` uses h̃_t = W_h x_t + b_h (the paper's plain form).

    ``log_space=True`` (default, the paper's recommendation for training) builds the elements as
    log-coefficients (log(1 − z_t), log z_t + log h̃_t) = (−softplus(k), −softplus(−k) + log g(·))
    and composes them with ``logaddexp`` (the parallel scan's log-sum-exp form), so products of
    many gates never underflow inside the scan; the state itself stays h (any sign, zeros at
    start), and a transition acts on it as h ↦ exp(log a) h + exp(log b). It needs the positive
    candidate. ``log_space=False`` composes (a, b) directly; both compute the same function.

    Parameters: ``weight`` (2H, X) and ``bias`` (2H,) stacked [z; h̃], U(−1/√X, 1/√X).
    """

    _num_blocks = 2

    def _coefficients(self, p):
        k_z, k_h = jnp.split(p, 2)
        z = jax.nn.sigmoid(k_z)
        return jax.nn.sigmoid(-k_z), z * self._candidate(k_h)

    def _log_coefficients(self, p):
        k_z, k_h = jnp.split(p, 2)
        return -jax.nn.softplus(k_z), -jax.nn.softplus(-k_z) + log_g(k_h)


class MinLSTM(_MinRNN):
    r"""minLSTM (Feng et al., 2024, "Were RNNs all we needed?"), with normalised gates.

    .. math::
        f_t = \mathrm{sigmoid}(W_f x_t + b_f), \quad i_t = \mathrm{sigmoid}(W_i x_t + b_i), \quad
        \tilde h_t = g(W_h x_t + b_h) \\
        f'_t = \frac{f_t}{f_t + i_t}, \quad i'_t = \frac{i_t}{f_t + i_t}, \quad
        h_t = f'_t \odot h_{t-1} + i'_t \odot \tilde h_t

    (the paper's time-independent-scale form, f' + i' = 1). The element is (f'_t, i'_t ⊙ h̃_t).
    ``log_space=True`` (default) uses the paper's log-space gates: with
    d = softplus(−k_f) − softplus(−k_i) = log i_t − log f_t, log f' = −softplus(d) and
    log i' = −softplus(−d), and composes with ``logaddexp``; ``log_space=False`` computes
    f' = sigmoid(−d), i' = sigmoid(d) (the same values; f/(f + i) is 0/0 where both gates underflow).
    ``candidate`` and ``log_space`` are as in :class:`MinGRU`.

    Parameters: ``weight`` (3H, X) and ``bias`` (3H,) stacked [f; i; h̃], U(−1/√X, 1/√X).
    """

    _num_blocks = 3

    def _coefficients(self, p):
        # f' = f / (f + i) = sigmoid(−d) with d = log i − log f: no 0/0 where both gates underflow.
        k_f, k_i, k_h = jnp.split(p, 3)
        d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        return jax.nn.sigmoid(-d), jax.nn.sigmoid(d) * self._candidate(k_h)

    def _log_coefficients(self, p):
        k_f, k_i, k_h = jnp.split(p, 3)
        d = jax.nn.softplus(-k_f) - jax.nn.softplus(-k_i)
        return -jax.nn.softplus(d), -jax.nn.softplus(-d) + log_g(k_h)
