"""The linear recurrent unit (LRU): a complex diagonal linear recurrence."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell


class LRU(AssociativeCell):
    r"""Linear recurrent unit (Orvieto et al., 2023, "Resurrecting recurrent neural networks for
    long sequences").

    .. math::
        \lambda &= \exp(-\exp(\nu) + i \exp(\theta)) \in \mathbb{C}^N \\
        h_t &= \lambda \odot h_{t-1} + \gamma \odot (B x_t), \qquad \gamma = \exp(\gamma_{\log}) \\
        y_t &= \mathrm{Re}(C h_t) + D x_t

    The state h ∈ ℂ^N is complex (complex64 in float32, and in bfloat16/float16, whose outputs
    are then float32). |λ| = exp(−exp(ν)) < 1 for every real ν
    (the paper's stable exponential parameterisation), so the recurrence cannot blow up, and the
    phase is exp(θ). At initialisation λ is drawn uniformly on the ring r_min ≤ |λ| ≤ r_max
    (uniform in area: |λ|² ~ U[r_min², r_max²]) with phase U[0, max_phase], and the normaliser is
    γ = sqrt(1 − |λ|²); afterwards γ is learned on its own through γ_log, as in the paper.

    Sizes: N = ``state_size`` (default ``hidden_size``); B ∈ ℂ^{N×X}; C ∈ ℂ^{H×N} with
    H = ``hidden_size``, so the output y_t has size H (``output_size == hidden_size``). The skip
    term D x_t is the paper's diagonal D ⊙ x_t (D ∈ ℝ^H) when ``input_size == hidden_size``, and a
    dense D ∈ ℝ^{H×X} otherwise (the paper has equal input and output sizes).

    Every parameter is real: B and C are stored as real and imaginary parts (``B_re``, ``B_im``,
    ``C_re``, ``C_im``), so gradients (and finite differences) are real; only the state is complex.
    Initialisation follows the paper: B's parts ~ N(0, 1/(2X)), C's parts ~ N(0, 1/(2N)),
    D ~ N(0, 1). The defaults r_min = 0.9, r_max = 0.999, max_phase = π/10 favour long memory (the
    paper tunes them per task; r_min = 0, r_max = 1, max_phase = 2π is its generic ring).

    The step is affine in h with a diagonal transition, so the element is (λ, γ ⊙ B x_t) and
    composes as (a₁, b₁) then (a₂, b₂) = (a₂a₁, a₂b₁ + b₂).
    """

    nu_log: jax.Array
    theta_log: jax.Array
    gamma_log: jax.Array
    B_re: jax.Array
    B_im: jax.Array
    C_re: jax.Array
    C_im: jax.Array
    D: jax.Array
    state_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        key: jax.Array,
        state_size: int | None = None,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = math.pi / 10,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        n = hidden_size if state_size is None else _checks.positive_int("state_size", state_size)
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"the ring needs 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if not max_phase > 0.0:
            raise ValueError(f"max_phase must be positive, got {max_phase}")
        self.state_size = n
        k_nu, k_th, k_b1, k_b2, k_c1, k_c2, k_d = jax.random.split(key, 7)
        u1 = jax.random.uniform(k_nu, (n,))
        u2 = jax.random.uniform(k_th, (n,))
        # |λ|² ~ U[r_min², r_max²]  ⇔  ν = −½ log(u (r_max² − r_min²) + r_min²), stored as log ν.
        nu = -0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2)
        self.nu_log = jnp.log(nu)
        self.theta_log = jnp.log(max_phase * u2)
        self.gamma_log = 0.5 * jnp.log1p(-jnp.exp(-2.0 * nu))  # log sqrt(1 − |λ|²)
        sb = 1.0 / math.sqrt(2 * input_size)
        sc = 1.0 / math.sqrt(2 * n)
        self.B_re = sb * jax.random.normal(k_b1, (n, input_size))
        self.B_im = sb * jax.random.normal(k_b2, (n, input_size))
        self.C_re = sc * jax.random.normal(k_c1, (hidden_size, n))
        self.C_im = sc * jax.random.normal(k_c2, (hidden_size, n))
        d_shape = (hidden_size,) if input_size == hidden_size else (hidden_size, input_size)
        self.D = jax.random.normal(k_d, d_shape)

    @property
    def decay(self) -> jax.Array:
        """λ = exp(−exp(ν) + i exp(θ)), complex of shape (N,)."""
        return jnp.exp(self._complex(-jnp.exp(self.nu_log), jnp.exp(self.theta_log)))

    def init_state(self) -> jax.Array:
        return jnp.zeros((self.state_size,), self._complex_dtype())

    def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        gamma = jnp.exp(self.gamma_log)
        b = self._complex(gamma * (self.B_re @ x), gamma * (self.B_im @ x))
        skip = self.D * x if self.D.ndim == 1 else self.D @ x
        return b, skip

    def element(self, p):
        b, _ = p
        return self.decay, b

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        return a * state + b

    def readout(self, state: jax.Array, p) -> jax.Array:
        _, skip = p
        return self.C_re @ jnp.real(state) - self.C_im @ jnp.imag(state) + skip
