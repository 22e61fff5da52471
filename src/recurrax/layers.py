r"""Sequence layers built from cells: recurrent, bidirectional, deep stacks, and output heads.

A layer maps **one** sequence of shape (T, features); batches come from ``jax.vmap``:

>>> import jax, jax.numpy as jnp, recurrax
>>> layer = recurrax.Recurrent(recurrax.LSTM(3, 16, key=jax.random.key(0)))
>>> batch = jnp.ones((8, 20, 3))                  # (B, T, input_size)
>>> jax.vmap(layer)(batch).shape                  # (B, T, hidden_size)
(8, 20, 16)
"""

from __future__ import annotations

import numbers
from typing import Any, Literal, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp

from . import _checks
from ._rows_matmul import rows_matmul
from .cells import AssociativeCell, Cell, get_cell_class
from .cells.activations import get_activation
from .cells.base import uniform_init
from .scan import SCAN_MODES, check_mode, scan as run_scan

ScanChoice = Literal["auto", "sequential", "associative", "chunked"]
MERGES = ("concat", "sum")


def auto_scan_mode(cell: Cell) -> str:
    """The scan ``"auto"`` picks for ``cell`` on the default JAX backend.

    On a CPU, ``"sequential"`` for every cell: there the associative scan's extra work (about
    log T combine passes over the whole sequence, and their memory) costs more than the parallelism
    it buys; measured with ``benchmarks/bench_linear.py``, the sequential loop trains fastest for
    every linear cell at 1k, 10k and 100k steps. On accelerators, ``"associative"`` for cells that
    have it.
    """
    if isinstance(cell, AssociativeCell) and jax.default_backend() != "cpu":
        return "associative"
    return "sequential"


def _resolve_scan(cell: Cell, scan: str) -> str:
    _checks.choice("scan", scan, ("auto",) + SCAN_MODES)
    if scan == "auto":
        return auto_scan_mode(cell)
    return check_mode(cell, scan)


class Recurrent(eqx.Module):
    """A cell run over a sequence: ``ys = layer(xs)``.

    ``scan`` chooses how: ``"sequential"`` (``jax.lax.scan``, any cell), ``"associative"``
    (``jax.lax.associative_scan``, cells with an associative combine), ``"chunked"`` (associative
    within chunks of ``chunk_size`` steps, state carried between them, memory bounded) or ``"auto"``
    (sequential on a CPU, associative on accelerators where the cell has it: :func:`auto_scan_mode`). ``chunk_size`` with ``"sequential"`` rematerialises each
    chunk in the backward pass (see :mod:`recurrax.scan`). ``reverse=True`` runs from the last step
    to the first.

    ``layer(xs, state=None, *, starts=None, mask=None, return_state=False)``: ``xs`` (T, input_size)
    → ``ys`` (T, output_size), plus the final state when ``return_state``. ``starts`` resets the
    state at episode starts; masked steps keep the state and output zeros (see :mod:`recurrax.scan`).
    """

    cell: Cell
    scan: str = eqx.field(static=True)
    reverse: bool = eqx.field(static=True)
    chunk_size: int | None = eqx.field(static=True)

    def __init__(self, cell: Cell, scan: ScanChoice = "auto", *, reverse: bool = False, chunk_size: int | None = None):
        if not isinstance(cell, Cell):
            raise TypeError(f"Recurrent takes a recurrax Cell, got {type(cell).__name__}")
        self.cell = cell
        self.scan = _resolve_scan(cell, scan)
        self.reverse = bool(reverse)
        self.chunk_size = None if chunk_size is None else _checks.positive_int("chunk_size", chunk_size)

    @property
    def input_size(self) -> int:
        return self.cell.input_size

    @property
    def output_size(self) -> int:
        return self.cell.output_size

    def init_state(self) -> Any:
        return self.cell.init_state()

    def __call__(self, xs, state=None, *, starts=None, mask=None, reset_state=None, return_state: bool = False):
        ys, final = run_scan(
            self.cell, xs, state, starts=starts, mask=mask, reset_state=reset_state, reverse=self.reverse,
            mode=self.scan, chunk_size=self.chunk_size,
        )
        return (ys, final) if return_state else ys

    def step(self, state, x):
        """One step of streaming inference: ``state, y = layer.step(state, x)``."""
        if self.reverse:
            raise ValueError("a reversed layer reads the sequence from its end and cannot stream step by step")
        return self.cell(state, x)


