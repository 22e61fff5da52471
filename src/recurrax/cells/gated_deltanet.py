"""Gated DeltaNet: the gated delta rule with a matrix-valued state."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init
from .s6 import inverse_softplus

NORM_EPS = 1e-6


def l2_normalise(z: jax.Array) -> jax.Array:
    """z / ‖z‖ (with a tiny floor under the norm, so z = 0 stays finite)."""
    return z * jax.lax.rsqrt(jnp.sum(z * z) + NORM_EPS)


class GatedDeltaNet(AssociativeCell):
    r"""Gated DeltaNet (Yang, Kautz & Hatamizadeh, 2024, "Gated delta networks: improving Mamba2
    with delta rule"), one head, as a recurrence on a matrix state S ∈ ℝ^{V×K}.

    .. math::
        q_t &= \frac{W_q x_t + b_q}{\lVert W_q x_t + b_q \rVert}, \qquad
        k_t = \frac{W_k x_t + b_k}{\lVert W_k x_t + b_k \rVert}, \qquad v_t = W_v x_t + b_v \\
        \alpha_t &= \exp(-\mathrm{softplus}(w_\alpha^\top x_t + b_\alpha)) \in (0, 1), \qquad
        \beta_t = \mathrm{sigmoid}(w_\beta^\top x_t + b_\beta) \in (0, 1) \\
        S_t &= S_{t-1}\, \alpha_t (I - \beta_t k_t k_t^\top) + \beta_t v_t k_t^\top, \qquad y_t = S_t q_t

    i.e. S_t = α_t (S_{t−1} − β_t (S_{t−1} k_t) k_tᵀ) + β_t v_t k_tᵀ: the state forgets globally
    by α_t (the gate), and what it recalls at k_t moves a delta-rule step β_t towards v_t.
    K = ``key_size`` (default 16), V = ``value_size`` (default ``hidden_size``); the output has size
    V (``output_size``), with no output projection. q and k are L2-normalised (‖k‖ = 1 makes
    I − β k kᵀ a contraction, so the state stays bounded). b_α starts so that α = ``alpha_init``
    (0.95) where w_αᵀx = 0.

    The transition is not diagonal: the element of a step is the pair (A_t, B_t) =
    (α_t (I − β_t k_t k_tᵀ), β_t v_t k_tᵀ) of shapes (K, K) and (V, K), acting as S ↦ S A + B and
    composed by matrix products, (A₁, B₁) then (A₂, B₂) = (A₁A₂, B₁A₂ + B₂). An associative scan
    thus costs O(K³ + V K²) per combine, against O(V K) for a sequential step (``step`` does the
    rank-one update directly).

    Parameters: ``weight`` (2K + V + 2, X) and ``bias`` (2K + V + 2,) stacked [q; k; v; α; β],
    U(−1/√X, 1/√X) (but b_α as above).
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
        alpha_init: float = 0.95,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.key_size = _checks.positive_int("key_size", key_size)
        self.value_size = hidden_size if value_size is None else _checks.positive_int("value_size", value_size)
        if not 0.0 < alpha_init < 1.0:
            raise ValueError(f"alpha_init must be in (0, 1), got {alpha_init}")
        k1, k2 = jax.random.split(key)
        s = 1.0 / math.sqrt(input_size)
        rows = 2 * self.key_size + self.value_size + 2
        self.weight = uniform_init(k1, (rows, input_size), s)
        bias = uniform_init(k2, (rows,), s)
        self.bias = bias.at[-2].set(inverse_softplus(-jnp.log(jnp.asarray(alpha_init, bias.dtype))))

    @property
    def output_size(self) -> int:
        return self.value_size

    def init_state(self) -> jax.Array:
        return jnp.zeros((self.value_size, self.key_size), self._dtype())

    def project(self, x: jax.Array):
        z = self.weight @ x + self.bias
        k_size, v_size = self.key_size, self.value_size
        q = l2_normalise(z[:k_size])
        k = l2_normalise(z[k_size : 2 * k_size])
        v = z[2 * k_size : 2 * k_size + v_size]
        alpha = jnp.exp(-jax.nn.softplus(z[-2]))
        beta = jax.nn.sigmoid(z[-1])
        return q, k, v, alpha, beta

    def element(self, p):
        _, k, v, alpha, beta = p
        eye = jnp.eye(self.key_size, dtype=k.dtype)
        return alpha * (eye - beta * jnp.outer(k, k)), beta * jnp.outer(v, k)

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a1 @ a2, b1 @ a2 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        return state @ a + b

    def readout(self, state: jax.Array, p) -> jax.Array:
        return state @ p[0]

    def step(self, state: jax.Array, p):
        q, k, v, alpha, beta = p
        new = alpha * (state - beta * jnp.outer(state @ k, k)) + beta * jnp.outer(v, k)
        return new, new @ q
