r"""The fused scan's loops as native code (:mod:`recurrax.native`), and LinearRecurrence's on them.

On a CPU, XLA runs a loop's body on one thread, and two loops of one program one after the other,
so a batch's steps trained through XLA's loops use one core. The native loops give each thread its
own sequences and run them through every step. :func:`recurrax.fused.fused_scan` hands a piece of
a sequence to :func:`native_piece` where :func:`runs_native` says so: an
:class:`~recurrax.LSTM`, :class:`~recurrax.GRU`, :class:`~recurrax.Elman`,
:class:`~recurrax.ForgetElman` or :class:`~recurrax.MGU` (not subclasses) in float32 with a hidden
size that is a multiple of 16, on a CPU, its weights shared by the batch, where the native code
is built and not switched off. :func:`recurrax.scan` runs a :class:`~recurrax.LinearRecurrence` in sequential mode
through :func:`linear_scan` where :func:`runs_native_linear` says so.

What stays in XLA, as on the rest of the fused path: the input projections' gradients and the
weight gradients, from products over all steps through the *gradient carriers* (arrays whose
values XLA never computes and whose cotangents are the pre-activation gradients the backward loop
writes; see :mod:`recurrax.fused`; their products, and LinearRecurrence's input products, are
:func:`recurrax._rows_matmul.gate_matmul`), so ``jax.vmap``, per-example gradients and ensembles
stay exact. The forward loop also takes the input products, one product a step ``[x_t, h_{t-1}]
[W_xᵀ; W_hᵀ]`` per gate block (the GRU: ``x_t W_ihᵀ`` and ``h_{t-1} W_hhᵀ``, since its reset gate
multiplies the recurrent part alone), except where the batch runs on one thread
(:func:`_one_thread`): the loops then read them from one product over all steps. The biases'
gradients are summed per sequence in the backward loop. A masked step keeps the state (in the
loops) and outputs zeros (here); a step that starts an episode (``starts``) reads the reset state
instead of the state before it, and the backward loop returns the reset state's gradient.
First-order reverse-mode derivatives only, as for every fused scan.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from . import native
from ._batching import mapped_batch_size
from ._first_order import first_order_only
from ._rows_matmul import gate_matmul
from .cells.base import Cell
from .cells.elman import Elman, ForgetElman
from .cells.gru import GRU
from .cells.linear import LinearRecurrence
from .cells.lstm import LSTM
from .cells.mgu import MGU

sg = jax.lax.stop_gradient

NATIVE_LOOPS = {LSTM: "lstm", GRU: "gru", Elman: "elman", ForgetElman: "forget_gate", MGU: "forget_gate"}


def _native_allowed(loops: str, arrays) -> bool:
    """What every native loop needs: switched on, a CPU, float32 ``arrays``, the code built."""
    if not native.enabled() or jax.default_backend() != "cpu":
        return False
    if any(a.dtype != jnp.float32 for a in arrays):
        return False
    return native.available(loops)


def _shared(weights) -> bool:
    """Whether no ``jax.vmap`` maps ``weights`` (an ensemble's members would each have their own)."""
    return all(mapped_batch_size(w) is None for w in weights)


def _parameters(cell: Cell):
    """The cell's arrays (its parameters), in a list."""
    return [leaf for leaf in jax.tree_util.tree_leaves(cell) if isinstance(leaf, jax.Array)]


def runs_native(cell: Cell, xs, h0) -> bool:
    """Whether the fused scan of ``cell`` over ``xs`` runs native loops instead of XLA's: one of
    :data:`NATIVE_LOOPS`' cells (not a subclass; an Elman network's activation one of
    :data:`recurrax.native.ACTIVATIONS`) in float32 with a hidden size that is a multiple of 16, on a
    CPU, its weights shared by the batch (not an ensemble under
    ``jax.vmap``), where the native code is built (:func:`recurrax.native.available`) and not
    switched off (:func:`recurrax.native.disabled`)."""
    loops = NATIVE_LOOPS.get(type(cell))
    if loops is None or cell.hidden_size % 16 != 0:
        return False
    if getattr(cell, "activation", "tanh") not in native.ACTIVATIONS:
        return False
    weights = _parameters(cell)
    return _shared(weights) and _native_allowed(loops, [xs, *weights, *jax.tree_util.tree_leaves(h0)])


def _batched_call(kernel, batched_args: tuple[bool, ...]):
    """``kernel``, whose arguments marked True in ``batched_args`` have a leading batch axis, as a
    function of one sequence's arrays: unbatched it runs a batch of one; under ``jax.vmap`` those
    arguments not mapped are broadcast over the batch and the kernel runs once. Where ``vmap`` maps
    the others (the weights: an ensemble, which :func:`runs_native` cannot see inside the body of a
    rematerialised chunk) the kernel runs once per sequence, one after another."""

    def one_sequence(*args):
        args = [a[None] if batched else a for a, batched in zip(args, batched_args)]
        return tuple(out[0] for out in kernel(*args))

    one = jax.custom_batching.custom_vmap(one_sequence)

    @one.def_vmap
    def batched(axis_size, in_batched, *args):
        if any(b for b, per_batch in zip(in_batched, batched_args) if not per_batch):
            in_axes = tuple(0 if b else None for b in in_batched)
            out = jax.vmap(one_sequence, in_axes=in_axes)(*args)  # the kernel's call maps sequentially
        else:
            args = [a if b or not per_batch else jnp.broadcast_to(a, (axis_size,) + a.shape)
                    for a, b, per_batch in zip(args, in_batched, batched_args)]
            out = kernel(*args)
        return out, tuple(True for _ in out)

    return one


def _as_tuple(kernel):
    """``kernel`` returning a tuple where it returns one array."""
    return lambda *args: (kernel(*args),)


def _attach(backward, differentiable, saved, training, inference):
    """``(states h, final state)``: ``inference`` (the inference loop's) where nobody differentiates
    them; differentiated, ``training`` (from the forward loop that saved what the backward loop
    reads), and the VJP is ``backward(saved, cotangents)``, which gives the cotangents of
    ``differentiable`` (the projections, biases, carriers and initial state). XLA keeps whichever
    forward loop is read."""
    del differentiable, saved, training
    return inference


def _attach_fwd(backward, differentiable, saved, training, inference):
    del inference
    return first_order_only(training, differentiable), saved


def _attach_bwd(backward, saved, cts):
    return backward(saved, cts), None, None, None


_attach = jax.custom_vjp(_attach, nondiff_argnums=(0,))
_attach.defvjp(_attach_fwd, _attach_bwd)


# The fewest sequences a native loop's thread takes (loops.h), so that a batch of fewer than twice
# as many runs on one thread.
SEQUENCES_PER_THREAD = 8


def _one_thread(batch: int | None) -> bool:
    """Whether the native loops run a batch of ``batch`` sequences on one thread (None: unknown,
    taken as no). The forward loops then read their input products from one product over all
    steps that XLA computes on every core, rather than taking them in their steps on one.
    Measured at T = 200, H = 128 on a 2-core CPU, same process, native / XLA's fused loops, ms: LSTM
    at B = 4 inference 2.71 / 2.46 and training 6.49 / 6.49 (products in the steps: 4.48 / 2.59 and
    7.23 / 5.84), at B = 2 1.61 / 1.58 and 3.35 / 4.07 (1.80 / 1.46, 3.78 / 3.41); Elman at B = 4
    0.75 / 0.81 and 1.76 / 1.75 (1.06 / 0.87, 2.29 / 1.81)."""
    return batch is not None and batch < 2 * SEQUENCES_PER_THREAD


def _steps(mask, length: int):
    """The loops' mask, float32 (1: the step runs)."""
    return jnp.ones((length,), jnp.float32) if mask is None else mask.astype(jnp.float32)


def _starts(starts, length: int):
    """The loops' episode starts, float32 (1: the step reads the reset state)."""
    return jnp.zeros((length,), jnp.float32) if starts is None else starts.astype(jnp.float32)


def _previous(h_first, hs, starts, h_reset):
    """The states before each step: (h0, h_0, ..., h_{T-2}), ``h_reset`` at the ``starts``."""
    previous = jnp.concatenate([h_first[None], hs[:-1]])
    return previous if starts is None else jnp.where(starts[:, None], h_reset, previous)


def native_piece(cell: Cell, xs, h0, h_reset, starts, mask, batch: int | None = None):
    """``(ys, final_state)`` of ``cell`` over ``xs`` (T, input_size) on its native loops
    (:func:`runs_native` must hold); a start resets the state to ``h_reset`` before its step (unless
    the step is masked), masked steps output zeros. ``batch``: the number of sequences ``jax.vmap``
    maps the call over, where known (:func:`_one_thread`)."""
    steps = _steps(mask, xs.shape[0])
    if type(cell) is LSTM:
        states, final = _lstm_piece(cell, xs, h0, h_reset, starts, steps, batch)
    elif type(cell) is GRU:
        states, final = _gru_piece(cell, xs, h0, h_reset, starts, steps, batch)
    elif type(cell) is Elman:
        states, final = _elman_piece(cell, xs, h0, h_reset, starts, steps, batch)
    else:
        states, final = _forget_gate_piece(cell, xs, h0, h_reset, starts, steps, batch)
    return (states if mask is None else jnp.where(mask[:, None], states, 0.0)), final


# --- LSTM ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _lstm_calls(projected: bool):
    per_batch = (True, True, True, True, True, False, False, True, True)
    return (_batched_call(functools.partial(native.lstm_forward, projected=projected), per_batch),
            _batched_call(functools.partial(native.lstm_inference, projected=projected), per_batch))


_lstm_backward = _batched_call(native.lstm_backward, (True, True, True, True, True, True, True, True, True, False))


def _lstm_piece(cell: LSTM, xs, h0, h_reset, starts, steps, batch):
    frozen = sg(cell)
    h_first, c_first = sg(h0)
    begins = _starts(starts, xs.shape[0])
    reset_h, reset_c = sg(h_reset)
    projected = _one_thread(batch)
    forward, inference = _lstm_calls(projected)
    resets = (begins, reset_h, reset_c)
    if projected:  # the input products in XLA, over every core
        loop_inputs = (sg(xs) @ frozen.weight_ih.T, steps, *resets, frozen.weight_hh.T, frozen.bias, h_first, c_first)
    else:
        w_t = jnp.concatenate([frozen.weight_ih, frozen.weight_hh], axis=1).T  # [W_ihᵀ; W_hhᵀ]
        loop_inputs = (sg(xs), steps, *resets, w_t, frozen.bias, h_first, c_first)
    gates, hs, cs = forward(*loop_inputs)
    hs_inference, c_last = inference(*loop_inputs)
    projections = gate_matmul(xs, cell.weight_ih)  # carriers: their values are never used
    carriers = (gate_matmul(_previous(h_first, hs, starts, reset_h), cell.weight_hh),)
    saved = (c_first, steps, begins, reset_c, gates, cs, frozen.weight_hh)
    return _attach(_lstm_vjp, (projections, cell.bias, carriers, h0, h_reset), saved,
                   (hs, (hs[-1], cs[-1])), (hs_inference, (hs_inference[-1], c_last)))


def _lstm_vjp(saved, cts):
    c_first, steps, begins, reset_c, gates, cs, w_hh = saved
    dys, (dh_last, dc_last) = cts
    dz, dh0, dc0, db, dh_reset, dc_reset = _lstm_backward(gates, cs, dys, steps, begins, reset_c, dh_last, dc_last,
                                                          c_first, w_hh)
    return dz, db, (dz,), (dh0, dc0), (dh_reset, dc_reset)


# --- GRU ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _gru_calls(projected: bool):
    per_batch = (True, True, True, True, False, False, False, False, True)
    return (_batched_call(functools.partial(native.gru_forward, projected=projected), per_batch),
            _batched_call(functools.partial(native.gru_forward, inference=True, projected=projected), per_batch))


_gru_backward = _batched_call(native.gru_backward, (True, True, True, True, True, True, True, True, False))


def _gru_piece(cell: GRU, xs, h0, h_reset, starts, steps, batch):
    frozen = sg(cell)
    h_first = sg(h0)
    projected = _one_thread(batch)
    forward, inference = _gru_calls(projected)
    if projected:  # the input products in XLA, over every core; the loops then read no W_ihᵀ
        inputs, w_ih_t = sg(xs) @ frozen.weight_ih.T, jnp.zeros((0, 3 * cell.hidden_size), xs.dtype)
    else:
        inputs, w_ih_t = sg(xs), frozen.weight_ih.T
    resets = (_starts(starts, xs.shape[0]), sg(h_reset))
    loop_inputs = (inputs, steps, *resets, w_ih_t, frozen.weight_hh.T, frozen.bias, frozen.bias_hn, h_first)
    hs, gates = forward(*loop_inputs)
    (hs_inference,) = inference(*loop_inputs)
    # Carriers, one product per block of gates (r and z; n), as on XLA's loops.
    cut = 2 * cell.hidden_size
    w_ih_rz, w_in = jnp.split(cell.weight_ih, [cut])
    w_hh_rz, w_hn = jnp.split(cell.weight_hh, [cut])
    h_prev = _previous(h_first, hs, starts, resets[1])
    carriers = ((gate_matmul(xs, w_ih_rz), gate_matmul(xs, w_in)),
                (gate_matmul(h_prev, w_hh_rz), gate_matmul(h_prev, w_hn)))
    saved = (hs, gates, steps, resets, h_first, frozen.weight_hh)
    return _attach(_gru_vjp, (carriers, cell.bias, cell.bias_hn, h0, h_reset), saved, (hs, hs[-1]),
                   (hs_inference, hs_inference[-1]))


def _gru_vjp(saved, cts):
    hs, gates, steps, resets, h_first, w_hh = saved
    dys, dh_last = cts
    d_rz, dn, dgn, dh0, db, db_hn, d_reset = _gru_backward(hs, gates, dys, steps, *resets, dh_last, h_first, w_hh)
    return ((d_rz, dn), (d_rz, dgn)), db, db_hn, dh0, d_reset


# --- Elman --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _elman_calls(activation: str, projected: bool):
    forward = functools.partial(native.elman_forward, activation=activation, projected=projected)
    backward = functools.partial(native.elman_backward, activation=activation)
    return (_batched_call(_as_tuple(forward), (True, True, True, True, False, False, True)),
            _batched_call(backward, (True, True, True, True, True, False)))


def _elman_piece(cell: Elman, xs, h0, h_reset, starts, steps, batch):
    projected = _one_thread(batch)
    forward, backward = _elman_calls(cell.activation, projected)
    frozen = sg(cell)
    h_first = sg(h0)
    begins = _starts(starts, xs.shape[0])
    if projected:  # the input products in XLA, over every core
        (hs,) = forward(sg(xs) @ frozen.weight_ih.T, steps, begins, sg(h_reset), frozen.weight_hh.T, frozen.bias,
                        h_first)
    else:
        w_t = jnp.concatenate([frozen.weight_ih, frozen.weight_hh], axis=1).T  # [W_ihᵀ; W_hhᵀ]
        (hs,) = forward(sg(xs), steps, begins, sg(h_reset), w_t, frozen.bias, h_first)
    projections = gate_matmul(xs, cell.weight_ih)  # carriers: their values are never used
    carriers = (gate_matmul(_previous(h_first, hs, starts, sg(h_reset)), cell.weight_hh),)
    out = (hs, hs[-1])
    return _attach(_elman_vjp(backward), (projections, cell.bias, carriers, h0, h_reset),
                   (hs, steps, begins, frozen.weight_hh), out, out)


@functools.lru_cache(maxsize=None)
def _elman_vjp(backward):
    def vjp(saved, cts):
        hs, steps, begins, w_hh = saved
        dys, dh_last = cts
        dz, dh0, db, d_reset = backward(hs, dys, steps, begins, dh_last, w_hh)
        return dz, db, (dz,), dh0, d_reset

    return vjp


# --- ForgetElman and MGU: a forget gate, then a second product with the gated state -------------


@functools.lru_cache(maxsize=None)
def _forget_gate_calls(kind: str, activation: str, projected: bool):
    per_batch = (True, True, True, True, False, False, False, True)
    forward = functools.partial(native.forget_gate_forward, kind, activation=activation, projected=projected)
    inference = functools.partial(native.forget_gate_forward, kind, activation=activation, inference=True,
                                  projected=projected)
    residuals = 3 if kind == "mgu" else 2

    def backward(*args):
        residual_arrays, rest = args[:residuals], args[residuals:]
        return native.forget_gate_backward(kind, residual_arrays, *rest, activation=activation)

    backward_batched = (True,) * residuals + (True, True, True, True, True, True, False, False)
    return (_batched_call(forward, per_batch), _batched_call(inference, per_batch),
            _batched_call(backward, backward_batched))


def _forget_gate_piece(cell: ForgetElman | MGU, xs, h0, h_reset, starts, steps, batch):
    kind = "mgu" if type(cell) is MGU else "forget_elman"
    projected = _one_thread(batch)
    forward, inference, backward = _forget_gate_calls(kind, getattr(cell, "activation", "tanh"), projected)
    frozen = sg(cell)
    h_first = sg(h0)
    hidden = cell.hidden_size
    resets = (_starts(starts, xs.shape[0]), sg(h_reset))
    if projected:  # the input products [W_fx x_t, W_hx x_t] in XLA, over every core
        loop_inputs = (sg(xs) @ frozen.weight_ih.T, steps, *resets, frozen.weight_fh.T, frozen.weight_hh.T,
                       frozen.bias, h_first)
    else:
        w_fx, w_hx = jnp.split(frozen.weight_ih, [hidden])
        wf_t = jnp.concatenate([w_fx, frozen.weight_fh], axis=1).T  # [W_fxᵀ; W_fhᵀ]
        wh_t = jnp.concatenate([w_hx, frozen.weight_hh], axis=1).T  # [W_hxᵀ; W_hhᵀ]
        loop_inputs = (sg(xs), steps, *resets, wf_t, wh_t, frozen.bias, h_first)
    residuals = forward(*loop_inputs)
    (hs_inference,) = inference(*loop_inputs)
    hs, gates = residuals[0], residuals[1]
    # Carriers, one product per gate block (no product reads a block sliced out of a stacked dP).
    weight_fx, weight_hx = jnp.split(cell.weight_ih, [hidden])
    projections = (gate_matmul(xs, weight_fx), gate_matmul(xs, weight_hx))
    h_prev = _previous(h_first, hs, starts, resets[1])
    carriers = (gate_matmul(h_prev, cell.weight_fh), gate_matmul(gates * h_prev, cell.weight_hh))
    saved = (residuals, steps, resets, h_first, frozen.weight_fh, frozen.weight_hh)
    return _attach(_forget_gate_vjp(backward), (projections, cell.bias, carriers, h0, h_reset), saved,
                   (hs, hs[-1]), (hs_inference, hs_inference[-1]))


@functools.lru_cache(maxsize=None)
def _forget_gate_vjp(backward):
    def vjp(saved, cts):
        residuals, steps, resets, h_first, w_fh, w_hh = saved
        dys, dh_last = cts
        dzf, dz, dh0, db, d_reset = backward(*residuals, dys, steps, *resets, dh_last, h_first, w_fh, w_hh)
        return (dzf, dz), db, (dzf, dz), dh0, d_reset

    return vjp


# --- LinearRecurrence ---------------------------------------------------------------------------

_linear_forward = _batched_call(_as_tuple(native.linear_forward), (True, True, True, True, False, False, True))
_linear_backward = _batched_call(native.linear_backward, (True, True, True, True, True, False, True, True))


def runs_native_linear(cell: Cell, xs, h0) -> bool:
    """Whether :func:`recurrax.scan` runs ``cell`` over ``xs`` in sequential mode on the native
    loop (:func:`linear_scan`): a :class:`~recurrax.LinearRecurrence` (not a subclass) in float32,
    on a CPU, its weights shared by the batch, where the native code is built and not switched off."""
    if type(cell) is not LinearRecurrence:
        return False
    weights = _parameters(cell)
    return _shared(weights) and _native_allowed("linear", [xs, *weights, *jax.tree_util.tree_leaves(h0)])


def linear_scan(cell: LinearRecurrence, xs, h0, h_reset, starts, mask):
    """``(ys, final_state)`` of a linear recurrence over ``xs`` (T, input_size) on the native loop
    (:func:`runs_native_linear` must hold): XLA computes the input products ``xs Wᵀ`` (one product
    over all steps), the loop adds the bias and sums its gradient per sequence; a start resets the
    state to ``h_reset`` before its step, masked steps keep the state and output zeros. The
    products' and γ's gradients flow on through XLA's autodiff. (Measured on a 2-core CPU, the
    products taken inside the loop, as the other cells' loops do, trained no faster and ran
    forward 1.1-1.4x slower.)"""
    steps = _steps(mask, xs.shape[0])
    begins = _starts(starts, xs.shape[0])
    products = gate_matmul(xs, cell.weight)  # its weight gradient one product over all steps
    gamma = cell.decay
    h_first = sg(h0)
    (hs,) = _linear_forward(sg(products), steps, begins, sg(h_reset), sg(gamma), sg(cell.bias), h_first)
    out = (hs, hs[-1])
    states, final = _attach(_linear_vjp, (products, gamma, cell.bias, h0, h_reset),
                            (hs, steps, begins, sg(h_reset), sg(gamma), h_first), out, out)
    return (states if mask is None else jnp.where(mask[:, None], states, 0.0)), final


def _linear_vjp(saved, cts):
    hs, steps, begins, h_reset, gamma, h_first = saved
    dys, dh_last = cts
    dp, dh0, dgamma, db, d_reset = _linear_backward(hs, dys, steps, begins, h_reset, gamma, h_first, dh_last)
    return dp, dgamma, db, dh0, d_reset
