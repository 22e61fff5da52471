"""S6: the selective state-space model of Mamba."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init


def inverse_softplus(y: jax.Array) -> jax.Array:
    """z with softplus(z) = y, for y > 0."""
    return y + jnp.log(-jnp.expm1(-y))


class S6(AssociativeCell):
    r"""S6, the selective state-space model of Mamba (Gu & Dao, 2023, "Mamba: linear-time sequence
    modeling with selective state spaces").

    The input x_t ∈ ℝ^X is first projected to D = ``hidden_size`` channels, u_t = W_in x_t (Mamba's
    input projection, without its convolution and gating branch). Then, per channel d and state
    index n (N = ``state_size``, default 16):

    .. math::
        \Delta_t &= \mathrm{softplus}(W_\Delta (W_\delta u_t) + b_\Delta) \in \mathbb{R}^D,
        \quad B_t = W_B u_t \in \mathbb{R}^N, \quad C_t = W_C u_t \in \mathbb{R}^N \\
        h_{t,dn} &= \exp(\Delta_{t,d} A_{dn})\, h_{t-1,dn} + \Delta_{t,d} B_{t,n} u_{t,d} \\
        y_{t,d} &= \sum_n C_{t,n} h_{t,dn} + D_d u_{t,d}

    with A = −exp(A_log) (S4D-real initialisation A_{dn} = −(n + 1)), the zero-order-hold Ā and
    Mamba's simplified (Euler) B̄ ≈ Δ B. Δ, B and C depend on the input (selectivity); Δ goes
    through a rank-R bottleneck W_Δ W_δ (R = ``dt_rank``, default ⌈D/16⌉, as in Mamba) and its
    bias is initialised so that Δ is log-uniform in [``dt_min``, ``dt_max``] = [0.001, 0.1].
    D (the skip) starts at ones. The state h is (D, N); the output y_t has size D = hidden_size.

    The transition is diagonal, so the element is (exp(Δ_t A), Δ_t B_t u_t), both (D, N), composed
    as (a₁, b₁) then (a₂, b₂) = (a₂a₁, a₂b₁ + b₂).

    Parameters: ``in_proj`` (D, X); ``x_proj`` (R + 2N, D) stacked [δ; B; C]; ``dt_proj`` (D, R),
    ``dt_bias`` (D,); ``A_log`` (D, N); ``skip`` (D,).
    """

    in_proj: jax.Array
    x_proj: jax.Array
    dt_proj: jax.Array
    dt_bias: jax.Array
    A_log: jax.Array
    skip: jax.Array
    state_size: int = eqx.field(static=True)
    dt_rank: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        key: jax.Array,
        state_size: int = 16,
        dt_rank: int | None = None,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.state_size = n = _checks.positive_int("state_size", state_size)
        self.dt_rank = r = math.ceil(hidden_size / 16) if dt_rank is None else _checks.positive_int("dt_rank", dt_rank)
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.in_proj = uniform_init(k1, (hidden_size, input_size), 1.0 / math.sqrt(input_size))
        self.x_proj = uniform_init(k2, (r + 2 * n, hidden_size), 1.0 / math.sqrt(hidden_size))
        self.dt_proj = uniform_init(k3, (hidden_size, r), 1.0 / math.sqrt(r))
        u = jax.random.uniform(k4, (hidden_size,))
        dt = jnp.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = inverse_softplus(dt)
        self.A_log = jnp.log(jnp.broadcast_to(jnp.arange(1, n + 1, dtype=float), (hidden_size, n)))
        self.skip = jnp.ones((hidden_size,), dtype=float)

    @property
    def A(self) -> jax.Array:
        """A = −exp(A_log), shape (D, N)."""
        return -jnp.exp(self.A_log)

    def init_state(self) -> jax.Array:
        return jnp.zeros((self.hidden_size, self.state_size), self._dtype())

    def project(self, x: jax.Array):
        u = self.in_proj @ x
        z = self.x_proj @ u
        r, n = self.dt_rank, self.state_size
        delta_low, b, c = z[:r], z[r : r + n], z[r + n :]
        delta = jax.nn.softplus(self.dt_proj @ delta_low + self.dt_bias)
        return delta, b, c, u

    def element(self, p):
        delta, b, _, u = p
        return jnp.exp(delta[:, None] * self.A), (delta * u)[:, None] * b[None, :]

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        return a * state + b

    def readout(self, state: jax.Array, p) -> jax.Array:
        _, _, c, u = p
        return state @ c + self.skip * u
