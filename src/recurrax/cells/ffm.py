"""FFM: fast and forgetful memory."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .base import AssociativeCell, uniform_init

LAYER_NORM_EPS = 1e-5


class FFM(AssociativeCell):
    r"""Fast and forgetful memory (Morad et al., 2023, "Reinforcement learning with fast and
    forgetful memory").

    With m = ``trace_size`` (default 32) and c = ``context_size`` (default 4):

    .. math::
        \tilde x_t &= (W_1 x_t + b_1) \odot \mathrm{sigmoid}(W_2 x_t + b_2) \in \mathbb{R}^m
            && \text{(input gate)} \\
        \gamma &= \exp(-|\alpha| \mathbf{1}_c^\top + i\, \mathbf{1}_m \omega^\top) \in \mathbb{C}^{m \times c},
            \quad \alpha \in \mathbb{R}^m,\ \omega \in \mathbb{R}^c \\
        S_t &= \gamma \odot S_{t-1} + \tilde x_t \mathbf{1}_c^\top \in \mathbb{C}^{m \times c}
            && \text{(aggregator)} \\
        z_t &= W_3 [\mathrm{Re}\, \mathrm{vec}(S_t); \mathrm{Im}\, \mathrm{vec}(S_t)] + b_3 \in \mathbb{R}^H \\
        g_t &= \mathrm{sigmoid}(W_4 x_t + b_4), \qquad
        y_t = \mathrm{LN}(z_t) \odot g_t + (W_5 x_t + b_5) \odot (1 - g_t)  && \text{(output gate)}

    Each trace j decays at its own rate |α_j| and each context k rotates at its own frequency
    ω_k, so S_t holds the input history under m × c exponentially decaying sinusoidal windows
    (a discounted Laplace/Fourier transform of the history). The state S (m, c) is complex
    (complex64 in float32, and in bfloat16/float16, whose outputs are then float32); the output
    y_t has size H = ``hidden_size``.

    Simplifications and choices (the paper's equations as we know them; not its code):
    the layer norm LN has no learnable scale or shift; α is initialised so that trace j keeps
    1 % of an input after τ_j steps, τ_j log-spaced over [1, ``max_horizon`` = 1024]
    (α_j = ln(100) / τ_j), and ω_k = π k / c for k = 0 … c − 1 (the first context does not
    rotate); the paper's batched closed-form aggregator is replaced by the associative scan of
    the same affine recurrence, whose element is (γ, x̃_t 1_cᵀ).

    Parameters: ``input_weight`` (2m, X), ``input_bias`` (2m,) stacked [W_1; W_2];
    ``alpha`` (m,), ``omega`` (c,); ``mix_weight`` (H, 2mc), ``mix_bias`` (H,) (W_3, b_3);
    ``output_weight`` (2H, X), ``output_bias`` (2H,) stacked [W_4; W_5]; all linear maps
    U(−1/√fan_in, 1/√fan_in).
    """

    input_weight: jax.Array
    input_bias: jax.Array
    alpha: jax.Array
    omega: jax.Array
    mix_weight: jax.Array
    mix_bias: jax.Array
    output_weight: jax.Array
    output_bias: jax.Array
    trace_size: int = eqx.field(static=True)
    context_size: int = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        key: jax.Array,
        trace_size: int = 32,
        context_size: int = 4,
        max_horizon: float = 1024.0,
    ):
        self.input_size = _checks.positive_int("input_size", input_size)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.trace_size = m = _checks.positive_int("trace_size", trace_size)
        self.context_size = c = _checks.positive_int("context_size", context_size)
        if not max_horizon >= 1.0:
            raise ValueError(f"max_horizon must be >= 1, got {max_horizon}")
        k1, k2, k3, k4, k5, k6 = jax.random.split(key, 6)
        sx = 1.0 / math.sqrt(input_size)
        sz = 1.0 / math.sqrt(2 * m * c)
        self.input_weight = uniform_init(k1, (2 * m, input_size), sx)
        self.input_bias = uniform_init(k2, (2 * m,), sx)
        horizons = jnp.exp(jnp.linspace(0.0, math.log(max_horizon), m, dtype=float))
        self.alpha = math.log(100.0) / horizons
        self.omega = math.pi * jnp.arange(c, dtype=float) / c
        self.mix_weight = uniform_init(k3, (hidden_size, 2 * m * c), sz)
        self.mix_bias = uniform_init(k4, (hidden_size,), sz)
        self.output_weight = uniform_init(k5, (2 * hidden_size, input_size), sx)
        self.output_bias = uniform_init(k6, (2 * hidden_size,), sx)

    @property
    def decay(self) -> jax.Array:
        """γ = exp(−|α| + iω), complex of shape (m, c)."""
        re = jnp.broadcast_to(-jnp.abs(self.alpha)[:, None], (self.trace_size, self.context_size))
        im = jnp.broadcast_to(self.omega[None, :], (self.trace_size, self.context_size))
        return jnp.exp(self._complex(re, im))

    def init_state(self) -> jax.Array:
        return jnp.zeros((self.trace_size, self.context_size), self._complex_dtype())

    def project(self, x: jax.Array):
        k_in, k_gate = jnp.split(self.input_weight @ x + self.input_bias, 2)
        x_tilde = k_in * jax.nn.sigmoid(k_gate)
        k_out, k_skip = jnp.split(self.output_weight @ x + self.output_bias, 2)
        return x_tilde, jax.nn.sigmoid(k_out), k_skip

    def element(self, p):
        x_tilde, _, _ = p
        b = jnp.broadcast_to(x_tilde[:, None], (self.trace_size, self.context_size))
        return self.decay, b.astype(self._complex_dtype())

    def combine(self, earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return a2 * a1, a2 * b1 + b2

    def apply(self, e, state: jax.Array) -> jax.Array:
        a, b = e
        return a * state + b

    def readout(self, state: jax.Array, p) -> jax.Array:
        _, gate, skip = p
        features = jnp.concatenate([jnp.real(state).reshape(-1), jnp.imag(state).reshape(-1)])
        z = self.mix_weight @ features + self.mix_bias
        z = (z - jnp.mean(z)) / jnp.sqrt(jnp.var(z) + LAYER_NORM_EPS)
        return z * gate + skip * (1.0 - gate)
