r"""``a @ wᵀ`` whose weight gradient, under ``jax.vmap`` over a batch, is one 2-D product over all rows.

The fused scans (:mod:`recurrax.fused`, :mod:`recurrax.fused_native`) take their weights' gradients
through products over all steps: per sequence ``C = A Wᵀ`` with ``A`` (T, K) the inputs or the
states before each step (the *gradient carriers*, or LinearRecurrence's input products), whose
cotangent ``dC`` (T, G) the backward loop writes; autodiff gives ``dW = dCᵀ A``. Under
``jax.vmap`` over a batch of sequences that product contracts two axes, the sequences and the
steps, and XLA's CPU compiler first copies one operand (B, T, G) transposed to (G, B·T) (at a GRU's
B = 256, T = 200, H = 512: 179 ms of a 2.4 s training step). Reshaped to (B·T, G) and (B·T, K)
the same product contracts the rows of two matrices, which XLA's matmul reads as they are. The
heads read out of a batch alike (:class:`recurrax.Head`, a language model's softmax layer, whose
logits' gradient (B, T, vocabulary) is the largest array of a word-level model's step: an LSTM
language model's training step at vocabulary 10,000, H = 256, B = 32, T = 64 took 339, 317 ->
283, 293 ms, separate processes alternating; at a character level's 100 tokens, unchanged).

:func:`rows_matmul` takes that 2-D form wherever ``jax.vmap`` batches the function before it is
differentiated (``jax.grad`` of a function that maps a layer over a batch, the layers' common
case): a ``jax.custom_jvp`` whose rule writes the weight's tangent term through a
``jax.custom_batching.custom_vmap`` product, whose batching rule reshapes. Where the tangents are
batched later (``jax.vmap`` of ``jax.grad``: per-example gradients), under no ``vmap``, or where
the batch cannot be seen while tracing (the body of ``jax.lax.scan`` or ``jax.checkpoint``), the
tangent is the plain product: a ``custom_vmap`` call there would reach reverse-mode autodiff,
which it does not support. Values and gradients are ``a @ wᵀ``'s either way.

Which form is faster depends on the processor and on the shapes. On an Intel Xeon (AVX-512) the
2-D product made LSTM training 16-27% faster where it was above torch's time (B = 256, T = 1000,
H = 128: 1587, 1558 -> 1092, 1224 ms). On an AMD EPYC (AVX-512, family 25) XLA's product that
contracts the rows of two matrices ran slower than its transposed copy followed by an ordinary
product at the recurrent scans' shapes (B·T = 51,200 rows, G = 512, K = 128: 64 against 46 ms),
and LSTM training took 4-19% longer with the 2-D form (B = 32, T = 200, H = 128: 31.1 against
25.9 ms; B = 256: 252 against 209 ms; same process, alternating), while a word-level language
model's softmax layer (G = 10,000 words) still gained from it (235 against 251 ms a step). The
recurrent scans' products are therefore :func:`gate_matmul`: :func:`rows_matmul` where
:func:`rows_pay` says so (everywhere but on an AMD processor under JAX's CPU backend), the plain
product elsewhere; :func:`weight_gradients_as_rows` sets the choice for what is traced inside it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import jax
from jax.custom_derivatives import SymbolicZero

from .native import cpu_info

_AS_ROWS = jax.make_user_context(default_value=None)


@functools.cache
def _amd_processor() -> bool:
    return cpu_info("vendor_id") == "AuthenticAMD"


def rows_pay() -> bool:
    """Whether :func:`gate_matmul` takes the 2-D product by default: everywhere but on an AMD
    processor under JAX's CPU backend (module docstring)."""
    return not (jax.default_backend() == "cpu" and _amd_processor())


