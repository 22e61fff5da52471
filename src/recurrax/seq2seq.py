r"""Sequence to sequence: a recurrent encoder–decoder with teacher forcing, greedy and beam-search decoding.

The encoder (a recurrax :class:`~recurrax.Stack`) reads the source tokens :math:`x_1..x_S` and its
final state :math:`h^{enc}_S` (the state after the last non-padding token) becomes the decoder's
initial state (Sutskever, Vinyals & Le, 2014; Cho et al., 2014). The decoder, a stack of the same
cell and sizes, models

.. math::  p(y_1..y_U \mid x) = \prod_j p(y_j \mid y_{<j}, x), \qquad
           s_j = f(s_{j-1}, E[y_{j-1}]),\ s_0 = h^{enc}_S,\ y_0 = \langle go\rangle,\qquad
           p(\cdot \mid y_{<j}, x) = \mathrm{softmax}(W s_j + b).

**Training** uses teacher forcing: the decoder reads the true previous token :math:`y_{j-1}`, so
one pass scores every target step and the loss is the per-step cross-entropy. The model takes
the packed layout of :mod:`recurrax.data.translation` (source padded to S, then the decoder's
inputs) and returns per-step logits, zeros at the source steps: it plugs into
:func:`recurrax.train.trainer.fit` with the ``"per-step-xent"`` objective like any sequence model.

**Decoding** (no true previous token at test time):

* :func:`greedy_decode`: :math:`y_j = \arg\max p(\cdot \mid y_{<j}, x)`, until ``<eos>``;
* :func:`beam_search`: keeps the ``beam_width`` highest-scoring prefixes (score: the sum of token
  log-probabilities); a prefix ending in ``<eos>`` is finished and keeps its score; after
  ``max_length`` steps the best hypothesis, finished or not, is returned. Width 1 is greedy
  decoding; a width at least the number of possible sequences is exhaustive search.

Decoded sequences have ``max_length`` tokens, ``<pad>`` after ``<eos>``.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks
from .layers import Head, ScanChoice, Stack, make_stack


class Seq2Seq(eqx.Module):
    """Encoder–decoder over one token vocabulary (shared embedding), for one packed sequence.

    ``model(inputs)`` with ``inputs`` (S + U,) token ids: the source (S,) right-padded with
    ``pad``, then the decoder's teacher-forced inputs (U,) starting with ``go``; returns logits
    (S + U, output_size), zero at the S source steps. :meth:`encode` and :meth:`step` serve the
    decoders below.

    >>> import jax, jax.numpy as jnp
    >>> model = Seq2Seq("gru", vocab_size=20, output_size=13, hidden_size=16, source_length=5,
    ...                 key=jax.random.key(0))
    >>> model(jnp.array([14, 15, 0, 0, 0, 1, 4, 5])).shape
    (8, 13)
    """

    embedding: jax.Array
    encoder: Stack
    decoder: Stack
    head: Head
    source_length: int = eqx.field(static=True)
    output_size: int = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    go: int = eqx.field(static=True)
    eos: int = eqx.field(static=True)

    def __init__(
        self,
        cell: str,
        vocab_size: int,
        output_size: int,
        hidden_size: int,
        *,
        source_length: int,
        embed_size: int | None = None,
        num_layers: int = 1,
        pad: int = 0,
        go: int = 1,
        eos: int = 2,
        scan: ScanChoice = "auto",
        key: jax.Array,
        **cell_kwargs: Any,
    ):
        vocab_size = _checks.positive_int("vocab_size", vocab_size)
        self.output_size = _checks.positive_int("output_size", output_size)
        self.source_length = _checks.positive_int("source_length", source_length)
        embed_size = _checks.positive_int("embed_size", embed_size or hidden_size)
        for name, token in (("pad", pad), ("go", go), ("eos", eos)):
            if not 0 <= token < vocab_size:
                raise ValueError(f"{name} token {token} is outside the vocabulary of {vocab_size}")
        if eos >= output_size:
            raise ValueError(f"the eos token ({eos}) must be one of the {output_size} output classes")
        if output_size > vocab_size:
            raise ValueError(f"output_size ({output_size}) exceeds vocab_size ({vocab_size}): every output class is a "
                             "token the decoder reads back, so it must be in the vocabulary")
        self.pad, self.go, self.eos = int(pad), int(go), int(eos)
        k_emb, k_enc, k_dec, k_head = jax.random.split(key, 4)
        self.embedding = jax.random.normal(k_emb, (vocab_size, embed_size)) * 0.1
        self.encoder = make_stack(cell, embed_size, hidden_size, num_layers, scan=scan, key=k_enc, **cell_kwargs)
        self.decoder = make_stack(cell, embed_size, hidden_size, num_layers, scan=scan, key=k_dec, **cell_kwargs)
        self.head = Head(self.decoder.output_size, self.output_size, key=k_head)

    def init_state(self):
        return self.decoder.init_state()

    def encode(self, source: jax.Array):
        """The encoder's state after the last non-padding token of ``source`` (S,): the decoder's s_0."""
        source = _checks.token_ids(source, self.embedding.shape[0], "source token ids")
        _, final = self.encoder(self.embedding[source], mask=source != self.pad, return_state=True)
        return final

    def step(self, state, token: jax.Array):
        """One decoder step: reads ``token`` (the previous output), returns ``(new_state, logits)``."""
        state, y = self.decoder.step(state, self.embedding[token])
        return state, self.head(y[None])[0]

    def __call__(self, inputs, state=None, *, starts=None, mask=None, reset_state=None, key=None,
                 return_state: bool = False):
        inputs = jnp.asarray(inputs)
        if inputs.ndim != 1 or not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise TypeError(f"Seq2Seq takes one packed sequence of token ids of shape (T,), got {inputs.dtype} {inputs.shape}")
        if inputs.shape[0] <= self.source_length:
            raise ValueError(f"a packed sequence has the {self.source_length} source steps and at least one decoder step, "
                             f"got {inputs.shape[0]} steps")
        if state is not None or starts is not None or reset_state is not None:
            raise ValueError("a Seq2Seq decoder starts from the encoder's state; it cannot carry or reset a state "
                             "(train it with full BPTT)")
        del mask, key  # fixed-length packed sequences; no dropout
        source, decoder_inputs = inputs[: self.source_length], inputs[self.source_length :]
        decoder_inputs = _checks.token_ids(decoder_inputs, self.embedding.shape[0], "decoder token ids")
        ys, final = self.decoder(self.embedding[decoder_inputs], self.encode(source), return_state=True)
        logits = self.head(ys)
        outputs = jnp.concatenate([jnp.zeros((self.source_length, self.output_size), logits.dtype), logits])
        return (outputs, final) if return_state else outputs


def greedy_decode(model: Seq2Seq, source: jax.Array, max_length: int) -> tuple[jax.Array, jax.Array]:
    """``(tokens (max_length,), score)``: the argmax token at every step, ``pad`` after ``eos``.

    ``score`` is the sum of the log-probabilities of the emitted tokens up to ``eos``.
    """
    max_length = _checks.positive_int("max_length", max_length)

    def one_step(carry, _):
        state, token, done, score = carry
        state, logits = model.step(state, token)
        logp = jax.nn.log_softmax(logits)
        chosen = jnp.argmax(logp)
        emitted = jnp.where(done, model.pad, chosen).astype(jnp.int32)
        score = score + jnp.where(done, 0.0, logp[chosen])
        done = done | (chosen == model.eos)
        return (state, emitted, done, score), emitted

    init = (model.encode(source), jnp.asarray(model.go, jnp.int32), jnp.asarray(False), jnp.asarray(0.0))
    (_, _, _, score), tokens = jax.lax.scan(one_step, init, None, length=max_length)
    return tokens, score


def beam_search(model: Seq2Seq, source: jax.Array, max_length: int, beam_width: int = 4
                ) -> tuple[jax.Array, jax.Array]:
    """``(tokens (max_length,), score)``: the best hypothesis of a beam search of ``beam_width`` (see module docstring)."""
    max_length = _checks.positive_int("max_length", max_length)
    width = _checks.positive_int("beam_width", beam_width)
    size = model.output_size
    start = model.encode(source)
    states = jax.tree_util.tree_map(lambda s: jnp.broadcast_to(s, (width,) + s.shape), start)
    scores = jnp.full((width,), -jnp.inf).at[0].set(0.0)  # one live hypothesis to begin with
    tokens = jnp.full((width, max_length), model.pad, jnp.int32)
    last = jnp.full((width,), model.go, jnp.int32)
    done = jnp.zeros((width,), bool)
    # a finished hypothesis goes on in one way only, at no cost, written as pad (an output class or not)
    finished_row = jnp.where(jnp.arange(size) == model.eos, 0.0, -jnp.inf)

    def one_step(carry, t):
        states, scores, tokens, last, done = carry
        states, logits = jax.vmap(model.step)(states, last)
        logp = jax.nn.log_softmax(logits)  # (width, size)
        candidates = scores[:, None] + jnp.where(done[:, None], finished_row[None, :], logp)
        best, index = jax.lax.top_k(candidates.reshape(-1), width)
        beam, token = index // size, (index % size).astype(jnp.int32)
        states = jax.tree_util.tree_map(lambda s: s[beam], states)
        finished = done[beam]
        token = jnp.where(finished, model.pad, token)
        tokens = tokens[beam].at[:, t].set(token)
        done = finished | (token == model.eos)
        return (states, best, tokens, token, done), None

    (_, scores, tokens, _, _), _ = jax.lax.scan(
        one_step, (states, scores, tokens, last, done), jnp.arange(max_length)
    )
    best = jnp.argmax(scores)
    return tokens[best], scores[best]


def sequence_log_prob(model: Seq2Seq, source: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(tokens | source) of a decoded sequence (``pad`` after ``eos`` not scored), by teacher forcing."""
    tokens = _checks.token_ids(tokens, model.output_size, "decoded tokens")
    if tokens.ndim != 1 or len(tokens) == 0:
        raise ValueError(f"tokens must be one decoded sequence (U,) with U >= 1, got shape {tokens.shape}")
    previous = jnp.concatenate([jnp.asarray([model.go]), tokens[:-1]])
    _, logits = jax.lax.scan(lambda state, token: model.step(state, token), model.encode(source), previous)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, None], axis=-1)[:, 0]
    ended_before = jnp.cumsum(tokens == model.eos) - (tokens == model.eos) > 0
    return jnp.sum(jnp.where(ended_before, 0.0, logp))


@eqx.filter_jit
def _decode_batch(model: Seq2Seq, sources: jax.Array, max_length: int, beam_width: int):
    if beam_width == 0:
        return jax.vmap(lambda s: greedy_decode(model, s, max_length))(sources)
    return jax.vmap(lambda s: beam_search(model, s, max_length, beam_width))(sources)


def decode(model: Seq2Seq, sources: Any, max_length: int, *, beam_width: int | None = None,
           batch_size: int = 512) -> jax.Array:
    """Decoded tokens (N, max_length) of sources (N, S): greedy, or beam search of ``beam_width``."""
    if beam_width is not None:
        _checks.positive_int("beam_width", beam_width)
    sources = _checks.token_ids(sources, model.embedding.shape[0], "source token ids")
    if sources.ndim != 2 or len(sources) == 0:
        raise ValueError(f"sources must be a batch of token sequences (N, S) with N >= 1, got shape {sources.shape}"
                         + (" (one source: pass sources[None])" if sources.ndim == 1 else ""))
    chunks = [
        _decode_batch(model, sources[lo : lo + batch_size], int(max_length), int(beam_width or 0))[0]
        for lo in range(0, len(sources), batch_size)
    ]
    return jnp.concatenate(chunks)
