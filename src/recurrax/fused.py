r"""Fused sequential scan for the classic cells: a hand-written backward pass, as cuDNN does it.

:func:`recurrax.scan` in ``"sequential"`` mode (the default of every layer on a CPU) runs
:class:`~recurrax.LSTM`, :class:`~recurrax.GRU`, :class:`~recurrax.Elman`,
:class:`~recurrax.ForgetElman` and :class:`~recurrax.MGU` through this module unless told
otherwise (``scan(..., fused=False)``, or ``with recurrax.fused.disabled(): ...`` around tracing).
``LinearRecurrence`` has no matrix product in its loop and no rule here (a fused rule in XLA was
1.2x slower than its plain loop); on a CPU it runs native loops where they are built
(:func:`recurrax.fused_native.linear_scan`), else its plain loop.
Values and first-order gradients are those of the plain ``jax.lax.scan`` of ``cell.step`` to float
tolerance; ``starts``, ``mask``, ``reverse``, ``reset_state`` and ``chunk_size`` behave the same.

What differs from differentiating the plain loop:

* **Forward loop.** Each step computes its recurrent product (all gates stacked in one matrix)
  and, at the batch sizes where that pays, its input projection (:func:`project_in_loop`;
  otherwise one product before the loop, written time-major), then *one* elementwise pass over
  the contiguous gate block (sigmoid written as ``0.5 tanh(x/2) + 0.5``, so one ``tanh`` covers
  all four LSTM gates; four separate gate slices made XLA's elementwise code about twice as slow).
  The matrices of the step's products are transposed once, before the loop, into the layout XLA's
  CPU matmul reads without re-packing them at every step (:func:`_loop_layout`). It saves what
  the backward pass needs, the gate activations and the states, rather than what autodiff would
  choose (LSTM writes its gate activations over the hoisted projections it reads,
  ``Rule.residuals_over_projections``). For inference (a call that is not differentiated) a second
  version of the loop saves nothing and, for LSTM at large batches, takes both products as one
  (:func:`_loop`); XLA keeps whichever loop is read.
* **Backward loop.** A ``jax.custom_vjp`` whose backward loop carries only the state gradients:
  per step one product ``dz @ W_hh`` (the gradient for the previous state) and elementwise work,
  emitting the pre-activation gradients ``dz_t``. The transpose of the plain loop also accumulates
  ``dW_hh += dz_t h_{t-1}ᵀ`` inside the loop: a second product per step, on one thread.
* **Weight and input gradients** come from one product each over all T·B rows, outside the loop
  (where XLA spreads them over the cores): ``dW_hh = dZᵀ H_prev``, ``dW_ih = dZᵀ X``,
  ``db = Σ dZ`` and ``dX = dZ W_ih``.
* **Native loops.** On a CPU an LSTM, GRU, Elman network, ForgetElman or MGU in float32 (hidden
  size a multiple of 16) runs both loops as native code (:mod:`recurrax.fused_native`,
  :mod:`recurrax.native`, where it can be built): each thread takes its own sequences of the
  batch through every step, so the steps use every core, which XLA's loops cannot
  (:func:`runs_native`). The weight-gradient products stay in XLA, as below.
* **Pieces of time.** On a CPU a batch of 32 sequences or more runs as consecutive pieces of
  about 50 steps (25 for GRU, MGU and ForgetElman), each a fused scan of its own
  (:func:`time_pieces`; :func:`pieces` sets their number), so that the products
  outside one piece's loops run on the other cores while the loop of the piece beside it runs.

How those gradients leave the loop when the batch comes from ``jax.vmap`` (a layer maps one
sequence): a ``custom_vjp`` that returned ``dW_hh`` per sequence would, under ``vmap``, build a
(B, 4H, H) stack of per-sequence gradients and then sum it (XLA does not fold the sum into the
product: at B = 256, H = 512 a 1 GiB temporary). Instead the loops see the weights with their
gradient stopped, and *gradient carriers* are inputs of the ``custom_vjp``: ``C = sg(H_prev) W_hhᵀ``
and the projections ``P = X W_ihᵀ + b``, whose values are never used (XLA removes them) but whose
cotangents are ``dZ`` (per cell, the gradients of the recurrent pre-activations and of the
projections). Ordinary autodiff of ``C`` and ``P`` then gives the products above, contracted over
time *and* batch, under ``vmap`` or not; per-example gradients (``vmap`` of ``grad``) stay correct.
``H_prev`` comes from the forward loop, which therefore runs first, on stopped gradients. The
carriers' products are :func:`recurrax._rows_matmul.gate_matmul`, whose weight gradient under
``vmap`` is, where that pays, one product over all B·T rows of two matrices: written as plain
products, XLA's CPU compiler copied the gate gradients transposed first (measured on a 2-core
Intel Xeon, native loops, same runs alternating: LSTM training B = 256, T = 1000, H = 128 1587,
1558 -> 1092, 1224 ms; B = 32, T = 200, H = 512 513, 490 -> 415, 357; GRU B = 256, T = 200,
H = 512 2527, 2609 -> 2164, 2069). On an AMD EPYC the copy and an ordinary product ran faster
than the 2-D one, so the plain products stay there (:mod:`recurrax._rows_matmul`).

Limits (the plain path covers them: ``fused=False``): first-order reverse-mode derivatives only.
Forward mode (``jax.jvp``, ``jax.jacfwd``) raises JAX's "can't apply forward-mode autodiff (jvp) to
a custom_vjp function"; a second derivative with respect to anything that feeds the scan (``grad``
of ``grad``, Hessians) raises :class:`NotImplementedError` (one that only passes through the
output cotangent, e.g. with respect to a readout, is exact). Subclasses of the classic cells (they
may change ``step``) and all other cells run the plain loop.

On a CPU, XLA runs a loop's body on one thread, so each step's products use one core however
large they are; the products outside the loops use all of them. On a GPU (measured on an H100,
``benchmarks/bench_speed.py --device gpu``) the same path trains LSTM 1.3-1.45x and GRU
1.05-1.15x faster than the plain loop; its inference loop, tuned on CPUs, runs 4-29% slower than
the plain loop there.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from typing import Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp

from . import _checks, _rows_matmul
from ._batching import mapped_batch_size
from ._first_order import first_order_only
from ._loops import scan_in_place, scan_into_buffers, scan_prefetched
from ._rows_matmul import gate_matmul
from ._trees import tree_where
from .allocator import freed_memory_kept
from .cells.activations import ACTIVATIONS
from .cells.base import Cell
from .cells.elman import Elman, ForgetElman
from .cells.gru import GRU
from .cells.lstm import LSTM
from .cells.mgu import MGU
from .fused_native import native_piece, runs_native

sg = jax.lax.stop_gradient


# ============================================================================================
# Per-cell rules


def _sigmoid(x):
    """sigmoid(x) = (1 + tanh(x / 2)) / 2: one tanh, no division, the same value to float rounding."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


