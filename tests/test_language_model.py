"""RNN language model: batches, evaluation with a carried state, weight tying, sampling filters, generation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax.lm.batches import ContiguousBatches, evaluate_text
from recurrax.lm.generate import filter_logits, generate
from recurrax.lm.model import LanguageModel

V = 11


def lm(**kw):
    return LanguageModel("gru", V, 8, embed_size=8, key=jax.random.key(0), **kw)


def test_contiguous_batches_continue_each_stream():
    ids = np.arange(1000) % 97
    source = ContiguousBatches(ids, batch_size=4, window=10, seed=3)
    a, b = source.batch(2, 0), source.batch(2, 1)
    np.testing.assert_array_equal(a["targets"][:, :-1], a["inputs"][:, 1:])
    np.testing.assert_array_equal(b["inputs"][:, 0], a["targets"][:, -1])  # the next window continues the stream
    stream = source.inputs[1]
    np.testing.assert_array_equal(stream, ids[source.stream_length : 2 * source.stream_length])
    with pytest.raises(ValueError, match="too few"):
        ContiguousBatches(ids[:50], batch_size=4, window=10)


def test_evaluation_carries_the_state_across_windows():
    model = lm()
    ids = np.random.default_rng(0).integers(0, V, 57)
    logits = model(jnp.asarray(ids[:-1]))  # the whole text in one pass
    nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), ids[1:, None], 1).mean()
    result = evaluate_text(model, ids, window=10)
    np.testing.assert_allclose(result["valid_loss"], nll, rtol=1e-5)
    np.testing.assert_allclose(result["bits_per_token"], nll / math.log(2), rtol=1e-5)


def test_tied_weights_use_the_embedding_as_output_matrix():
    model = lm(tie_weights=True)
    assert model.output_weight is None
    tokens = jnp.array([1, 2, 3])
    hs = model.stack(model.embedding[tokens])
    np.testing.assert_allclose(model(tokens), hs @ model.embedding.T + model.output_bias, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tie_weights needs embed_size"):
        LanguageModel("gru", V, 8, embed_size=4, tie_weights=True, key=jax.random.key(0))


def test_filters_against_their_definitions():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=20)
    top3 = np.asarray(filter_logits(jnp.asarray(logits), top_k=3))
    assert np.isfinite(top3).sum() == 3 and set(np.flatnonzero(np.isfinite(top3))) == set(np.argsort(logits)[-3:])
    p = np.exp(logits - logits.max())
    p /= p.sum()
    order = np.argsort(-p)
    needed = np.searchsorted(np.cumsum(p[order]), 0.8) + 1  # smallest prefix with mass >= 0.8
    nucleus = np.asarray(filter_logits(jnp.asarray(logits), top_p=0.8))
    assert set(np.flatnonzero(np.isfinite(nucleus))) == set(order[:needed])
    scaled = np.asarray(filter_logits(jnp.asarray(logits), temperature=0.5))
    np.testing.assert_allclose(scaled, (logits - logits.max()) / 0.5, rtol=1e-6, atol=1e-6)
    keys = jax.random.split(jax.random.key(0), 16)
    for options in (dict(), dict(top_p=0.5), dict(top_k=3)):  # τ → 0: the most probable token, no overflow
        tiny = filter_logits(jnp.asarray(logits, jnp.float32) - 5.0, temperature=1e-39, **options)
        draws = jax.vmap(lambda k: jax.random.categorical(k, tiny))(keys)
        assert set(np.asarray(draws).tolist()) == {int(np.argmax(logits))}
    for bad in (dict(temperature=0.0), dict(top_k=0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            filter_logits(jnp.asarray(logits), **bad)


def test_greedy_generation_follows_the_full_sequence_model():
    model = lm()
    prompt = [1, 4, 2]
    streamed = []
    out = generate(model, prompt, 6, top_k=1, on_token=streamed.append)
    assert streamed == out
    logits = np.asarray(model(jnp.asarray(prompt + out[:-1])))
    np.testing.assert_array_equal(np.argmax(logits[len(prompt) - 1 :], -1), out)


def test_sampling_is_reproducible_from_a_seed():
    model = lm()
    a = generate(model, [1], 20, seed=5)
    assert a == generate(model, [1], 20, seed=5)
    assert a != generate(model, [1], 20, seed=6)
    assert all(0 <= t < V for t in a)


@pytest.mark.parametrize("level, text, prompt", [("word", "a b c\nb c a\n" * 3, "a b"), ("char", "abc\nbca\n" * 3, "ab")])
def test_a_streamed_sample_adds_up_to_the_text_returned(level, text, prompt):
    from recurrax.lm.job import sample_text
    from recurrax.lm.text import build_vocabulary

    vocab = build_vocabulary(text, level)
    lm = LanguageModel("gru", len(vocab), 8, key=jax.random.key(0))
    pieces = []
    sample = sample_text(lm, vocab, prompt, 30, seed=1, stream=pieces.append)
    assert "".join(pieces) == sample and pieces[0] == prompt
    if level == "word":  # words joined by single spaces, the end of a line a bare newline
        assert "\n" in sample and " \n" not in sample and "\n " not in sample and "  " not in sample


def test_default_prompt_is_one_the_vocabulary_has():
    from recurrax.lm.job import default_prompt
    from recurrax.lm.text import build_vocabulary

    words = build_vocabulary("a cat sat\non a mat\n", "word")
    assert default_prompt(words, "the cat sat") == "cat"  # "the" is not a word of it
    assert default_prompt(build_vocabulary("The cat\n", "word"), "cat") == "The "
    assert default_prompt(words) in words and default_prompt(words) not in (words.unk, words.eos)
    chars = build_vocabulary("abc\n", "char")
    assert default_prompt(chars, "xbc") == "b" and default_prompt(build_vocabulary("The cat", "char")) == "The "


def test_text_evaluations_share_one_compiled_window(monkeypatch):
    """token_nll compiles its window once for a model structure: scoring again, with other weights
    or another text, traces nothing anew (each evaluation of a training run had compiled it)."""
    from recurrax.lm.batches import token_nll

    traces = []
    log_softmax = jax.nn.log_softmax
    monkeypatch.setattr(jax.nn, "log_softmax", lambda *a, **k: traces.append(1) or log_softmax(*a, **k))
    ids = np.random.default_rng(0).integers(0, V, 300)
    first = token_nll(lm(), ids, window=64)
    again = token_nll(LanguageModel("gru", V, 8, embed_size=8, key=jax.random.key(5)), ids[:150], window=64)
    assert len(traces) == 1
    assert first.shape == (299,) and again.shape == (149,)
    assert np.all(np.isfinite(first)) and not np.allclose(first[:149], again)


def test_generation_compiles_once_and_takes_array_options(monkeypatch):
    """A second generate with the same model structure and options traces nothing new, and
    sampling options given as arrays act as the numbers they hold."""
    traces = []
    categorical = jax.random.categorical
    monkeypatch.setattr(jax.random, "categorical", lambda *a, **k: traces.append(1) or categorical(*a, **k))
    generate(lm(), [1, 2], 3, temperature=0.5)
    generate(LanguageModel("gru", V, 8, embed_size=8, key=jax.random.key(3)), [3, 4], 5, temperature=0.5, seed=1)
    assert len(traces) == 1
    as_numbers = generate(lm(), [3, 4], 5, temperature=0.5, top_k=V - 1, seed=1)
    as_arrays = generate(lm(), [3, 4], 5, temperature=jnp.float32(0.5), top_k=np.int64(V - 1), seed=1)
    assert as_arrays == as_numbers
