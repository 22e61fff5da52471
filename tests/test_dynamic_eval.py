"""Dynamic evaluation against a step-by-step reference loop, and its limits."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax.lm.batches import evaluate_text
from recurrax.lm.dynamic import evaluate_text_dynamic, tune_learning_rate
from recurrax.lm.model import LanguageModel

VOCAB = 5


@pytest.fixture(scope="module")
def model():
    return LanguageModel("gru", VOCAB, 8, embed_size=4, key=jax.random.key(0))


def reference_dynamic_nll(model, ids, learning_rate, decay, segment):
    """The algorithm written out: one Python iteration per segment, score first, then SGD step."""
    params0, static = eqx.partition(model, eqx.is_inexact_array)
    params, state, total = params0, model.init_state(), 0.0

    def nll(p, s, x, y):
        logits, s = eqx.combine(p, static)(jnp.asarray(x), s, return_state=True)
        logp = jax.nn.log_softmax(logits)
        return -jnp.sum(logp[np.arange(len(y)), y]), s

    scored_gradient = jax.jit(jax.value_and_grad(nll, has_aux=True))  # compiled once per segment length
    for lo in range(0, len(ids) - 1, segment):
        x, y = ids[lo : lo + segment], ids[lo + 1 : lo + segment + 1]
        x = x[: len(y)]
        (value, new_state), grads = scored_gradient(params, state, x, y)
        total += float(value)
        params = jax.tree_util.tree_map(
            lambda p, g, p0: p - learning_rate * g / len(y) + decay * (p0 - p), params, grads, params0
        )
        state = new_state
    return total / (len(ids) - 1)


@pytest.mark.parametrize("learning_rate,decay", [(0.5, 0.0), (0.3, 0.1)])
def test_dynamic_evaluation_matches_the_written_out_loop(model, learning_rate, decay):
    ids = np.random.default_rng(1).integers(0, VOCAB, 23)  # 22 targets: segments of 5, the last of 2
    got = evaluate_text_dynamic(model, ids, learning_rate=learning_rate, decay=decay, segment=5)
    want = reference_dynamic_nll(model, ids, learning_rate, decay, 5)
    np.testing.assert_allclose(got["valid_loss"], want, rtol=1e-5)
    np.testing.assert_allclose(got["bits_per_token"], want / math.log(2), rtol=1e-5)


def test_zero_learning_rate_is_static_evaluation(model):
    ids = np.random.default_rng(2).integers(0, VOCAB, 40)
    got = evaluate_text_dynamic(model, ids, learning_rate=0.0, segment=7)
    np.testing.assert_allclose(got["valid_loss"], evaluate_text(model, ids)["valid_loss"], rtol=1e-5)


def test_adapting_to_a_repeated_pattern_lowers_the_bits_and_tuning_finds_it(model):
    pattern = np.random.default_rng(3).integers(0, VOCAB, 10)
    ids = np.tile(pattern, 12)
    static = evaluate_text_dynamic(model, ids, learning_rate=0.0, segment=10)["bits_per_token"]
    best, tried = tune_learning_rate(model, ids, learning_rates=(0.0, 1.0), segment=10)
    assert best == 1.0
    assert tried[1]["bits_per_token"] < 0.8 * static
    assert evaluate_text(model, ids)["bits_per_token"] == pytest.approx(static, rel=1e-5)  # the model is unchanged


def test_tuning_passes_over_a_learning_rate_that_diverges(model):
    ids = np.tile(np.random.default_rng(4).integers(0, VOCAB, 10), 6)
    best, tried = tune_learning_rate(model, ids, learning_rates=(0.0, 1e4), segment=5)
    assert best == 0.0
    diverged = tried[1]
    assert diverged["valid_loss"] > 1000 and diverged["perplexity"] == math.inf  # finite nats beyond exp's range


@pytest.mark.parametrize("kwargs,message", [
    (dict(learning_rate=-0.1), "learning_rate"),
    (dict(learning_rate=float("nan")), "learning_rate"),
    (dict(learning_rate=0.1, decay=1.5), "decay"),
    (dict(learning_rate=0.1, segment=0), "segment"),
])
def test_bad_settings_are_named(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_text_dynamic(model, np.arange(5) % VOCAB, **kwargs)
