"""How many sequences a function is mapped over by ``jax.vmap``, read while it is traced.

A layer runs one sequence; the batch comes from ``jax.vmap`` around it, so its code sees per-sequence
shapes only. Some choices of the fused scan (:mod:`recurrax.fused`) depend on the batch size, and
this module reads it at trace time with a public hook: the batching rule of a
``jax.custom_batching.custom_vmap`` identity, which ``vmap`` calls with its axis size when it
reaches the identity. The identity's value is discarded, so it costs nothing in compiled code.
"""

from __future__ import annotations

import jax


def mapped_batch_size(x: jax.Array) -> int | None:
    """The size of the innermost ``jax.vmap`` axis that ``x`` is mapped over, or None where ``x``
    is not mapped (one sequence, or a ``vmap`` over other arguments only).

    Where the function is traced first and batched later (the body of a ``jax.lax.scan`` or
    ``jax.checkpoint`` under ``vmap``, whose trace is batched after the fact) the answer is None:
    the batch is not known yet when the body runs.

    >>> import jax, jax.numpy as jnp
    >>> mapped_batch_size(jnp.zeros(3)) is None
    True
    >>> sizes = []
    >>> _ = jax.vmap(lambda x: sizes.append(mapped_batch_size(x)) or x)(jnp.zeros((5, 3)))
    >>> sizes
    [5]
    """
    sizes = []

    @jax.custom_batching.custom_vmap
    def identity(a):
        return a

    @identity.def_vmap
    def record(axis_size, in_batched, a):
        sizes.append(axis_size)
        return a, in_batched[0]

    identity(jax.lax.stop_gradient(x))
    return sizes[-1] if sizes else None