_FUSED_ACTIVATIONS = ("tanh", "sigmoid", "relu", "identity")


def _act_grad(name: str, out):
    """The derivative of activation ``name`` written in terms of its output."""
    if name == "tanh":
        return 1.0 - out * out
    if name == "sigmoid":
        return out * (1.0 - out)
    if name == "relu":
        return (out > 0).astype(out.dtype)
    if name == "identity":
        return jnp.ones_like(out)
    raise ValueError(f"no fused rule for activation {name!r}")


def _fused_act(name: str, x):
    return _sigmoid(x) if name == "sigmoid" else ACTIVATIONS[name](x)


class Rule(NamedTuple):
    """How one classic cell runs fused (all functions act on one sequence's step; vmap batches them).

    * ``consts(cell)``: the arrays the loop uses (weights), reaching the loop without gradient;
    * ``forward(consts, state, p) -> (state, residuals)``: one step, saving what ``backward`` needs
      (its matrices arrive transposed, :func:`_loop_layout`);
    * ``backward(consts, residuals, state_in, state_out, d_state_out) -> (d_state_in, dp, extra)``;
    * ``carriers(cell, prev_h, residuals) -> tuple``: the recurrent pre-activations' gradient carriers,
      ``A_k(θ, sg(U_k))`` over all steps, whose cotangents are ``gate_grads(dP, extra)``;
    * ``output(state)``: the step's output (the hidden state);
    * ``in_loop``: whether a mid-sized batch (32 to 127 sequences) may compute its input
      projections inside the loop (:func:`project_in_loop`); ``hoist_without_fresh_pages``: not
      where the hoisted projections cost no fresh pages (the process keeps the memory it frees,
      :func:`recurrax.allocator.freed_memory_kept`, or they fit in :data:`HOISTED_BYTES`);
      ``hoist_where_memory_kept``: not where the process keeps the memory it frees;
    * ``prefetch``: whether the forward loop reads each step's inputs one step ahead
      (:func:`recurrax._loops.scan_prefetched`). It pays for GRU, whose step XLA compiles into
      slow code when the slice of its inputs is fused into it (forward 1.2-2x faster at B = 1 to
      256); for the other cells the extra copy per step cost up to 1.5x (Elman at B = 1). On a CPU
      only (:func:`_loop`);
    * ``from_preactivation(state, z) -> (state, residuals)``: for cells whose step reads the sum
      z = W_ih x + b + W_hh h (LSTM), the step from that sum, so that the inference loop may take
      z from one product ``[x, h] @ [W_ihᵀ; W_hhᵀ]`` (``consts`` must start with W_hh) instead of
      two (:func:`joint_product`);
    * ``gradients_over_residuals``: whether the backward step's outputs ``(dp, extra)`` have the
      residuals' leaves (shapes and dtypes, in order), so that the backward loop writes them over
      the residuals (:func:`recurrax._loops.scan_in_place`) instead of into buffers of their own.
      LSTM's gate activations and their pre-activation gradients are both T x 4H; GRU saves its
      gates (r, z) and n and W_hn h + b_hn, and its backward step returns the gradients of the
      same three blocks. What that saves in memory and time: :func:`_attach_bwd`;
    * ``gate_blocks``: the blocks of the stacked gates (their widths in hidden sizes, e.g. (1, 1)
      for two gates) whose gradients the backward step returns as separate arrays, ``dp`` a tuple
      of them; empty: ``dp`` is one array over all gates. The input weights' gradients then come
      from one product per block (:func:`_input_carriers`), as do the recurrent weights' when the
      carriers are per block, and no product reads a block sliced out of a stacked dP: XLA's CPU
      code transposes a whole buffer for those products fast, but a slice of one (or a
      concatenation) slowly (ForgetElman, B = 32, T = 200, H = 128: 1.2-1.3 ms for each half of
      dP, against 0.24 ms for all of it). Training steps measured with freed memory kept (H =
      128, T = 200): ForgetElman at B = 32 12.1-12.6 -> 10.8-11.9 ms, MGU 12.6-12.9 -> 10.9-11.4,
      GRU at B = 256 120-123 -> 110-112; with glibc's defaults GRU at B = 32, T = 1000 130-132
      -> 113-115 ms, MGU at B = 32 11.5-11.7 -> 9.9-10.1.
    * ``residuals_over_projections``: whether the forward step's residuals have the shape of its
      input projections (LSTM: the four gates' values, 4H numbers a step, like their
      pre-activations), so that where the projections are hoisted the loop that saves residuals
      writes them over the projections it reads (:func:`recurrax._loops.scan_in_place`): no buffer
      of their own is allocated and zeroed at every call, and the projections are computed
      batch-major, as that buffer is laid out, without transposing the inputs. With
      ``gradients_over_residuals`` one buffer then holds the projections, the gates and their
      gradients in turn. LSTM training at B = 32, T = 200, H = 128 (same process, alternating):
      21.0 -> 20.0 ms with freed memory kept, and with glibc's defaults (hoisted now, see
      :func:`project_in_loop`) 22.7 -> 20.5 ms; at B = 8 5.1 -> 4.8 ms.
    * ``piece_steps``: about how many steps a piece of time has (:func:`time_pieces`). 25 for GRU,
      MGU and ForgetElman, whose training took 1-14% less in pieces of 25 steps than of 50 in
      every run (``benchmarks/bench_pieces.py``, B = 32, H = 128, memory kept; at T = 200, 8
      pieces against 4: GRU 0.92-0.99x in four runs, MGU 0.97-0.99x, ForgetElman 0.92-0.99x; at
      T = 100, 4 against 2: GRU 0.86-0.87x, MGU 0.92-0.93x, ForgetElman 0.94-0.99x); 50 for LSTM
      (0.96-1.09x) and Elman (0.81-1.08x).
    """

    consts: Callable
    forward: Callable
    backward: Callable
    carriers: Callable
    gate_grads: Callable
    output: Callable = lambda s: s
    add_output_grad: Callable = lambda ds, dy: ds + dy
    in_loop: bool = True
    hoist_without_fresh_pages: bool = False
    hoist_where_memory_kept: bool = False
    prefetch: bool = False
    from_preactivation: Callable | None = None
    gradients_over_residuals: bool = False
    gate_blocks: tuple[int, ...] = ()
    residuals_over_projections: bool = False
    piece_steps: int = 50


# --- LSTM ----------------------------------------------------------------------------------