class Bidirectional(eqx.Module):
    """Forward and backward passes over the same sequence, merged per step.

    ``merge="concat"`` gives [→h_t; ←h_t] (size 2H), ``"sum"`` gives →h_t + ←h_t. The state is the
    pair (forward state, backward state). Takes two cells (or two :class:`Recurrent` layers).
    """

    forward: Recurrent
    backward: Recurrent
    merge: str = eqx.field(static=True)

    def __init__(self, forward: Cell | Recurrent, backward: Cell | Recurrent, *, merge: str = "concat", scan: ScanChoice = "auto"):
        self.merge = _checks.choice("merge", merge, MERGES)
        fwd = forward if isinstance(forward, Recurrent) else Recurrent(forward, scan)
        bwd = backward if isinstance(backward, Recurrent) else Recurrent(backward, scan)
        if fwd.reverse:
            raise ValueError("the forward layer of Bidirectional must not be reversed")
        if not bwd.reverse:
            bwd = Recurrent(bwd.cell, bwd.scan, reverse=True, chunk_size=bwd.chunk_size)
        if fwd.input_size != bwd.input_size:
            raise ValueError(f"forward and backward input sizes differ: {fwd.input_size} vs {bwd.input_size}")
        if merge == "sum" and fwd.output_size != bwd.output_size:
            raise ValueError(f"merge='sum' needs equal output sizes, got {fwd.output_size} and {bwd.output_size}")
        self.forward, self.backward = fwd, bwd

    @property
    def input_size(self) -> int:
        return self.forward.input_size

    @property
    def output_size(self) -> int:
        size = self.forward.output_size
        return size + self.backward.output_size if self.merge == "concat" else size

    def init_state(self) -> tuple[Any, Any]:
        return self.forward.init_state(), self.backward.init_state()

    def __call__(self, xs, state=None, *, starts=None, mask=None, reset_state=None, return_state: bool = False):
        fwd_state, bwd_state = _state_pair("state", state)
        fwd_reset, bwd_reset = _state_pair("reset_state", reset_state)
        ys_f, final_f = self.forward(xs, fwd_state, starts=starts, mask=mask, reset_state=fwd_reset, return_state=True)
        ys_b, final_b = self.backward(xs, bwd_state, starts=starts, mask=mask, reset_state=bwd_reset, return_state=True)
        ys = jnp.concatenate([ys_f, ys_b], -1) if self.merge == "concat" else ys_f + ys_b
        return (ys, (final_f, final_b)) if return_state else ys


def _state_pair(name: str, state: Any) -> tuple[Any, Any]:
    """A Bidirectional layer's (forward, backward) states, or (None, None) for None; a clear error else."""
    if state is None:
        return None, None
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        kind = f"an array of shape {state.shape}" if hasattr(state, "shape") else type(state).__name__
        raise ValueError(f"the {name} of a Bidirectional layer is a (forward, backward) pair of states, "
                         f"got {kind} (init_state() gives the layout)")
    return state[0], state[1]


