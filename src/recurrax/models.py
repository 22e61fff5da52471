r"""Sequence models: encoder → recurrent stack → head g.

.. math::
    e_t = \mathrm{enc}(x_t), \qquad h^{(l)}_t = f^{(l)}(h^{(l)}_{t-1}, h^{(l-1)}_t), \qquad
    y_t = g(h^{(L)}_t, e_t)

The encoder is an embedding for token ids, or the identity (or a linear map when
``embed_size`` is given) for vectors. ``readout="every"`` gives one output per step (T, O);
``readout="last"`` gives the output at the last valid step (O,), for sequence classification;
a bidirectional top layer is read where each direction has seen the whole sequence: the forward
direction at the last valid step, the backward one at the first, g([→h_last; ←h_first]).
"""

from __future__ import annotations

from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks
from .layers import Bidirectional, Head, ScanChoice, Stack, dropout as apply_dropout, make_stack

INPUT_KINDS = ("vectors", "tokens")
READOUTS = ("every", "last")


class SequenceModel(eqx.Module):
    """Encoder → recurrent stack → head, for one sequence (batches via ``jax.vmap``).

    ``model(inputs, state=None, *, starts=None, mask=None, reset_state=None, key=None, return_state=False)`` with
    ``inputs`` (T, input_size) floats or (T,) token ids. ``key`` enables dropout (training);
    without it the model is deterministic. Dropout (rate ``dropout``, a fresh mask per entry and
    step) acts on the encoded inputs e_t (embeddings, or the ``embed_size`` map of vectors; raw
    input vectors are not dropped), between recurrent layers and on the top layer's outputs.

    >>> import jax, recurrax
    >>> model = recurrax.SequenceModel("gru", input_size=2, hidden_size=16, output_size=1,
    ...                                readout="last", key=jax.random.key(0))
    >>> model(jax.numpy.ones((50, 2))).shape
    (1,)
    """

    embedding: jax.Array | None
    input_map: eqx.nn.Linear | None
    stack: Stack
    head: Head
    input_kind: str = eqx.field(static=True)
    readout: str = eqx.field(static=True)
    input_size: int = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        output_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        input_kind: Literal["vectors", "tokens"] = "vectors",
        embed_size: int | None = None,
        readout: Literal["every", "last"] = "every",
        head_reads_input: bool = False,
        dropout: float = 0.0,
        scan: ScanChoice = "auto",
        chunk_size: int | None = None,
        key: jax.Array,
        **cell_kwargs: Any,
    ):
        self.input_kind = _checks.choice("input kind", input_kind, INPUT_KINDS)
        self.readout = _checks.choice("readout", readout, READOUTS)
        self.input_size = _checks.positive_int("input_size", input_size)
        k_enc, k_stack, k_head = jax.random.split(key, 3)
        if input_kind == "tokens":
            embed_size = _checks.positive_int("embed_size", hidden_size if embed_size is None else embed_size)
            self.embedding = jax.random.normal(k_enc, (input_size, embed_size)) * 0.1
            self.input_map = None
            features = embed_size
        elif embed_size is not None:
            self.embedding = None
            self.input_map = eqx.nn.Linear(input_size, _checks.positive_int("embed_size", embed_size), key=k_enc)
            features = embed_size
        else:
            self.embedding, self.input_map = None, None
            features = input_size
        self.stack = make_stack(
            cell, features, hidden_size, num_layers, bidirectional=bidirectional, dropout=dropout,
            scan=scan, chunk_size=chunk_size, key=k_stack, **cell_kwargs,
        )
        self.dropout = self.stack.dropout
        self.head = Head(
            self.stack.output_size, output_size, input_size=features if head_reads_input else 0, key=k_head
        )

    def encode(self, inputs: jax.Array) -> jax.Array:
        """e_t for every step: (T,) token ids → (T, E), or (T, input_size) vectors → (T, E)."""
        if self.input_kind == "tokens":
            inputs = jnp.asarray(inputs)
            if inputs.ndim != 1 or not jnp.issubdtype(inputs.dtype, jnp.integer):
                raise TypeError(
                    f"a token model takes one sequence of integer ids of shape (T,), got {inputs.dtype} {inputs.shape}"
                )
            return self.embedding[_checks.token_ids(inputs, self.embedding.shape[0])]
        xs = _checks.sequence(inputs, self.input_size, "inputs")
        return xs if self.input_map is None else jax.vmap(self.input_map)(xs)

    def init_state(self):
        return self.stack.init_state()

    def __call__(
        self, inputs, state=None, *, starts=None, mask=None, reset_state=None, key=None, return_state: bool = False
    ):
        k_in, k_stack, k_out = (None, None, None) if key is None else jax.random.split(key, 3)
        es = self.encode(inputs)
        if self.embedding is not None or self.input_map is not None:
            es = apply_dropout(es, self.dropout, k_in)
        hs, final = self.stack(es, state, starts=starts, mask=mask, reset_state=reset_state, key=k_stack,
                               return_state=True)
        hs = apply_dropout(hs, self.dropout, k_out)
        reads = es if self.head.input_size else None
        if self.readout == "last":
            top = self.stack.layers[-1]
            backward = top.backward.output_size if isinstance(top, Bidirectional) and top.merge == "concat" else 0
            ys = self.head.last(hs, reads, mask, backward_size=backward)
        else:
            ys = self.head(hs, reads)
        return (ys, final) if return_state else ys