def _lstm_constants(hidden: int, dtype):
    """Per-column constants over the gate block (i, f, g, o): activation a = tanh(z s) s + m
    (s = 1/2, m = 1/2: sigmoid; s = 1, m = 0: tanh), and its derivative da/dz = s² - (a - m)²."""
    half, one, zero = (jnp.full((hidden,), v, dtype) for v in (0.5, 1.0, 0.0))
    scale = jnp.concatenate([half, half, one, half])
    shift = jnp.concatenate([half, half, zero, half])
    return scale, shift


def _lstm_from_preactivation(state, z):
    _, c = state
    scale, shift = _lstm_constants(c.shape[-1], z.dtype)
    a = jnp.tanh(z * scale) * scale + shift  # all four gates in one contiguous pass
    i, f, g, o = jnp.split(a, 4)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (h, c), a


def _lstm_forward(consts, state, p):
    (w_hh_t,) = consts
    return _lstm_from_preactivation(state, p + state[0] @ w_hh_t)


def _lstm_backward(consts, a, state_in, state_out, d_out):
    (w_hh,) = consts
    _, c_in = state_in
    _, c = state_out
    dh, dc = d_out
    scale, shift = _lstm_constants(dh.shape[-1], a.dtype)
    i, f, g, o = jnp.split(a, 4)
    tc = jnp.tanh(c)
    dc = dc + dh * o * (1.0 - tc * tc)
    # dL/da for the four gates, times da/dz, over the contiguous block (faster than four pieces).
    da = jnp.concatenate([dc, dc, dc, dh]) * jnp.concatenate([g, c_in, i, tc])
    dz = da * (scale * scale - (a - shift) ** 2)
    return (dz @ w_hh, dc * f), dz, ()


LSTM_RULE = Rule(
    consts=lambda cell: (cell.weight_hh,),
    forward=_lstm_forward,
    backward=_lstm_backward,
    carriers=lambda cell, h_prev, res: (gate_matmul(h_prev, cell.weight_hh),),
    gate_grads=lambda dp, extra: (dp,),
    output=lambda s: s[0],
    add_output_grad=lambda ds, dy: (ds[0] + dy, ds[1]),
    hoist_without_fresh_pages=True,
    from_preactivation=_lstm_from_preactivation,
    gradients_over_residuals=True,
    residuals_over_projections=True,
)


# --- GRU -----------------------------------------------------------------------------------


def _gru_forward(consts, h, p):
    w_hh_t, b_hn = consts
    hidden = h.shape[-1]
    g = h @ w_hh_t
    rz = _sigmoid(p[: 2 * hidden] + g[: 2 * hidden])
    r, z = jnp.split(rz, 2)
    gn = g[2 * hidden :] + b_hn
    n = jnp.tanh(p[2 * hidden :] + r * gn)
    return n + z * (h - n), ((rz, n), gn)


def _gru_backward(consts, res, h_in, h_out, dh):
    w_hh, _ = consts
    (rz, n), gn = res
    r, z = jnp.split(rz, 2)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    d_rz = jnp.concatenate([dn * gn * r * (1.0 - r), dh * (h_in - n) * z * (1.0 - z)])
    dgn = dn * r
    dh_in = dh * z + jnp.concatenate([d_rz, dgn]) @ w_hh
    return dh_in, (d_rz, dn), dgn


def _gru_carriers(cell, h_prev, res):
    w_rz, w_n = jnp.split(cell.weight_hh, [2 * cell.hidden_size])
    return gate_matmul(h_prev, w_rz), gate_matmul(h_prev, w_n) + cell.bias_hn


GRU_RULE = Rule(
    consts=lambda cell: (cell.weight_hh, cell.bias_hn),
    forward=_gru_forward,
    backward=_gru_backward,
    carriers=_gru_carriers,
    gate_grads=lambda dp, dgn: (dp[0], dgn),
    hoist_where_memory_kept=True,
    prefetch=True,
    gradients_over_residuals=True,
    gate_blocks=(2, 1),
    piece_steps=25,
)


# --- Elman ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _elman_rule(activation: str) -> Rule:
    def forward(consts, h, p):
        (w_hh_t,) = consts
        return _fused_act(activation, p + h @ w_hh_t), ()

    def backward(consts, res, h_in, h_out, dh):
        (w_hh,) = consts
        dz = dh * _act_grad(activation, h_out)
        return dz @ w_hh, dz, ()

    return Rule(
        consts=lambda cell: (cell.weight_hh,),
        forward=forward,
        backward=backward,
        carriers=lambda cell, h_prev, res: (gate_matmul(h_prev, cell.weight_hh),),
        gate_grads=lambda dp, extra: (dp,),
        in_loop=False,
    )


# --- ForgetElman and MGU: a forget gate, then a second product with the gated state ---------


@functools.lru_cache(maxsize=None)
def _forget_elman_rule(activation: str) -> Rule:
    def forward(consts, h, p):
        w_fh_t, w_hh_t = consts
        p_f, p_h = jnp.split(p, 2)
        f = _sigmoid(p_f + h @ w_fh_t)
        return _fused_act(activation, p_h + (f * h) @ w_hh_t), f

    def backward(consts, f, h_in, h_out, dh):
        w_fh, w_hh = consts
        dzh = dh * _act_grad(activation, h_out)
        du = dzh @ w_hh
        dzf = du * h_in * f * (1.0 - f)
        return du * f + dzf @ w_fh, (dzf, dzh), ()

    return Rule(
        consts=lambda cell: (cell.weight_fh, cell.weight_hh),
        forward=forward,
        backward=backward,
        carriers=lambda cell, h_prev, f: (
            gate_matmul(h_prev, cell.weight_fh),
            gate_matmul(f * h_prev, cell.weight_hh),
        ),
        gate_grads=lambda dp, extra: dp,
        in_loop=False,
        gate_blocks=(1, 1),
        piece_steps=25,
    )


def _mgu_forward(consts, h, p):
    w_fh_t, w_hh_t = consts
    p_f, p_h = jnp.split(p, 2)
    f = _sigmoid(p_f + h @ w_fh_t)
    cand = jnp.tanh(p_h + (f * h) @ w_hh_t)
    return h + f * (cand - h), (f, cand)


def _mgu_backward(consts, res, h_in, h_out, dh):
    w_fh, w_hh = consts
    f, cand = res
    dzh = dh * f * (1.0 - cand * cand)
    du = dzh @ w_hh
    dzf = (dh * (cand - h_in) + du * h_in) * f * (1.0 - f)
    return dh * (1.0 - f) + du * f + dzf @ w_fh, (dzf, dzh), ()


