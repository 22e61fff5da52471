r"""Nearest-neighbour memory: a language model that also looks up what followed similar states.

The kNN-LM of Khandelwal, Levy, Jurafsky, Zettlemoyer & Lewis (2020), "Generalization through
Memorization", ICLR, with the cache of Grave, Joulin & Usunier (2017), "Improving Neural Language
Models with a Continuous Cache", ICLR. Every position i of the training text is stored as a key,
the top recurrent layer's output h_i that the softmax reads, with the token that followed it,
v_i = w_{i+1}; every position of the text being scored joins them as soon as its next token has
been scored. The memory's prediction at position t is a softmax over the negative squared
distances of the k nearest stored keys N_k(t), mixed into the model's:

.. math::
    p_{mem}(v \mid w_{\le t}) = \frac{\sum_{i \in N_k(t)} \exp(-\lVert h_t - h_i \rVert^2 / τ) \, [v_i = v]}
                                     {\sum_{i \in N_k(t)} \exp(-\lVert h_t - h_i \rVert^2 / τ)}, \qquad
    P(v \mid w_{\le t}) = (1 - λ) \, P_{model}(v \mid w_{\le t}) + λ \, p_{mem}(v \mid w_{\le t})

The neighbours are searched among the stored positions that read the same token as position t
(w_i = w_t): the state encodes the token just read, so the nearest keys share it anyway, and the
search costs about a tenth of an exhaustive one on English text. Keys of the scored text only
come from positions before t, so every prediction depends on the preceding tokens alone and the
result is still the probability of the text under a causal model. The weight λ and temperature τ
are chosen on a validation text (:func:`tune`), never on the test text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import equinox as eqx
import jax
import numpy as np

DEFAULT_NEIGHBOURS = 64
# At most this many query-candidate distances are held at once (16 MB in float32): searching the
# built-in corpus's validation text took 4.0 s in such blocks, 7.9 s (and 1 GB more) in blocks of 2**26.
BLOCK_ELEMENTS = 2**22
# The memory weights λ (0: the model alone) and temperatures τ tried on the validation text by :func:`tune`.
WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TEMPERATURES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class Memory:
    """Stored positions of a text: ``keys`` (n, H) float32, the token each position read
    (``tokens``, n) and the token that followed it (``next_tokens``, n)."""

    keys: np.ndarray
    tokens: np.ndarray
    next_tokens: np.ndarray

    def __len__(self) -> int:
        return len(self.keys)


def hidden_states(model, ids: np.ndarray, *, streams: int = 1, window: int = 512) -> np.ndarray:
    """The model's top-layer outputs h_t after reading each token of ``ids[:-1]``: (len(ids) − 1, H).

    The text is cut into ``streams`` contiguous pieces read side by side (a batch), the state
    carried across each piece from the model's initial state; ``streams=1`` reads the whole text
    as one sequence, as evaluation does.
    """
    ids = np.asarray(ids, np.int32)
    if len(ids) < 2:
        raise ValueError("a memory needs a text of at least two tokens")
    if streams < 1:
        raise ValueError(f"streams must be a positive number, got {streams}")
    count = len(ids) - 1
    streams = min(streams, count)
    length = -(-count // streams)                # tokens per stream, the last stream padded
    window = min(window, length)
    length = -(-length // window) * window
    inputs = np.pad(ids[:-1], (0, length * streams - count)).reshape(streams, length)
    state = jax.vmap(lambda _: model.init_state())(np.arange(streams))
    pieces = []
    for lo in range(0, length, window):
        hs, state = _streams_hidden(model, state, inputs[:, lo : lo + window])
        pieces.append(np.asarray(hs, np.float32))
    return np.concatenate(pieces, axis=1).reshape(streams * length, -1)[:count]


@eqx.filter_jit
def _streams_hidden(model, state, tokens):
    """The top hidden states of ``streams`` token windows side by side, and the states after them."""
    return jax.vmap(model.hidden)(tokens, state)


def build_memory(model, ids: np.ndarray, *, streams: int = 32) -> Memory:
    """Every position of a (training) text as a key, its token and the next token.

    The text is read as ``streams`` pieces side by side (:func:`hidden_states`), which makes
    building fast; only the first positions of each piece see a shorter history.
    """
    ids = np.asarray(ids, np.int32)
    return Memory(hidden_states(model, ids, streams=streams), ids[:-1].copy(), ids[1:].copy())


def neighbours(memory: Memory, queries: np.ndarray, tokens: np.ndarray, next_tokens: np.ndarray, *,
               k: int = DEFAULT_NEIGHBOURS, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances (n, k), ascending, and next tokens (n, k) of each query's k nearest keys.

    ``queries`` (n, H) are the states of a scored text after reading ``tokens`` (n,), followed by
    ``next_tokens`` (n,). Query t's candidates are the memory's positions and the scored text's
    positions before t that read the same token as t. Where there are fewer than k candidates,
    the remaining distances are ``inf`` (next token 0). Queries are searched ``block`` at a time
    (fewer where a token has so many candidates that the block would exceed ``BLOCK_ELEMENTS``).
    """
    queries = np.asarray(queries, np.float32)
    tokens, next_tokens = np.asarray(tokens), np.asarray(next_tokens)
    if queries.ndim != 2 or queries.shape[1] != memory.keys.shape[1]:
        raise ValueError(f"queries must have shape (n, {memory.keys.shape[1]}) like the memory's keys, "
                         f"got {queries.shape}")
    if tokens.shape != (len(queries),) or next_tokens.shape != (len(queries),):
        raise ValueError(f"tokens {tokens.shape} and next_tokens {next_tokens.shape} must have shape "
                         f"({len(queries)},), one per query")
    if k < 1:
        raise ValueError(f"k must be a positive number of neighbours, got {k}")
    n = len(queries)
    distances = np.full((n, k), np.inf, np.float32)
    values = np.zeros((n, k), np.int32)
    key_norms = np.einsum("ij,ij->i", memory.keys, memory.keys)
    query_norms = np.einsum("ij,ij->i", queries, queries)
    for token in np.unique(tokens):
        mine = np.flatnonzero(tokens == token)                 # the scored text's positions reading `token`
        stored = np.flatnonzero(memory.tokens == token)        # the memory's
        candidate_keys = np.concatenate([memory.keys[stored], queries[mine]])
        candidate_norms = np.concatenate([key_norms[stored], query_norms[mine]])
        candidate_values = np.concatenate([memory.next_tokens[stored], next_tokens[mine]])
        rows_per_block = max(1, min(block, BLOCK_ELEMENTS // len(candidate_keys)))
        for lo in range(0, len(mine), rows_per_block):
            rows = mine[lo : lo + rows_per_block]
            d = query_norms[rows, None] - 2.0 * (queries[rows] @ candidate_keys.T) + candidate_norms[None]
            d[:, len(stored):][mine[None, :] >= rows[:, None]] = np.inf   # only the scored text's past
            kk = min(k, d.shape[1])
            nearest = np.argpartition(d, kk - 1, axis=1)[:, :kk] if d.shape[1] > kk else \
                np.broadcast_to(np.arange(kk), (len(rows), kk))
            d_near = np.take_along_axis(d, nearest, axis=1)
            order = np.argsort(d_near, axis=1, kind="stable")
            distances[rows, :kk] = np.maximum(np.take_along_axis(d_near, order, axis=1), 0.0)
            values[rows, :kk] = candidate_values[np.take_along_axis(nearest, order, axis=1)]
    return distances, values


def text_neighbours(model, memory: Memory, ids: np.ndarray, *, k: int = DEFAULT_NEIGHBOURS
                    ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`neighbours` of every position of a scored text ``ids``, read as one sequence."""
    ids = np.asarray(ids, np.int32)
    return neighbours(memory, hidden_states(model, ids), ids[:-1], ids[1:], k=k)


def memory_probability(distances: np.ndarray, values: np.ndarray, targets: np.ndarray,
                       temperature: float) -> np.ndarray:
    """p_mem(target) for each row: the softmax of −distance / τ over the neighbours whose next
    token is the target (0 where no neighbour has it, or there are no neighbours)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    finite = np.isfinite(distances)
    nearest = np.where(finite[:, :1], distances[:, :1], 0.0)
    weights = np.exp(-(np.where(finite, distances, np.inf) - nearest) / temperature)  # 0 where no neighbour
    total = weights.sum(axis=1)
    hits = (weights * (values == np.asarray(targets)[:, None])).sum(axis=1)
    return np.divide(hits, total, out=np.zeros_like(hits), where=total > 0)


def mixed_nll(model_nll: np.ndarray, memory_p: np.ndarray, weight: float) -> np.ndarray:
    """−log((1 − λ) P_model(target) + λ p_mem(target)) per token, in nats, from the model's
    negative log-likelihoods; λ = ``weight``."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"the memory weight must be in [0, 1), got {weight}")
    return -np.log((1.0 - weight) * np.exp(-np.asarray(model_nll)) + weight * memory_p)


def tune(model_nll: np.ndarray, distances: np.ndarray, values: np.ndarray, targets: np.ndarray, *,
         weights: Sequence[float] = WEIGHTS, temperatures: Sequence[float] = TEMPERATURES) -> tuple[float, float]:
    """The weight λ and temperature τ with the fewest nats per token on a validation text."""
    best = (math.inf, 0.0, 1.0)
    for temperature in temperatures:
        p = memory_probability(distances, values, targets, temperature)
        for weight in weights:
            nats = float(np.mean(mixed_nll(model_nll, p, weight)))
            if nats < best[0]:
                best = (nats, weight, temperature)
    return best[1], best[2]


__all__ = ["DEFAULT_NEIGHBOURS", "Memory", "TEMPERATURES", "WEIGHTS", "build_memory", "hidden_states",
           "memory_probability", "mixed_nll", "neighbours", "text_neighbours", "tune"]
