r"""Dynamic evaluation: a language model that goes on learning from the text it scores.

Krause, Kahembwe, Murray & Renals (2018), "Dynamic Evaluation of Neural Sequence Models", ICML.
The held-out text is cut into segments s_1, s_2, ... of ``segment`` tokens, read in order with the
recurrent state carried across them. Segment s_i is first scored with the current parameters
θ_{i-1} (its negative log-likelihood L_i counts towards the result), and only then does the model
take one gradient step on it:

.. math::
    θ_i = θ_{i-1} - η \, \nabla_θ \bar L_i(θ_{i-1}) + λ \, (θ_0 - θ_{i-1})

with \bar L_i the mean negative log-likelihood per token of s_i, η the learning rate and λ a decay
back to the trained parameters θ_0 (plain SGD; λ = 0 lets the parameters drift freely). Every
prediction still depends only on the tokens before it, so the result is the probability of the
text under a causal model, in bits per token like :func:`recurrax.lm.batches.evaluate_text`; what
changes is that recurring names, phrases and formats seen earlier in the text become more probable
later. Dropout is off, as in static evaluation.
"""

from __future__ import annotations

import math
from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .batches import text_scores

DEFAULT_SEGMENT = 20
# The learning rates tried on the validation text by :func:`tune_learning_rate` (0: static).
LEARNING_RATES = (0.0, 0.03, 0.1, 0.3, 1.0)


def _segments(ids: np.ndarray, segment: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, targets and mask of shape (number of segments, segment), the last one padded."""
    count = len(ids) - 1
    n_seg = -(-count // segment)
    pad = n_seg * segment - count
    inputs = np.pad(ids[:-1], (0, pad)).reshape(n_seg, segment)
    targets = np.pad(ids[1:], (0, pad)).reshape(n_seg, segment)
    mask = (np.arange(n_seg * segment) < count).reshape(n_seg, segment)
    return inputs, targets, mask


def evaluate_text_dynamic(model, ids: np.ndarray, *, learning_rate: float, decay: float = 0.0,
                          segment: int = DEFAULT_SEGMENT) -> dict[str, float]:
    """Bits per token of ``ids[1:]`` given the preceding ids, under dynamic evaluation.

    Returns the same keys as :func:`~recurrax.lm.batches.evaluate_text` (``learning_rate=0`` gives
    its numbers to float rounding, the state carried across the whole text), plus the settings
    used. The model passed in is not changed.
    """
    nll = token_nll_dynamic(model, ids, learning_rate=learning_rate, decay=decay, segment=segment)
    return _scores(nll, learning_rate, decay, segment)


def _scores(nll: np.ndarray, learning_rate: float, decay: float, segment: int) -> dict[str, float]:
    """:func:`~recurrax.lm.batches.text_scores` of every token's score, with the settings used."""
    return {**text_scores(nll), "learning_rate": float(learning_rate), "decay": float(decay), "segment": int(segment)}


def token_nll_dynamic(model, ids: np.ndarray, *, learning_rate: float, decay: float = 0.0,
                      segment: int = DEFAULT_SEGMENT) -> np.ndarray:
    """−log P(w_{t+1} | w_1..w_t) in nats for every token of ``ids[1:]`` under dynamic evaluation,
    shape (len(ids) − 1,), like :func:`~recurrax.lm.batches.token_nll`."""
    ids = np.asarray(ids, np.int32)
    if len(ids) < 2:
        raise ValueError("evaluation needs a text of at least two tokens")
    if not (learning_rate >= 0.0 and math.isfinite(learning_rate)):
        raise ValueError(f"learning_rate must be a finite number >= 0, got {learning_rate}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    if segment < 1:
        raise ValueError(f"segment must be a positive number of tokens, got {segment}")
    params0, static = eqx.partition(model, eqx.is_inexact_array)
    inputs, targets, mask = _segments(ids, segment)
    nll = _dynamic_nll(static, params0, model.init_state(), inputs, targets, mask,
                       jnp.float32(learning_rate), jnp.float32(decay))
    return np.asarray(nll, np.float64).reshape(-1)[: len(ids) - 1]


@eqx.filter_jit
def _dynamic_nll(static, params0, state0, inputs, targets, mask, learning_rate, decay):
    """The negative log-likelihood (nats) of every token, (segments, segment), each segment scored
    before its step."""

    def segment_nll(params, state, x, y, m):
        logits, state = eqx.combine(params, static)(x, state, mask=m, return_state=True)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1)[:, 0] * m
        return jnp.sum(nll), (state, nll)

    def body(carry, seg):
        params, state = carry
        x, y, m = seg
        (_, (state, nll)), grads = jax.value_and_grad(segment_nll, has_aux=True)(params, state, x, y, m)
        n = jnp.maximum(jnp.sum(m), 1)
        params = jax.tree_util.tree_map(
            lambda p, g, p0: p - learning_rate * g / n + decay * (p0 - p), params, grads, params0
        )
        return (params, state), nll

    _, nlls = jax.lax.scan(body, (params0, state0), (inputs, targets, mask))
    return nlls


def tune_learning_rate(model, ids: np.ndarray, *, learning_rates: Sequence[float] = LEARNING_RATES,
                       decay: float = 0.0, segment: int = DEFAULT_SEGMENT) -> tuple[float, list[dict[str, float]]]:
    """The learning rate of ``learning_rates`` with the fewest bits per token on ``ids`` (a
    validation text, never the test text), and every result tried, in order: the keys of
    :func:`evaluate_text_dynamic` and each token's negative log-likelihood as ``token_nll``."""
    tried = []
    for lr in learning_rates:
        nll = token_nll_dynamic(model, ids, learning_rate=lr, decay=decay, segment=segment)
        tried.append({**_scores(nll, lr, decay, segment), "token_nll": nll})
    finite = [r for r in tried if math.isfinite(r["bits_per_token"])]
    if not finite:
        raise FloatingPointError("dynamic evaluation diverged at every learning rate tried")
    return min(finite, key=lambda r: r["bits_per_token"])["learning_rate"], tried


__all__ = ["DEFAULT_SEGMENT", "LEARNING_RATES", "evaluate_text_dynamic", "token_nll_dynamic", "tune_learning_rate"]