MGU_RULE = Rule(
    consts=lambda cell: (cell.weight_fh, cell.weight_hh),
    forward=_mgu_forward,
    backward=_mgu_backward,
    carriers=lambda cell, h_prev, res: (
        gate_matmul(h_prev, cell.weight_fh),
        gate_matmul(res[0] * h_prev, cell.weight_hh),
    ),
    gate_grads=lambda dp, extra: dp,
    in_loop=False,
    gate_blocks=(1, 1),
    piece_steps=25,
)


def rule_for(cell: Cell) -> Rule | None:
    """The fused rule of ``cell``, or None when it has none (the plain loop runs it).

    Only the classic cells themselves qualify, not subclasses: a subclass may change ``step``.
    """
    kind = type(cell)
    if kind is LSTM:
        return LSTM_RULE
    if kind is GRU:
        return GRU_RULE
    if kind is MGU:
        return MGU_RULE
    if kind is Elman and cell.activation in _FUSED_ACTIVATIONS:
        return _elman_rule(cell.activation)
    if kind is ForgetElman and cell.activation in _FUSED_ACTIVATIONS:
        return _forget_elman_rule(cell.activation)
    return None


def supports(cell: Cell) -> bool:
    """Whether ``cell`` has a fused rule (it then runs fused unless the fused path is disabled)."""
    return rule_for(cell) is not None


# The switches below are read while tracing; as JAX user contexts they are part of jax.jit's cache
# key, so a function traced under one setting is traced again under another, not served from the cache.
weight_gradients_as_rows = _rows_matmul.weight_gradients_as_rows  # a switch beside disabled() and pieces()

_ENABLED = jax.make_user_context(default_value=True)
_PIECES = jax.make_user_context(default_value=None)


