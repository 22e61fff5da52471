"""Nearest-neighbour memory (kNN-LM with a cache) against brute-force NumPy and the written-out mixture."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax.lm import memory as nn
from recurrax.lm.batches import token_nll
from recurrax.lm.model import LanguageModel


def brute_force_neighbours(keys, key_tokens, key_next, queries, tokens, next_tokens, k):
    """For each query t: distances to every stored key and every earlier query that read the same
    token, computed as ‖q − k‖² from the differences, sorted, the k smallest (inf-padded)."""
    distances = np.full((len(queries), k), np.inf)
    values = np.zeros((len(queries), k), np.int64)
    for t, (q, a) in enumerate(zip(queries, tokens)):
        candidates = [(float(np.sum((q - key) ** 2)), int(v)) for key, b, v in zip(keys, key_tokens, key_next) if b == a]
        candidates += [(float(np.sum((q - queries[j]) ** 2)), int(next_tokens[j])) for j in range(t) if tokens[j] == a]
        candidates.sort()
        for i, (d, v) in enumerate(candidates[:k]):
            distances[t, i], values[t, i] = d, v
    return distances, values


def test_neighbours_equal_a_brute_force_search_over_the_memory_and_the_scored_past():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(50, 6)).astype(np.float32)
    key_tokens, key_next = rng.integers(0, 4, 50), rng.integers(0, 5, 50)
    queries = rng.normal(size=(30, 6)).astype(np.float32)
    tokens, next_tokens = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
    tokens[-1] = 7  # a token the memory never read: only earlier queries (none) are candidates
    memory = nn.Memory(keys, key_tokens, key_next)
    for k in (3, 25):  # 25 exceeds some tokens' candidates: the rest stays inf
        got_d, got_v = nn.neighbours(memory, queries, tokens, next_tokens, k=k, block=7)
        want_d, want_v = brute_force_neighbours(keys, key_tokens, key_next, queries, tokens, next_tokens, k)
        np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(got_v[np.isfinite(want_d)], want_v[np.isfinite(want_d)])
    assert np.all(np.isinf(got_d[-1]))


def test_memory_probability_is_the_softmax_over_neighbours_that_predict_the_target():
    distances = np.array([[0.5, 1.0, 2.0], [0.0, np.inf, np.inf], [np.inf, np.inf, np.inf]])
    values = np.array([[3, 1, 3], [2, 0, 0], [0, 0, 0]])
    targets = np.array([3, 1, 0])
    tau = 0.7
    w = np.exp(-distances[0] / tau)
    want = [(w[0] + w[2]) / w.sum(), 0.0, 0.0]  # row 2 has no neighbours at all
    np.testing.assert_allclose(nn.memory_probability(distances, values, targets, tau), want, rtol=1e-12)


def test_mixture_and_tuning():
    model_nll = np.array([0.5, 2.0, 1.0])
    p_mem = np.array([0.9, 0.0, 0.3])
    np.testing.assert_allclose(nn.mixed_nll(model_nll, p_mem, 0.0), model_nll)
    np.testing.assert_allclose(nn.mixed_nll(model_nll, p_mem, 0.25),
                               -np.log(0.75 * np.exp(-model_nll) + 0.25 * p_mem))
    distances = np.zeros((3, 2))
    targets = np.array([1, 2, 3])
    right, wrong = np.stack([targets, targets], 1), np.stack([targets + 1, targets + 1], 1)
    assert nn.tune(model_nll, distances, right, targets)[0] == max(nn.WEIGHTS)  # a memory always right
    assert nn.tune(model_nll, distances, wrong, targets)[0] == 0.0              # a memory always wrong


@pytest.fixture(scope="module")
def tiny_lm():
    return LanguageModel("gru", 6, 8, embed_size=4, key=jax.random.key(0))


def test_hidden_states_read_the_text_as_one_sequence_or_as_pieces(tiny_lm):
    ids = np.random.default_rng(1).integers(0, 6, 49).astype(np.int32)
    hs, _ = tiny_lm.hidden(jnp.asarray(ids[:-1]))
    np.testing.assert_allclose(nn.hidden_states(tiny_lm, ids, window=10), hs, rtol=1e-5, atol=1e-6)
    # what the softmax reads: the logits are the output layer applied to these states
    np.testing.assert_allclose(tiny_lm._logits(hs), tiny_lm(jnp.asarray(ids[:-1])), rtol=1e-5, atol=1e-6)
    pieces = nn.hidden_states(tiny_lm, ids, streams=3, window=4)   # 48 positions: pieces of 16
    for i in range(3):
        want, _ = tiny_lm.hidden(jnp.asarray(ids[16 * i : 16 * (i + 1)]))
        np.testing.assert_allclose(pieces[16 * i : 16 * (i + 1)], want, rtol=1e-5, atol=1e-6)


def test_memory_scores_are_causal_and_the_training_text_is_recalled(tiny_lm):
    rng = np.random.default_rng(2)
    train = rng.integers(0, 6, 300).astype(np.int32)
    memory = nn.build_memory(tiny_lm, train, streams=4)
    assert len(memory) == 299 and memory.keys.shape == (299, 8)

    def mixed(ids):
        d, v = nn.text_neighbours(tiny_lm, memory, ids, k=8)
        return nn.mixed_nll(token_nll(tiny_lm, ids), nn.memory_probability(d, v, ids[1:], 0.1), 0.5)

    text = rng.integers(0, 6, 60).astype(np.int32)
    changed = text.copy()
    changed[40:] = (changed[40:] + 1) % 6
    # position t scores ids[t + 1] from ids[:t + 1]: the first 39 scores cannot see the change
    np.testing.assert_allclose(mixed(text)[:39], mixed(changed)[:39], rtol=1e-6)
    # a verbatim piece of the training text (from the middle of a stream the memory read) is recalled
    # once the piece's state has forgotten where the piece started: the nearest key is the same
    # position, at distance ~0, and it predicts the true next token
    piece = train[80:150]  # the memory read positions 75..149 as one of its four streams
    distances, values = nn.text_neighbours(tiny_lm, memory, piece, k=1)
    assert np.all(distances[20:, 0] < 1e-6)
    np.testing.assert_array_equal(values[20:, 0], piece[21:])
    recalled = nn.mixed_nll(token_nll(tiny_lm, piece), nn.memory_probability(distances, values, piece[1:], 0.1), 0.5)
    assert np.all(recalled[20:] < np.log(2) + 1e-6)  # p ≥ (1 − λ) · 0 + λ · 1


def test_bad_input_is_named(tiny_lm):
    memory = nn.Memory(np.zeros((4, 3), np.float32), np.zeros(4, int), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 3\)"):
        nn.neighbours(memory, np.zeros((2, 5)), np.zeros(2, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="one per query"):
        nn.neighbours(memory, np.zeros((2, 3)), np.zeros(3, int), np.zeros(2, int))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        nn.memory_probability(np.zeros((1, 1)), np.zeros((1, 1), int), np.zeros(1, int), 0.0)
    with pytest.raises(ValueError, match=r"memory weight must be in \[0, 1\)"):
        nn.mixed_nll(np.zeros(1), np.zeros(1), 1.0)
    with pytest.raises(ValueError, match="at least two tokens"):
        nn.build_memory(tiny_lm, np.array([1]))
