"""RG-LRU: the real-gated linear recurrent unit of Griffin / Hawk."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init
from .s6 import inverse_softplus

MAX_SQRT_GRADIENT = 1000.0


@jax.custom_jvp
def sqrt_bounded_derivative(x: jax.Array) -> jax.Array:
    """√x whose derivative is capped at ``MAX_SQRT_GRADIENT`` (finite as x → 0)."""
    return jnp.sqrt(x)


@sqrt_bounded_derivative.defjvp
def _sqrt_bounded_derivative_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    return y, dx / jnp.maximum(2.0 * y, 1.0 / MAX_SQRT_GRADIENT)


class RGLRU(AssociativeCell):
    r"""Real-gated linear recurrent unit (De et al., 2024, "Griffin: mixing gated linear recurrences
    with local attention for efficient language models").

    .. math::
        x'_t &= W_{in} x_t + b_{in} \\
        r_t &= \mathrm{sigmoid}(W_a x_t + b_a), \qquad i_t = \mathrm{sigmoid}(W_x x_t + b_x) \\
        \log a_t &= -c \,\mathrm{softplus}(-\Lambda) \odot r_t \quad (a_t = \sigma(\Lambda)^{c r_t},\ c = 8) \\
        h_t &= a_t \odot h_{t-1} + \sqrt{1 - a_t^2} \odot (i_t \odot x'_t)

    The input x_t (size X) is projected to H = ``hidden_size`` features x'_t, and the gates read
    x_t itself; the output is y_t = h_t (size H). In Griffin the gates read the (convolved) RG-LRU
    input directly; here they read the layer input, and Griffin's surrounding block (convolution,
    GeLU branch, output gating) is left to the model that uses the cell.

    a_t is computed in log space, and sqrt(1 − a_t²) = sqrt(−expm1(2 log a_t)) is exact for a_t
    near 1; its derivative is capped at 1000 (it is infinite where a_t → 1, e.g. when r_t
    underflows to 0), so gradients stay finite. Λ is initialised so that a^c = σ(Λ)^c is uniform in
    [``a_min``, ``a_max``] = [0.9, 0.999], as in the paper. Diagonal transition: the element is
    (a_t, sqrt(1 − a_t²) ⊙ i_t ⊙ x'_t), composed as in :class:`LinearRecurrence`.

    Parameters: ``weight`` (3H, X) and ``bias`` (3H,) stacked [x'; r; i], U(−1/√X, 1/√X);
    ``decay_param`` Λ (H,).
    """

    weight: jax.Array
    bias: jax.Array
    decay_param: jax.Array
    c: float = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        key: jax.Array,
        c: float = 8.0,
        a_min: float = 0.9,
        a_max: float = 0.999,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        if not 0.0 < a_min <= a_max < 1.0:
            raise ValueError(f"need 0 < a_min <= a_max < 1, got a_min={a_min}, a_max={a_max}")
        if not c > 0:
            raise ValueError(f"c must be positive, got {c}")
        self.c = float(c)
        k1, k2, k3 = jax.random.split(key, 3)
        s = 1.0 / math.sqrt(input_size)
        self.weight = uniform_init(k1, (3 * hidden_size, input_size), s)
        self.bias = uniform_init(k2, (3 * hidden_size,), s)
        a_c = jax.random.uniform(k3, (hidden_size,), minval=a_min, maxval=a_max)
        # a^c = exp(−c softplus(−Λ))  ⇔  Λ = −softplus⁻¹(−log(a^c) / c)
        self.decay_param = -inverse_softplus(-jnp.log(a_c) / self.c)

    def project(self, x: jax.Array) -> jax.Array:
        return self.weight @ x + self.bias

    def element(self, p):
        x_in, k_r, k_i = jnp.split(p, 3)
        r, i = jax.nn.sigmoid(k_r), jax.nn.sigmoid(k_i)
        log_a = -self.c * jax.nn.softplus(-self.decay_param) * r
        norm = sqrt_bounded_derivative(-jnp.expm1(2.0 * log_a))
        return jnp.exp(log_a), norm * (i * x_in)

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        return a * state + b