def enabled() -> bool:
    """Whether ``scan(..., fused=None)`` (the default, and every layer) takes the fused path."""
    return _ENABLED.value


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this block, scans *traced* here run the plain loop (e.g. for ``jax.jvp`` or Hessians).

    The switch acts when a function is traced, and ``jax.jit`` traces a function again when the
    switch differs from the time it last traced it; a compiled function (``.lower(...).compile()``)
    keeps the path it was compiled with.

    >>> import jax, recurrax, recurrax.fused
    >>> layer = recurrax.Recurrent(recurrax.GRU(2, 3, key=jax.random.key(0)))
    >>> with recurrax.fused.disabled():
    ...     _, tangent = jax.jvp(layer, (jax.numpy.ones((4, 2)),), (jax.numpy.ones((4, 2)),))
    >>> tangent.shape
    (4, 3)
    """
    with _ENABLED(False):
        yield


@contextlib.contextmanager
def pieces(count: int | None) -> Iterator[None]:
    """Within this block, fused scans *traced* here cut each sequence into ``count`` pieces of time
    (fewer where it has fewer steps; one runs it whole) instead of the number :func:`time_pieces`
    chooses; ``None`` restores that choice.

    The count :func:`time_pieces` chooses was measured on a 2-core CPU, and what a count gains there
    depends on the cell and on where XLA puts memory; on another machine (more cores, other
    caches) another count may pay. Measure it (``benchmarks/bench_pieces.py``) before setting
    it. Like :func:`disabled`, the setting acts when a function is traced (``jax.jit``
    traces a function again under another count). Values and gradients do not depend on it.

    >>> import jax, jax.numpy as jnp, recurrax, recurrax.fused
    >>> layer = recurrax.Recurrent(recurrax.LSTM(2, 3, key=jax.random.key(0)))
    >>> with recurrax.fused.pieces(6):
    ...     ys = jax.vmap(layer)(jnp.ones((32, 300, 2)))
    >>> ys.shape
    (32, 300, 3)
    """
    if count is not None:
        count = _checks.positive_int("pieces", count)
    with _PIECES(count):
        yield


# ============================================================================================
# The scan


def _tree_zeros(tree):
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def _shift_in(states, h0):
    """The states before each step: (h0, S_0, ..., S_{T-2}) from the states after them."""
    return jax.tree_util.tree_map(lambda s, h: jnp.concatenate([h[None], s[:-1]]), states, h0)


LOOP_MIN_BATCH = 32  # smaller batches (and one sequence) always hoist the input projection
LARGE_BATCH = 128  # batches this large project in the loop, whatever the cell and its weights
HOIST_SIZE = 2**18  # in between: input size x gates above which GRU and LSTM hoist
HOISTED_BYTES = 32 << 20  # glibc's largest mmap threshold: LSTM hoists projections up to this size


def project_in_loop(cell: Cell, batch: int | None, length: int | None = None, platform: str | None = None) -> bool:
    """Whether the forward loop computes each step's input projection itself, for a batch of
    ``batch`` sequences (None: one sequence, no ``vmap``) of ``length`` steps; ``platform``: where
    it runs (JAX's default backend unless given).

    Everywhere but on a CPU the projection is hoisted: a GPU runs the product over all steps as one
    kernel at full speed, and each product in the loop is one more kernel launched per step. On an
    H100 (LSTM, H = 128, two runs) the CPU's choices (in the loop at these batches) took 13.7 ms
    forward and 25.8 ms training at B = 32, T = 1000, and 11.7 / 30.4 ms at B = 256; hoisted,
    8.7 / 21.4 and 9.9 / 26.1 ms.

    In the loop, a step's projection is a second matrix product per step on the batch's rows;
    hoisted, it is one product over all steps before the loop, written time-major
    (:func:`_time_major_projections`) and read back by the loop. Hoisted, the product runs at full
    GEMM speed (and on every core of an idle machine: XLA runs a loop's body on one thread) and the
    input weights are not streamed through the cache at every step; in the loop, nothing of size
    T x B x gates is written. That buffer is where the allocator matters (:mod:`recurrax.allocator`):
    under glibc's defaults a larger block per call is more often a block of fresh pages. Measured
    on a 2-core CPU (T = 100..1000, H = input = 128 unless said, same process, medians):

    * B < 32: hoisted wins in training. LSTM at B = 1: 2.7 against 20.7 ms forward, 7.3 against
      25.4 ms training (T = 1000); at B = 2..16 hoisted trains LSTM and GRU 1.0-1.5x faster and runs
      LSTM's forward 1.3-1.8x faster (GRU's forward alone is 1.2-1.5x faster in the loop at
      B = 8..16).
    * B = 32..127, glibc's defaults: in the loop wins for GRU training, and LSTM's beyond
      :data:`HOISTED_BYTES` (below), when the input weights are small, hoisted when they are
      large (B = 32, H = 512: 1.1-1.3x). Elman, ForgetElman and MGU (``Rule.in_loop`` False)
      hoist: in the loop their forward was 1.2-1.3x slower and their training no faster
      (B = 32, T = 200).
    * B = 32..127, freed memory kept: hoisted wins for LSTM (``Rule.hoist_without_fresh_pages``):
      B = 32, T = 200 forward 8.6 against 9.9 ms, training 22.6 against 24.0 ms; B = 64, T = 1000
      forward 88.8 against 99.3 ms, training 248 against 263 ms. GRU was even either way
      (B = 32 and 64, T = 200: within 3%) in one piece of time; in pieces (:func:`time_pieces`)
      hoisted projections run beside the loop of the piece before them, and GRU hoists too
      (``Rule.hoist_where_memory_kept``): training at B = 32, T = 200 35.3 -> 30.4, 33.4 -> 31.2
      and 37.1 -> 33.7 ms (three runs), B = 64 82.4 -> 80.1 ms, B = 96 even, forward even. With
      glibc's defaults it stays in the loop (B = 32 hoisted: 51.3 against 39.5 ms, a T x B x 3H
      block of fresh pages).
    * B = 32..127, glibc's defaults, LSTM: hoisted wins while the projections fit in
      :data:`HOISTED_BYTES` (32 MiB: by default glibc maps any larger block afresh from the
      kernel). Inference at B = 32, T = 200: 7.6 against 9.7 ms; T = 400: 16.5 against 19.5 ms;
      B = 48..64, T = 100..200: 1.15-1.2x; and it loses beyond (B = 96, T = 200, 39 MB: 41.3
      against 30.7 ms; B = 32, T = 1000, 66 MB: 65.8 against 48.2 ms). Training, where the loop
      writes its residuals over the hoisted projections (``Rule.residuals_over_projections``):
      B = 32, T = 200 and B = 64, T = 100 (13 MB) 1.08-1.1x faster hoisted (22.2 against 24.5 ms,
      23.0 against 25.0), B = 32, T = 400, B = 48..64, T = 200 (19-26 MB) within 2% either way,
      so it follows the same rule (when the residuals had a buffer of their own, hoisted training
      was 3-8% slower at B = 32..96).
    * B >= 128: in the loop wins for every cell (B = 256: LSTM, GRU forward 2.4-2.9x, training
      1.2x; ForgetElman and MGU forward 1.6-1.8x, training equal; LSTM at H = 512: 1.1x). With
      freed memory kept LSTM's forward in the loop (with :func:`joint_product`) beats hoisted
      1.1-1.5x and its training is even (B = 128, 256).
    """
    rule = rule_for(cell)
    if batch is None or rule is None or batch < LOOP_MIN_BATCH:
        return False
    if (platform or jax.default_backend()) != "cpu":
        return False
    if batch >= LARGE_BATCH:
        return True
    width = jax.eval_shape(cell.project, jax.ShapeDtypeStruct((cell.input_size,), jnp.float32)).shape[-1]
    if rule.hoist_without_fresh_pages:
        itemsize = jnp.dtype(cell.weight_ih.dtype).itemsize
        small = length is not None and batch * length * width * itemsize <= HOISTED_BYTES
        if freed_memory_kept() or small:
            return False
    if rule.hoist_where_memory_kept and freed_memory_kept():
        return False
    return rule.in_loop and cell.input_size * width <= HOIST_SIZE


def _loop_layout(arrays):
    """The arrays with each matrix W (G, H) transposed to (H, G) once, before the loop, for the
    products ``h @ Wᵀ`` in it. XLA's CPU matmul (XNNPACK) re-packs a right-hand operand that is
    not laid out as (H, G) at every call: LSTM at B = 32, H = 128 ran its forward loop 1.2x
    slower with the matrices as they are stored. The backward loops' products ``dz @ W`` read
    W as stored."""
    return tuple(a.T if a.ndim == 2 else a for a in arrays)


def _loop(rule: Rule, unroll: int, in_loop: bool, joint: bool, inference: bool, cell: Cell, inputs, h0, h_reset,
          starts, mask):
    """The forward loop over one sequence: the states after every step (stacked) and the residuals.

    ``in_loop``: the step computes its input projection from ``inputs``, the sequence's inputs
    (:func:`project_in_loop`); otherwise ``inputs`` are ``xs @ W_ihᵀ`` and the step adds the bias.
    ``joint``: the step takes its input and recurrent products as one (:func:`joint_product`).
    ``inference``: the loop whose residuals nobody reads (:func:`fused_scan`); it writes its states
    into carried buffers (:func:`recurrax._loops.scan_into_buffers`), batch-major under ``vmap`` as
    the layer's outputs are (LSTM forward at B = 256, T = 200, H = 128: 45-48 -> 43-46 ms). The
    loop that saves residuals does so too where the backward loop writes its gradients over them
    (``Rule.gradients_over_residuals``: in place they must be laid out as its buffers are);
    otherwise it stacks them time-major (with buffers it trained no faster). With
    ``Rule.residuals_over_projections`` and hoisted projections (:func:`_over_projections`) it
    writes the residuals over the projections instead.

    The carried buffers, and ``Rule.prefetch``, are a CPU's choices; elsewhere the loop stacks its
    outputs with ``jax.lax.scan`` and reads no step ahead. On an H200 (B = 32 and 256, T = 200,
    H = 128 and 512, same process, medians of 5) the CPU's choices made GRU's forward 1.22-1.30x
    and its training 1.05-1.10x slower, LSTM's forward 1.05-1.08x slower, its training within 2%."""
    consts = _loop_layout(rule.consts(cell))
    w_ih_t, bias = _loop_layout((cell.weight_ih, cell.bias))
    if joint:
        w_joint = jnp.concatenate([w_ih_t, consts[0]])  # [W_ihᵀ; W_hhᵀ]

    def body(s, step_inputs):
        x, start, valid = step_inputs
        s_in = s if start is None else tree_where(start, h_reset, s)
        if joint:
            z = jnp.concatenate([x, rule.output(s_in)]) @ w_joint + bias
            s_new, res = rule.from_preactivation(s_in, z)
        else:
            p = (x @ w_ih_t if in_loop else x) + bias  # cell.project(x), its matrix in the loop's layout
            s_new, res = rule.forward(consts, s_in, p)
        if valid is not None:
            s_new = tree_where(valid, s_new, s)
        return s_new, (s_new, res)

    if _over_projections(rule, in_loop, inference):
        length = inputs.shape[0]
        state_buffers = jax.tree_util.tree_map(lambda s: jnp.zeros((length,) + s.shape, s.dtype), h0)

        def body_over_projections(s, step_inputs):
            (start, valid), (p, _) = step_inputs
            s_new, (s_out, res) = body(s, (p, start, valid))
            return s_new, (res, s_out)

        # The step's slot (its projections) reaches the carry only through the gates it writes.
        _, (res, states) = scan_in_place(body_over_projections, h0, (starts, mask), (inputs, state_buffers),
                                         unroll=unroll, read_ahead=False)
        return states, res
    loop = jax.lax.scan
    if jax.default_backend() == "cpu":
        if inference or rule.gradients_over_residuals:
            loop = scan_into_buffers
        if rule.prefetch:
            loop = functools.partial(scan_prefetched, loop=loop)
    _, (states, res) = loop(body, h0, (inputs, starts, mask), unroll=unroll)
    return states, res


