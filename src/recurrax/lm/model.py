r"""RNN language model: embedding → recurrent stack → softmax over the vocabulary.

.. math::
    e_t = E[w_t], \quad h_t = f(h_{t-1}, e_t), \quad
    \hat P(w_{t+1} = v \mid w_1, \dots, w_t) = \mathrm{softmax}(W_S h_t + b)_v

With ``tie_weights`` the output matrix is the embedding matrix, W_S = E (Inan et al., 2017;
Press & Wolf, 2017), which needs the embedding size to equal the stack's output size. Dropout
(rate ``dropout``) acts on the embeddings, between recurrent layers and on the top layer's
outputs, and only when a ``key`` is passed.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks
from .._rows_matmul import rows_matmul
from ..layers import ScanChoice, Stack, dropout as apply_dropout, make_stack


class LanguageModel(eqx.Module):
    """``logits = lm(tokens)``: (T,) token ids → (T, vocab_size) next-token logits.

    Same calling convention as :class:`recurrax.SequenceModel` (``state``, ``starts``, ``mask``,
    ``reset_state``, ``key``, ``return_state``); :meth:`step` runs one token for generation.
    """

    embedding: jax.Array
    stack: Stack
    output_weight: jax.Array | None
    output_bias: jax.Array
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        cell: str,
        vocab_size: int,
        hidden_size: int,
        *,
        embed_size: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        tie_weights: bool = False,
        scan: ScanChoice = "auto",
        key: jax.Array,
        **cell_kwargs: Any,
    ):
        vocab_size = _checks.positive_int("vocab_size", vocab_size)
        embed_size = _checks.positive_int("embed_size", hidden_size if embed_size is None else embed_size)
        k_emb, k_stack, k_out = jax.random.split(key, 3)
        self.embedding = jax.random.uniform(k_emb, (vocab_size, embed_size), minval=-0.1, maxval=0.1)
        self.stack = make_stack(cell, embed_size, hidden_size, num_layers, dropout=dropout, scan=scan, key=k_stack,
                                **cell_kwargs)
        out_size = self.stack.output_size
        if tie_weights:
            if embed_size != out_size:
                raise ValueError(f"tie_weights needs embed_size ({embed_size}) equal to the stack's output size ({out_size})")
            self.output_weight = None
        else:
            s = 1.0 / out_size**0.5
            self.output_weight = jax.random.uniform(k_out, (vocab_size, out_size), minval=-s, maxval=s)
        self.output_bias = jnp.zeros((vocab_size,))
        self.dropout = self.stack.dropout  # checked by the stack

    @property
    def vocab_size(self) -> int:
        return self.embedding.shape[0]

    def init_state(self):
        return self.stack.init_state()

    def _logits(self, hs: jax.Array) -> jax.Array:
        weight = self.embedding if self.output_weight is None else self.output_weight
        return rows_matmul(hs, weight) + self.output_bias

    def _embed(self, tokens: jax.Array) -> jax.Array:
        return self.embedding[_checks.token_ids(tokens, self.vocab_size)]

    def hidden(self, tokens, state=None) -> tuple[jax.Array, Any]:
        """``hs, final_state = lm.hidden(tokens, state)``: the top layer's outputs h_t (T, H) that
        the softmax reads, without dropout, and the state after the last token."""
        return self.stack(self._embed(tokens), state, return_state=True)

    def __call__(self, tokens, state=None, *, starts=None, mask=None, reset_state=None, key=None,
                 return_state: bool = False):
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"a language model reads one sequence of token ids (T,), got shape {tokens.shape}")
        k_in, k_stack, k_out = (None, None, None) if key is None else jax.random.split(key, 3)
        es = apply_dropout(self._embed(tokens), self.dropout, k_in)
        hs, final = self.stack(es, state, starts=starts, mask=mask, reset_state=reset_state, key=k_stack,
                               return_state=True)
        logits = self._logits(apply_dropout(hs, self.dropout, k_out))
        return (logits, final) if return_state else logits

    def step(self, state, token: jax.Array):
        """One token of streaming inference: ``state, logits = lm.step(state, token)``."""
        state, h = self.stack.step(state, self._embed(token))
        return state, self._logits(h)