class Stack(eqx.Module):
    """Deep recurrent network: layers applied in turn, with optional dropout between them.

    Layer l + 1 reads layer l's outputs. The state is a tuple with one state per layer. Dropout
    (rate ``dropout``) acts on the outputs of every layer but the last, and only when a ``key``
    is passed; without a key the stack is deterministic (inference).
    """

    layers: tuple[Recurrent | Bidirectional, ...]
    dropout: float = eqx.field(static=True)

    def __init__(self, layers: Sequence[Recurrent | Bidirectional], *, dropout: float = 0.0):
        layers = tuple(layers)
        if not layers:
            raise ValueError("a Stack needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, (Recurrent, Bidirectional)):
                hint = f" (wrap a cell: Recurrent({type(layer).__name__}(...)))" if isinstance(layer, Cell) else ""
                raise TypeError(f"a Stack's layers are Recurrent or Bidirectional layers; layer {i} is a "
                                f"{type(layer).__name__}{hint}")
        for i, (below, above) in enumerate(zip(layers, layers[1:])):
            if below.output_size != above.input_size:
                raise ValueError(
                    f"layer {i + 1} expects input_size={above.input_size} but layer {i} outputs {below.output_size}"
                )
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        self.layers = layers
        self.dropout = float(dropout)

    @property
    def input_size(self) -> int:
        return self.layers[0].input_size

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def init_state(self) -> tuple[Any, ...]:
        return tuple(layer.init_state() for layer in self.layers)

    def __call__(
        self, xs, state=None, *, starts=None, mask=None, reset_state=None, return_state: bool = False, key=None
    ):
        states = self._per_layer("state", state)
        resets = self._per_layer("reset_state", reset_state)
        keys = [None] * len(self.layers) if key is None else list(jax.random.split(key, len(self.layers)))
        finals = []
        for i, (layer, h0, h_reset) in enumerate(zip(self.layers, states, resets)):
            xs, final = layer(xs, h0, starts=starts, mask=mask, reset_state=h_reset, return_state=True)
            finals.append(final)
            if i < len(self.layers) - 1:
                xs = dropout(xs, self.dropout, keys[i])
        return (xs, tuple(finals)) if return_state else xs

    def _per_layer(self, name: str, value) -> tuple:
        if value is None:
            return (None,) * len(self.layers)
        if not isinstance(value, (tuple, list)) or len(value) != len(self.layers):
            raise ValueError(f"a Stack's {name} is a tuple of {len(self.layers)} layer states")
        return tuple(value)

    def step(self, state, x):
        """One step of streaming inference through every layer: ``state, y = stack.step(state, x)``."""
        if not all(isinstance(layer, Recurrent) for layer in self.layers):
            raise ValueError("a bidirectional stack reads whole sequences and cannot stream step by step")
        new_states = []
        for layer, h in zip(self.layers, state):
            h, x = layer.step(h, x)
            new_states.append(h)
        return tuple(new_states), x


def dropout(xs: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate`` and rescale; identity without a key."""
    if key is None or rate == 0.0:
        return xs
    keep = jax.random.bernoulli(key, 1.0 - rate, xs.shape)
    return jnp.where(keep, xs / (1.0 - rate), 0.0)


def make_stack(
    cell: str | type[Cell],
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    *,
    bidirectional: bool = False,
    merge: str = "concat",
    dropout: float = 0.0,
    scan: ScanChoice = "auto",
    chunk_size: int | None = None,
    key: jax.Array,
    **cell_kwargs,
) -> Stack:
    """Build a (deep, optionally bidirectional) stack of one cell type.

    ``cell`` is a registered name (``"lstm"``, ``"gru"``, ``"elman"``, ...) or a cell class. With
    ``bidirectional=True`` every layer is a :class:`Bidirectional` layer (a deep bidirectional
    network), and layer l + 1 reads both directions of layer l.

    >>> import jax, recurrax
    >>> net = recurrax.make_stack("gru", 3, 32, num_layers=2, bidirectional=True, key=jax.random.key(0))
    >>> net(jax.numpy.ones((5, 3))).shape
    (5, 64)
    """
    cls = get_cell_class(cell) if isinstance(cell, str) else cell
    if not (isinstance(cls, type) and issubclass(cls, Cell)):
        got = f"a {type(cell).__name__} instance" if isinstance(cell, Cell) else repr(cell)
        raise TypeError(f"make_stack builds its cells from a name or a Cell class, got {got}; to stack cells "
                        "you built, pass Stack([Recurrent(cell), ...])")
    num_layers = _checks.positive_int("num_layers", num_layers)
    _checks.choice("merge", merge, MERGES)
    keys = jax.random.split(key, num_layers * 2)
    layers = []
    size = input_size
    for i in range(num_layers):
        if bidirectional:
            fwd = cls(size, hidden_size, key=keys[2 * i], **cell_kwargs)
            bwd = cls(size, hidden_size, key=keys[2 * i + 1], **cell_kwargs)
            layer = Bidirectional(
                Recurrent(fwd, scan, chunk_size=chunk_size), Recurrent(bwd, scan, chunk_size=chunk_size), merge=merge
            )
        else:
            layer = Recurrent(cls(size, hidden_size, key=keys[2 * i], **cell_kwargs), scan, chunk_size=chunk_size)
        layers.append(layer)
        size = layer.output_size
    return Stack(layers, dropout=dropout)


class Head(eqx.Module):
    r"""The output map g : H × X × Θ → Y applied at every step: y_t = W [h_t; x_t] + b.

    With ``input_size=0`` (default) the head reads only h_t (the first text's ŷ_t = W_yh h_t);
    with ``input_size > 0`` it also reads the step's input x_t (the second text's recall g(h_t, x_t)).
    ``activation`` (default ``"identity"``) is applied to the result. Call ``head(hs, xs=None)``
    with ``hs`` (T, in_features) → (T, out_features); ``head.last(hs, xs=None, mask=None)`` reads
    only the last valid step → (out_features,).
    """

    weight: jax.Array
    bias: jax.Array
    input_size: int = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __init__(self, in_features: int, out_features: int, *, input_size: int = 0, activation: str = "identity", key):
        in_features = _checks.positive_int("in_features", in_features)
        out_features = _checks.positive_int("out_features", out_features)
        if input_size < 0:
            raise ValueError(f"input_size must be >= 0, got {input_size}")
        get_activation(activation)
        fan_in = in_features + input_size
        k1, k2 = jax.random.split(key)
        self.weight = uniform_init(k1, (out_features, fan_in), 1.0 / fan_in**0.5)
        self.bias = uniform_init(k2, (out_features,), 1.0 / fan_in**0.5)
        self.input_size = int(input_size)
        self.activation = activation

    def _features(self, hs, xs):
        in_features = self.weight.shape[1] - self.input_size
        if hs.ndim != 2 or hs.shape[1] != in_features:
            raise ValueError(f"this head reads hs of shape (T, {in_features}), got shape {tuple(hs.shape)}")
        if self.input_size == 0:
            return hs
        if xs is None or xs.shape != (hs.shape[0], self.input_size):
            got = "none" if xs is None else f"shape {tuple(xs.shape)}"
            raise ValueError(
                f"this head reads the inputs too: pass xs of shape ({hs.shape[0]}, {self.input_size}), got {got}"
            )
        return jnp.concatenate([hs, xs], -1)

    def __call__(self, hs, xs=None):
        zs = rows_matmul(self._features(hs, xs), self.weight) + self.bias
        return get_activation(self.activation)(zs)

    def last(self, hs, xs=None, mask=None, *, backward_size: int = 0):
        """g applied at the last valid step only (sequence classification): shape (out_features,).

        ``backward_size``: the last ``backward_size`` features of ``hs`` are a backward direction's
        outputs ([→h_t; ←h_t] of a :class:`Bidirectional` layer), which have read the whole
        sequence at the *first* valid step, so they are read there (as torch's final states of a
        bidirectional RNN): g([→h_last; ←h_first], x_last).

        A sequence with no valid step at all (every step masked) reads the last step (and the first),
        whose outputs the scan zeroed: the result is g(0, x_T), the bias for a head that reads no
        input, not an error, so that a padded batch under ``jax.vmap`` or ``jax.jit`` may hold empty
        rows; leave them out of the loss."""
        length, width = hs.shape
        if not 0 <= backward_size <= width:
            raise ValueError(f"backward_size must be in [0, {width}] (the features of hs), got {backward_size}")
        index = last_valid_index(length, mask)
        h_last = hs[index]
        if backward_size:
            first = first_valid_index(length, mask)
            h_last = jnp.concatenate([h_last[: width - backward_size], hs[first, width - backward_size :]])
        xs_last = None if xs is None else xs[index][None]
        return self(h_last[None], xs_last)[0]


def last_valid_index(length: int, mask: jax.Array | None) -> jax.Array:
    """Index of the last step where ``mask`` is true (``length - 1`` without a mask, or when no
    step is)."""
    if mask is None:
        return jnp.asarray(length - 1)
    mask = _checks.step_flags("mask", mask, length)
    return length - 1 - jnp.argmax(jnp.flip(mask))


def first_valid_index(length: int, mask: jax.Array | None) -> jax.Array:
    """Index of the first step where ``mask`` is true (0 without a mask, or when no step is)."""
    if mask is None:
        return jnp.asarray(0)
    return jnp.argmax(_checks.step_flags("mask", mask, length))