def _over_projections(rule: Rule, in_loop: bool, inference: bool) -> bool:
    """Whether the forward loop writes its residuals over the hoisted projections
    (``Rule.residuals_over_projections``): in the loop that saves residuals (never one with a
    joint product, an inference loop), where the projections are hoisted."""
    return rule.residuals_over_projections and not (in_loop or inference)


def _time_major_projections(cell: Cell, xs):
    """``xs @ W_ihᵀ`` for a batch ``xs`` (B, T, input_size), laid out time-major (T, B, G), the
    layout the loop reads (``vmap`` maps the loop over their axis 1); the loop's step adds the bias.

    The inputs are transposed, not the projections: the inputs are the smaller (4x for LSTM at
    input = hidden size), and the product then writes the layout the loop reads. Projected
    batch-major (what ``vmap`` of the loop does), XLA computed the product, then added the bias
    while transposing and copying the T x B x G result; the bias costs nothing in the step's
    elementwise pass. Measured with freed memory kept (B = 32, T = 200, H = 128 unless said):
    MGU forward 4.8-5.0 -> 4.2-4.3 ms, LSTM at B = 8 training 6.1-6.3 -> 5.8 ms, LSTM hoisted
    forward 9.0 -> 8.4 ms, training 22.9 -> 22.6 ms, and at B = 64, T = 1000 93.3 -> 88.8 ms and
    257 -> 248 ms; the others within 3%."""
    return _input_products(cell, jnp.swapaxes(xs, 0, 1))


def _input_products(cell: Cell, xs):
    """``xs @ W_ihᵀ``: the hoisted input projections, but for the bias, which the loop's step adds."""
    return xs @ cell.weight_ih.T


def joint_product(cell: Cell, batch: int | None) -> bool:
    """Whether the inference loop (the one whose residuals nobody reads, :func:`fused_scan`) takes
    each step's input and recurrent products as one, ``[x, h] @ [W_ihᵀ; W_hhᵀ]``, for a batch of
    ``batch`` sequences: for cells with ``Rule.from_preactivation`` (LSTM) whose projection runs in
    the loop, from 128 sequences.

    XLA splits a product of that size over both threads, as it does the two products at such
    batches anyway: LSTM forward at B = 256, T = 200, H = 128 went from 46 to 42 ms. At B = 32 the
    joint product made the forward either 1.5x faster or 1.5x slower (6 or 14.5 ms against 9.4), by
    whether the operating system gave the second thread a core of its own; one thread per step
    there is steadier. In the loop that saves the residuals, the joint product made the training
    step 5-15% slower at B = 32 (and no faster at B = 256), so that loop keeps two products.
    """
    rule = rule_for(cell)
    return (
        rule is not None and rule.from_preactivation is not None and batch is not None
        and batch >= LARGE_BATCH and project_in_loop(cell, batch)
    )


def _forward_loop(rule: Rule, cell: Cell, xs, h0, h_reset, starts, mask, unroll, inference: bool = False):
    """The forward loop (no gradient flows through it), choosing where the input projection runs
    from the batch size, which only a ``custom_vmap`` rule sees, and the length (see
    :func:`project_in_loop`), and
    for ``inference`` whether its products are one (:func:`joint_product`)."""

    def choices(cell, batch, length):
        return project_in_loop(cell, batch, length), inference and joint_product(cell, batch)

    @jax.custom_batching.custom_vmap
    def run(cell, xs, h0, h_reset, starts, mask):
        in_loop, joint = choices(cell, None, None)
        inputs = xs if in_loop else _input_products(cell, xs)
        return _loop(rule, unroll, in_loop, joint, inference, cell, inputs, h0, h_reset, starts, mask)

    @run.def_vmap
    def run_batched(axis_size, in_batched, cell, xs, h0, h_reset, starts, mask):
        in_axes = list(jax.tree_util.tree_map(lambda batched: 0 if batched else None, tuple(in_batched)))
        if any(jax.tree_util.tree_leaves(in_batched[0])):  # an ensemble: each member's weights project its inputs
            projections = jax.vmap(_input_products, in_axes=(in_axes[0], in_axes[1]))(cell, xs)
            one = functools.partial(_loop, rule, unroll, False, False, inference)
            in_axes[1] = 0
            out = jax.vmap(one, in_axes=tuple(in_axes))(cell, projections, h0, h_reset, starts, mask)
            return out, jax.tree_util.tree_map(lambda _: True, out)
        in_loop, joint = choices(cell, axis_size, xs.shape[1] if in_batched[1] else xs.shape[0])
        if not in_loop and in_batched[1] and not _over_projections(rule, in_loop, inference):
            xs, in_axes[1] = _time_major_projections(cell, xs), 1
        elif not in_loop:
            xs = _input_products(cell, xs)
        one = functools.partial(_loop, rule, unroll, in_loop, joint, inference)
        out = jax.vmap(one, in_axes=tuple(in_axes))(cell, xs, h0, h_reset, starts, mask)
        return out, jax.tree_util.tree_map(lambda _: True, out)

    return run(cell, xs, h0, h_reset, starts, mask)


class _Static(NamedTuple):
    rule: Rule
    unroll: int


def _outputs(static: _Static, states, mask):
    ys = static.rule.output(states)
    if mask is not None:
        ys = tree_where(mask, ys, jnp.zeros_like(ys))
    final = jax.tree_util.tree_map(lambda s: s[-1], states)
    return ys, final


def _attach(static, ps, carriers, h0, h_reset, consts, states, res, starts, mask, inference_states):
    """(ys, final) from the inference loop's states when not differentiated; differentiated, from
    the loop that saved the residuals (:func:`_attach_fwd`), and the VJP is the fused backward loop.
    Each time XLA removes the loop whose results nobody reads."""
    del ps, carriers, h0, h_reset, consts, states, res, starts
    return _outputs(static, inference_states, mask)


def _attach_fwd(static, ps, carriers, h0, h_reset, consts, states, res, starts, mask, inference_states):
    del inference_states
    out = first_order_only(_outputs(static, states, mask), (ps, carriers, h0, h_reset))
    return out, (h0, h_reset, consts, states, res, starts, mask)