@contextlib.contextmanager
def weight_gradients_as_rows(on: bool | None) -> Iterator[None]:
    """Within this block, :func:`gate_matmul` calls *traced* here take their weight gradients under
    ``jax.vmap`` as one 2-D product over all rows (``True``, :func:`rows_matmul`) or as XLA's
    product of the batched arrays (``False``); ``None`` restores :func:`rows_pay`'s choice.
    ``jax.jit`` traces a function again under another setting. Values and gradients do not depend
    on it. Also importable as ``recurrax.fused.weight_gradients_as_rows``.

    >>> import jax, jax.numpy as jnp, recurrax, recurrax.fused
    >>> layer = recurrax.Recurrent(recurrax.LSTM(2, 3, key=jax.random.key(0)))
    >>> loss = lambda layer, xs: jnp.sum(jax.vmap(layer)(xs))
    >>> with recurrax.fused.weight_gradients_as_rows(False):
    ...     grads = jax.grad(loss)(layer, jnp.ones((4, 5, 2)))
    >>> grads.cell.weight_hh.shape
    (12, 3)
    """
    with _AS_ROWS(None if on is None else bool(on)):
        yield


def _as_rows() -> bool:
    chosen = _AS_ROWS.value
    return rows_pay() if chosen is None else chosen


@jax.custom_batching.custom_vmap
def _rows_product(a, w):
    """``a @ wᵀ``; mapped over ``a`` alone, as one product over all rows of the batch."""
    return a @ w.T


@_rows_product.def_vmap
def _rows_product_batched(axis_size, in_batched, a, w):
    a_batched, w_batched = in_batched
    if a_batched and not w_batched:
        rows = a.reshape(-1, a.shape[-1])
        return (rows @ w.T).reshape(a.shape[:-1] + (w.shape[0],)), True
    in_axes = (0 if a_batched else None, 0 if w_batched else None)
    return jax.vmap(lambda a, w: a @ w.T, in_axes=in_axes)(a, w), True


def _tangent_batched_here(a, dw) -> bool:
    """Whether ``jax.vmap`` maps ``a`` but not ``dw`` at the level where the tangents are formed.

    A ``custom_vmap`` identity of both, whose batching rule runs only where a ``vmap`` trace is the
    first to see them (not where differentiation's own trace stages ``dw`` first)."""
    seen = []

    @jax.custom_batching.custom_vmap
    def identity(a, dw):
        return a, dw

    @identity.def_vmap
    def record(axis_size, in_batched, a, dw):
        seen.append(tuple(in_batched))
        return (a, dw), tuple(in_batched)

    identity(jax.lax.stop_gradient(a), jax.lax.stop_gradient(dw))
    return bool(seen) and seen[-1] == (True, False)


@jax.custom_jvp
def rows_matmul(a, w):
    """``a @ wᵀ`` (a: (..., K), w: (G, K)), its weight gradient one product over all rows of a
    batch under ``jax.vmap`` (module docstring)."""
    return a @ w.T


def _rows_matmul_jvp(primals, tangents):
    """The tangent ``da wᵀ + a dwᵀ``, each term only where its tangent is not a symbolic zero (the
    states ``a`` of the recurrent carriers have their gradient stopped: no product of zeros)."""
    a, w = primals
    da, dw = tangents
    terms = []
    if not isinstance(da, SymbolicZero):
        terms.append(da @ w.T)
    if not isinstance(dw, SymbolicZero):
        terms.append(_rows_product(a, dw) if _tangent_batched_here(a, dw) else a @ dw.T)
    return a @ w.T, sum(terms[1:], terms[0])


rows_matmul.defjvp(_rows_matmul_jvp, symbolic_zeros=True)


def gate_matmul(a, w):
    """``a @ wᵀ`` for a recurrent scan's input products and gradient carriers: :func:`rows_matmul`
    where the 2-D weight-gradient product pays (:func:`rows_pay`, :func:`weight_gradients_as_rows`),
    the plain product elsewhere."""
    return rows_matmul(a, w) if _as_rows() else a @ w.T
