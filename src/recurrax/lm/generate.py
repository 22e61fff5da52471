"""Text generation from a language model: prompt priming, temperature, top-k, top-p, a seed.

Sampling from the softmax :math:`p_v \\propto \\exp(z_v / \\tau)` at temperature τ; top-k keeps the
k most probable tokens (and any tied with the k-th), top-p (nucleus sampling, Holtzman et al.,
2020) keeps the smallest set of most probable tokens whose probability reaches p; the rest get
probability zero.
"""

from __future__ import annotations

from typing import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


def filter_logits(logits: jax.Array, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> jax.Array:
    """Logits after temperature scaling and top-k / top-p truncation (removed tokens get -inf),
    shifted so that the largest is 0 (the same distribution): (z − max z) / τ, the largest kept
    at exactly 0, so that a tiny τ (even one float32 flushes to 0) samples the most probable token
    instead of overflowing."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    shifted = logits - jnp.max(logits)
    logits = jnp.where(shifted == 0, 0.0, shifted / temperature)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        kth = jnp.sort(logits)[-min(top_k, logits.shape[-1])]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        order = jnp.argsort(-logits)
        probs = jax.nn.softmax(logits[order])
        before = jnp.cumsum(probs) - probs  # probability of the tokens ranked above each one
        keep_sorted = before < top_p
        keep = jnp.zeros_like(keep_sorted).at[order].set(keep_sorted)
        logits = jnp.where(keep, logits, -jnp.inf)
    return logits


def check_sampling(length: int, *, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> None:
    """Raise ``ValueError`` for a negative ``length`` or sampling options :func:`filter_logits` refuses."""
    if length < 0:
        raise ValueError(f"length must be non-negative, got {length}")
    filter_logits(jnp.zeros(2), temperature=temperature, top_k=top_k, top_p=top_p)


def generate(model, prompt_ids: Sequence[int], length: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int = 0, on_token: Callable[[int], None] | None = None) -> list[int]:
    """Sample ``length`` tokens after priming the model with ``prompt_ids`` (at least one id).

    ``on_token`` is called with each id as soon as it is sampled, so text can stream out.
    """
    prompt_ids = np.asarray(prompt_ids)
    if prompt_ids.ndim != 1 or len(prompt_ids) == 0:
        raise ValueError("generation needs a prompt of at least one token")
    prompt_ids = np.asarray(_checks.token_ids(prompt_ids, model.vocab_size, "prompt token ids"), np.int32)
    check_sampling(length, temperature=temperature, top_k=top_k, top_p=top_p)
    # Python numbers: the compiled step takes the options as constants (an array would be traced).
    temperature = float(temperature)
    top_k, top_p = (None if top_k is None else int(top_k)), (None if top_p is None else float(top_p))
    state, logits = _prime(model, jnp.asarray(prompt_ids))
    key = jax.random.key(seed)
    out = []
    for i in range(length):
        state, logits, token = _sample_step(model, state, logits, jax.random.fold_in(key, i), temperature, top_k, top_p)
        token = int(token)
        out.append(token)
        if on_token is not None:
            on_token(token)
    return out


# Compiled once per model structure (and prompt length, sampling options), not at every call of
# :func:`generate`.
@eqx.filter_jit
def _prime(model, tokens):
    """The state after reading the prompt and the logits of the token that follows it."""
    logits, state = model(tokens, return_state=True)
    return state, logits[-1]


@eqx.filter_jit
def _sample_step(model, state, logits, key, temperature, top_k, top_p):
    """Draw a token from ``logits`` as the options filter them, and step the model on it."""
    token = jax.random.categorical(key, filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p))
    state, logits = model.step(state, token)
    return state, logits, token