def _attach_bwd(static, saved, cts):
    """The backward loop: from the last step to the first, the state gradients carried and each
    step's pre-activation gradients dP written out; the weights' gradients then come from
    products over all steps (through the carriers' cotangents).

    dP goes into carried buffers, batch-major under ``vmap`` like the inputs it meets in the
    weight gradients (dW_ih = dPᵀ X): XLA still transposes dP for those products, but from a
    batch-major buffer instead of a time-major one (B = 256, T = 200, H = 128: 6.7 instead of
    14 ms; LSTM training 158-162 -> 148-156 ms). With ``Rule.gradients_over_residuals`` those
    buffers are the residuals' own (:func:`recurrax._loops.scan_in_place`): at B = 32, T = 200,
    H = 128 a training step then needs 28.1 instead of 34.6 MiB of scratch memory (LSTM), 31.3
    instead of 34.4 (GRU), under the 32 MiB above which glibc maps every block afresh from the
    kernel. With glibc's defaults the LSTM step went from 31.3-31.8 to 22.1-22.3 ms and GRU's
    from 26.8-27.6 to 18.1-18.3 ms, the times both take where the process keeps freed memory
    (:mod:`recurrax.allocator`), which this did not change. LSTM at B = 32, T = 1000: 159-162 -> 151-152 ms, at B = 256:
    210-215 -> 199 ms; other sizes within 2%.
    """
    h0, h_reset, consts, states, res, starts, mask = saved
    rule = static.rule
    dys, d_final = cts

    def step(carry, t, dy, r, s_out, start, valid):
        ds, d_reset = carry
        # The state before step t, read in place (no shifted copy of the states is made).
        before = jax.tree_util.tree_map(
            lambda a: jax.lax.dynamic_index_in_dim(a, jnp.maximum(t - 1, 0), 0, False), states
        )
        s_prev = tree_where(t == 0, h0, before)
        s_in = s_prev if start is None else tree_where(start, h_reset, s_prev)
        d_out = rule.add_output_grad(ds, dy)
        d_in, dp, extra = rule.backward(consts, r, s_in, s_out, d_out)
        if start is not None:
            reset = start if valid is None else start & valid  # a masked step ignores its start
            d_reset = jax.tree_util.tree_map(lambda acc, d: acc + jnp.where(reset, d, 0), d_reset, d_in)
            d_in = tree_where(start, _tree_zeros(d_in), d_in)
        if valid is not None:
            d_in = tree_where(valid, d_in, ds)
            dp, extra = jax.tree_util.tree_map(lambda d: jnp.where(valid, d, 0), (dp, extra))
        return (d_in, d_reset), (dp, extra)

    init = (d_final, _tree_zeros(h0) if starts is not None else None)
    steps = jnp.arange(len(dys))
    if rule.gradients_over_residuals:
        res_def = jax.tree_util.tree_structure(res)

        def body(carry, inputs):
            (t, dy, s_out, start, valid), slot = inputs
            r = jax.tree_util.tree_unflatten(res_def, jax.tree_util.tree_leaves(slot))
            return step(carry, t, dy, r, s_out, start, valid)

        (dh0, d_reset), (dps, extras) = scan_in_place(
            body, init, (steps, dys, states, starts, mask), _as_gradient_buffers(step, init, res, dys, states),
            reverse=True, unroll=static.unroll,
        )
    else:
        (dh0, d_reset), (dps, extras) = scan_into_buffers(
            lambda carry, inputs: step(carry, *inputs), init, (steps, dys, res, states, starts, mask),
            reverse=True, unroll=static.unroll,
        )
    d_carriers = rule.gate_grads(dps, extras)
    if starts is None:
        d_reset = _tree_zeros(h_reset)
    return dps, d_carriers, dh0, d_reset, None, None, None, None, None, None


def _as_gradient_buffers(step, init, res, dys, states):
    """The residuals as buffers of the backward step's outputs ``(dp, extra)``: the same leaves in
    that structure (``Rule.gradients_over_residuals`` promises that they match)."""
    first = jax.tree_util.tree_map(lambda a: a[0], (dys, res, states))
    outputs = jax.eval_shape(lambda c, i: step(c, 0, *i, None, None)[1], init, first)
    leaves = jax.tree_util.tree_leaves(res)
    wanted = jax.tree_util.tree_leaves(outputs)
    if [(a.shape[1:], a.dtype) for a in leaves] != [(o.shape, o.dtype) for o in wanted]:
        raise TypeError(
            "Rule.gradients_over_residuals: the backward step's outputs "
            f"{[(o.shape, o.dtype) for o in wanted]} do not match its residuals "
            f"{[(a.shape[1:], a.dtype) for a in leaves]}"
        )
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(outputs), leaves)


_attach = jax.custom_vjp(_attach, nondiff_argnums=(0,))
_attach.defvjp(_attach_fwd, _attach_bwd)


def _input_carriers(cell: Cell, xs, blocks: tuple[int, ...]):
    """The input projections ``xs @ W_ihᵀ + b`` as gradient carriers: one array, or for
    ``Rule.gate_blocks`` a tuple of one product per block of gates, whose cotangents are the
    backward step's per-block gradients."""
    if not blocks:
        return gate_matmul(xs, cell.weight_ih) + cell.bias
    cuts = [width * cell.hidden_size for width in itertools.accumulate(blocks[:-1])]
    weights = jnp.split(cell.weight_ih, cuts)
    biases = jnp.split(cell.bias, cuts)
    return tuple(gate_matmul(xs, w) + b for w, b in zip(weights, biases))


PIECE_MIN_BATCH = 32  # smaller batches run their sequence as one piece
MAX_PIECES = 8
PIECE_MAX_WEIGHTS = 2**18  # recurrent matrices with this many numbers or more run as one piece


def time_pieces(cell: Cell, batch: int | None, length: int, platform: str | None = None) -> int:
    """Into how many consecutive pieces of time :func:`fused_scan` cuts a batch of ``batch``
    sequences (None: one sequence, no ``vmap``) of ``length`` steps; ``platform``: where it runs
    (JAX's default backend unless given).

    Each piece is a fused scan of its own, the state carried from one to the next: its own forward
    and backward loops, input projections and weight-gradient products. XLA's CPU runtime runs
    operations that do not depend on each other at the same time, and a loop's body runs on one
    thread, so while the backward loop goes through one piece, the products that take the weight
    gradients of the piece after it (all of whose gradients are known) run on the other cores, as
    do the next piece's input projections while the forward loop goes through a piece. In one
    piece every product waits for its whole loop. About ``Rule.piece_steps`` steps a piece (50;
    25 for GRU, MGU and ForgetElman), at most :data:`MAX_PIECES` (each piece is compiled code of
    its own). Measured on a 2-core CPU (freed memory kept, T = 200 and H = 128 unless said, same
    process, medians of 7), training, in pieces of 50 steps:

    * B = 32: LSTM 40.6 -> 37.3 ms (4 pieces; 2 pieces 38.6, 8 pieces 37.9), GRU 34.8 -> 32.8,
      Elman 9.75 -> 8.37, ForgetElman 23.7 -> 21.3, MGU 24.7 -> 21.5; LSTM forward 17.3 -> 16.2;
      T = 1000: LSTM 203 -> 177 ms (8 pieces; 16 pieces 170).
    * B = 256: LSTM 311 -> 275 ms.
    * Recurrent matrices of :data:`PIECE_MAX_WEIGHTS` numbers (1 MiB in float32) or more run as
      one piece: LSTM at H = 512 (512 x 2048) took 0.99-1.04x the time in pieces at B = 32 and
      1.01-1.04x at B = 256; at H = 256 (256 x 1024), B = 64, T = 100, 2 pieces took 112 instead
      of 117 ms with input size 256 but 103 instead of 98 ms with input size 64 (the main job's
      model: less product work outside the loops to overlap). GRU at H = 512 (512 x 1536) gained
      (B = 32: 316 -> 295 ms).
    * Small batches lose: LSTM at B = 8 9.68 -> 9.89 ms, at B = 1 2.24 -> 2.75 ms (each piece
      costs a fixed time and there is little to overlap), hence :data:`PIECE_MIN_BATCH`.
    * The chunks of a sequence rematerialised chunk by chunk (longer than
      :data:`recurrax.scan.AUTO_CHUNK_LENGTH` steps, or ``chunk_size``) are cut the same way, the
      batch handed on by :func:`recurrax.scan` (inside the chunks' loop it cannot be read from
      ``vmap``): B = 32, T = 10,000, chunks of 250 steps in 5 pieces: LSTM 3517 -> 3184 ms (another
      run 3597 -> 3257; compiling it 0.8 -> 1.8 s), MGU 2105 -> 1834, Elman 946 -> 911, GRU even (3353 ->
      3469, 3098 -> 2988).
    * The backward pieces overlap less than the forward ones: XLA assigns memory for the order it
      schedules the program in, and its CPU runtime makes an operation that writes memory another
      reads wait for it; LSTM's backward loops (B = 32, T = 200, H = 128) each wait 1.8-3.2 ms for
      the input-weight products of the piece after them. Where these waits fall moves with any
      change to the program (``benchmarks/profile_step.py --timeline`` shows them); how long a
      piece pays best to be therefore differs by cell and from run to run (``Rule.piece_steps``).

    Off a CPU (one kernel after another on a GPU) a sequence is one piece. So is a cell on the
    native loops (:func:`runs_native`), which use every core themselves: :func:`fused_scan` does not
    ask this function then.

    Inside ``with recurrax.fused.pieces(count):`` every batch size, platform and cell gets ``count``
    pieces instead (at most one a step).
    """
    chosen = _PIECES.value
    if chosen is not None:
        return max(1, min(chosen, length))
    if (platform or jax.default_backend()) != "cpu" or batch is None or batch < PIECE_MIN_BATCH:
        return 1
    if cell.weight_hh.size >= PIECE_MAX_WEIGHTS:
        return 1
    return max(1, min(MAX_PIECES, length // rule_for(cell).piece_steps))


def fused_scan(cell: Cell, xs, h0, h_reset, starts, mask, unroll: int = 1, batch: int | None = None):
    """Run ``cell`` over one sequence ``xs`` (T, input_size) on the fused path.

    Same contract as the plain sequential loop of :mod:`recurrax.scan` (``starts`` reset the state
    to ``h_reset`` before a step, masked steps keep the state and output zeros); returns
    ``(ys, final_state)``. ``cell`` must have a rule (:func:`supports`). The sequence runs as
    consecutive pieces of time, each a fused scan of its own, as many as :func:`time_pieces`
    chooses for the batch size that ``jax.vmap`` maps the call over: ``batch`` where the caller
    knows it, else read from ``vmap`` (:func:`recurrax._batching.mapped_batch_size`), which cannot
    tell it inside the body of a ``jax.lax.scan`` (a chunk of a long sequence). A cell on the
    native loops (:func:`runs_native`) runs as one piece unless :func:`pieces` says otherwise.
    """
    rule = rule_for(cell)
    if rule is None:
        raise ValueError(f"{type(cell).__name__} has no fused scan; use fused=False")
    length = xs.shape[0]
    native_loops = runs_native(cell, xs, h0)

    if native_loops and batch is None:
        batch = mapped_batch_size(xs)

    def piece(xs, state, starts, mask):
        if native_loops:
            return native_piece(cell, xs, state, h_reset, starts, mask, batch)
        return _fused_piece(rule, cell, xs, state, h_reset, starts, mask, unroll)

    if native_loops and _PIECES.value is None:
        pieces = 1  # the native loops use every core; nothing would run beside them
    else:
        pieces = time_pieces(cell, mapped_batch_size(xs) if batch is None else batch, length)
    if pieces == 1:
        return piece(xs, h0, starts, mask)
    bounds = _piece_bounds(length, pieces)
    ys, state = [], h0
    for start, stop in zip(bounds[:-1], bounds[1:]):
        cut = lambda a: None if a is None else a[start:stop]  # noqa: E731
        y, state = piece(xs[start:stop], state, cut(starts), cut(mask))
        ys.append(y)
    return jnp.concatenate(ys), state


def _piece_bounds(length: int, pieces: int) -> list[int]:
    """Where ``pieces`` consecutive pieces of a sequence of ``length`` steps start, and its end."""
    return [round(k * length / pieces) for k in range(pieces + 1)]


def _fused_piece(rule: Rule, cell: Cell, xs, h0, h_reset, starts, mask, unroll: int):
    """One fused scan over all of ``xs``: forward loop, inference loop, carriers, backward rule."""
    ps = _input_carriers(cell, xs, rule.gate_blocks)  # their values are never used (the loop projects)
    loop_inputs = (rule, sg(cell), sg(xs), sg(h0), sg(h_reset), starts, mask, unroll)
    states, res = jax.tree_util.tree_map(sg, _forward_loop(*loop_inputs))
    inference_states = states
    if rule.from_preactivation is not None:
        inference_states = sg(_forward_loop(*loop_inputs, inference=True)[0])
    # The carriers' values are never used (XLA drops them); their cotangents give the gradients of
    # the weights (and of xs, through the projections).
    prev = _shift_in(states, h0)
    prev_h = rule.output(prev if starts is None else tree_where(starts, h_reset, prev))
    carriers = rule.carriers(cell, sg(prev_h), res)
    consts = sg(rule.consts(cell))
    return _attach(_Static(rule, unroll), ps, carriers, h0, h_reset, consts, states, res, starts, mask,
                   inference_states)
