r"""Conversion between ``torch.nn`` recurrent modules and recurrax stacks.

* :func:`from_torch` turns a ``torch.nn.RNN``, ``torch.nn.LSTM`` or ``torch.nn.GRU`` into the
  equivalent :class:`~recurrax.Stack` (weights copied as float32).
* :func:`to_torch` turns a stack of Elman/LSTM/GRU layers back into the torch module.
* :func:`torch_style` wraps a stack as a function with torch's calling convention,
  ``output, h_n = fn(x, hx)``, so that code written against torch's layouts can swap modules.

torch is an optional dependency, imported only inside these functions
(``pip install 'recurrax[torch]'``).

Parameter correspondence (per layer ``l``, with suffix ``_reverse`` for the backward direction of a
bidirectional layer, whose weights go to :attr:`Bidirectional.backward`):

==================  =========================================================================
torch               recurrax cell
==================  =========================================================================
``weight_ih_l{l}``  ``weight_ih`` (G·H, X), same gate order (LSTM i,f,g,o; GRU r,z,n)
``weight_hh_l{l}``  ``weight_hh`` (G·H, H)
``bias_ih_l{l}``,   ``bias`` = b_ih + b_hh (RNN, LSTM). GRU: ``bias`` = b_ih + [b_hr; b_hz; 0] and
``bias_hh_l{l}``    ``bias_hn`` = b_hn, since torch's n-gate recurrent bias sits inside r ⊙ (·)
==================  =========================================================================

Only the sum of the two torch biases matters to the outputs, so :func:`to_torch` puts the merged
bias in ``bias_ih`` and zeros in ``bias_hh`` (for a GRU, ``bias_hh`` = [0; 0; ``bias_hn``]).
A gradient with respect to a merged ``bias`` is the gradient with respect to each of ``bias_ih``
and ``bias_hh`` in torch.

>>> import torch, jax, jax.numpy as jnp, numpy as np
>>> from recurrax.interop import from_torch, torch_style
>>> lstm = torch.nn.LSTM(3, 5, num_layers=2, bidirectional=True)
>>> fn = torch_style(from_torch(lstm))
>>> x = np.random.default_rng(0).normal(size=(7, 2, 3)).astype(np.float32)   # (T, B, F)
>>> out, (h_n, c_n) = fn(jnp.asarray(x))
>>> out.shape, h_n.shape
((7, 2, 10), (4, 2, 5))
>>> ref, _ = lstm(torch.from_numpy(x))
>>> bool(np.allclose(out, ref.detach().numpy(), atol=1e-5))
True
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .cells import GRU, LSTM, Cell, Elman
from .layers import Bidirectional, Recurrent, Stack

__all__ = ["TorchStyle", "from_torch", "to_torch", "torch_style"]

_GATES = {Elman: 1, LSTM: 4, GRU: 3}


def _import_torch():
    try:
        import torch
    except ImportError as err:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "recurrax.interop needs PyTorch, which is an optional dependency; "
            "install it with: pip install 'recurrax[torch]'"
        ) from err
    return torch


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# torch -> recurrax


def from_torch(module) -> Stack:
    """The :class:`~recurrax.Stack` equivalent to a ``torch.nn.RNN``, ``LSTM`` or ``GRU``.

    Every torch layer becomes a :class:`~recurrax.Recurrent` layer (or, for a bidirectional
    module, a :class:`~recurrax.Bidirectional` layer with ``merge="concat"``) using
    ``scan="sequential"``; ``RNN(nonlinearity=...)`` becomes ``Elman(activation=...)``. Weights
    are copied as float32; ``bias=False`` gives zero biases; the module's ``dropout`` becomes
    ``Stack(dropout=...)`` (active only when the stack is called with a ``key``). The stack maps
    one sequence (T, input_size); ``batch_first`` is a matter of calling convention, see
    :func:`torch_style`.

    Raises ``TypeError`` for other modules and ``ValueError`` for an LSTM with ``proj_size > 0``.

    >>> import torch, jax.numpy as jnp, numpy as np
    >>> from recurrax.interop import from_torch
    >>> gru = torch.nn.GRU(3, 4)
    >>> stack = from_torch(gru)
    >>> x = np.ones((6, 3), np.float32)                    # one unbatched sequence (T, F)
    >>> ys = stack(jnp.asarray(x))
    >>> bool(np.allclose(ys, gru(torch.from_numpy(x))[0].detach().numpy(), atol=1e-5))
    True
    """
    torch = _import_torch()
    nn = torch.nn
    # Exact type checks: a subclass may override forward() with other semantics.
    if type(module) is nn.LSTM:
        if getattr(module, "proj_size", 0):
            raise ValueError(
                f"torch.nn.LSTM with proj_size={module.proj_size} (projected hidden state) has no recurrax "
                "equivalent; only proj_size=0 can be converted"
            )
        cls, kwargs = LSTM, {}
    elif type(module) is nn.GRU:
        cls, kwargs = GRU, {}
    elif type(module) is nn.RNN:
        if module.nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unsupported RNN nonlinearity {module.nonlinearity!r}; expected 'tanh' or 'relu'")
        cls, kwargs = Elman, {"activation": module.nonlinearity}
    else:
        raise TypeError(
            f"from_torch converts torch.nn.RNN, torch.nn.LSTM and torch.nn.GRU modules, got {type(module).__name__}"
        )

    hidden = module.hidden_size
    directions = 2 if module.bidirectional else 1
    layers = []
    size = module.input_size
    for layer in range(module.num_layers):
        cells = []
        for suffix in ("", "_reverse")[:directions]:
            # Only the structure is needed (every array is replaced), so skip the random initialisation.
            cell = jax.eval_shape(lambda: cls(size, hidden, key=jax.random.key(0), **kwargs))
            cells.append(_load_cell(cell, module, f"l{layer}{suffix}", hidden))
        if directions == 2:
            layers.append(Bidirectional(cells[0], cells[1], merge="concat", scan="sequential"))
        else:
            layers.append(Recurrent(cells[0], "sequential"))
        size = hidden * directions
    return Stack(layers, dropout=float(module.dropout) if module.num_layers > 1 else 0.0)


def _load_cell(cell: Cell, module, name: str, hidden: int) -> Cell:
    w_ih = _numpy(getattr(module, f"weight_ih_{name}"))
    w_hh = _numpy(getattr(module, f"weight_hh_{name}"))
    gates = _GATES[type(cell)]
    if module.bias:
        b_ih = _numpy(getattr(module, f"bias_ih_{name}"))
        b_hh = _numpy(getattr(module, f"bias_hh_{name}"))
    else:
        b_ih = b_hh = np.zeros((gates * hidden,), np.float32)
    if isinstance(cell, GRU):
        bias = b_ih + np.concatenate([b_hh[: 2 * hidden], np.zeros((hidden,), np.float32)])
        cell = eqx.tree_at(lambda c: c.bias_hn, cell, jnp.asarray(b_hh[2 * hidden :]))
    else:
        bias = b_ih + b_hh
    return eqx.tree_at(
        lambda c: (c.weight_ih, c.weight_hh, c.bias),
        cell,
        (jnp.asarray(w_ih), jnp.asarray(w_hh), jnp.asarray(bias)),
    )


# --------------------------------------------------------------------------------------------
# recurrax -> torch


def _describe(stack: Stack) -> tuple[type[Cell], str | None, int, bool]:
    """(cell class, Elman activation, hidden size, bidirectional) of a torch-convertible stack."""
    if not isinstance(stack, Stack):
        raise ValueError(f"to_torch converts a recurrax.Stack, got {type(stack).__name__}")
    kinds = {type(layer) for layer in stack.layers}
    if kinds == {Recurrent}:
        bidirectional = False
        for i, layer in enumerate(stack.layers):
            if layer.reverse:
                raise ValueError(
                    f"layer {i} is a reversed Recurrent layer; torch modules run unidirectional layers forward only"
                )
        cells = [layer.cell for layer in stack.layers]
    elif kinds == {Bidirectional}:
        bidirectional = True
        for i, layer in enumerate(stack.layers):
            if layer.merge != "concat":
                raise ValueError(
                    f"layer {i} merges its directions with {layer.merge!r}; torch concatenates them (merge='concat')"
                )
        cells = [c for layer in stack.layers for c in (layer.forward.cell, layer.backward.cell)]
    else:
        raise ValueError(
            "to_torch needs all layers Recurrent or all layers Bidirectional (a torch module is uniformly "
            f"uni- or bidirectional), got {', '.join(type(layer).__name__ for layer in stack.layers)}"
        )
    classes = {type(c) for c in cells}
    if len(classes) != 1:
        raise ValueError(
            "to_torch needs one cell type throughout (a torch module has one), got "
            + ", ".join(sorted(c.__name__ for c in classes))
        )
    (cls,) = classes
    if cls not in _GATES:
        raise ValueError(f"{cls.__name__} has no torch.nn counterpart; to_torch converts Elman, LSTM and GRU stacks")
    activation = None
    if cls is Elman:
        activations = {c.activation for c in cells}
        if len(activations) != 1:
            raise ValueError(f"to_torch needs one Elman activation throughout, got {sorted(activations)}")
        (activation,) = activations
        if activation not in ("tanh", "relu"):
            raise ValueError(
                f"torch.nn.RNN supports the activations 'tanh' and 'relu', the stack's Elman cells use {activation!r}"
            )
    sizes = {c.hidden_size for c in cells}
    if len(sizes) != 1:
        raise ValueError(f"to_torch needs one hidden size throughout (a torch module has one), got {sorted(sizes)}")
    return cls, activation, sizes.pop(), bidirectional


def to_torch(stack: Stack, *, batch_first: bool = False):
    """The ``torch.nn.RNN``, ``LSTM`` or ``GRU`` module equivalent to ``stack``.

    The stack must have all layers :class:`~recurrax.Recurrent` (forward) or all layers
    :class:`~recurrax.Bidirectional` with ``merge="concat"``, of one cell type among ``Elman``
    (activation ``"tanh"`` or ``"relu"``), ``LSTM`` and ``GRU``, with one hidden size; anything
    else raises ``ValueError`` saying why. The merged bias goes to ``bias_ih`` and zeros to
    ``bias_hh`` (GRU: ``bias_hh`` = [0; 0; ``bias_hn``]); the stack's dropout becomes the module's.
    The module's dtype follows the weights' (float32 or float64); ``batch_first`` is the caller's choice.

    >>> import jax, torch, recurrax
    >>> from recurrax.interop import to_torch
    >>> stack = recurrax.make_stack("lstm", 3, 8, num_layers=2, key=jax.random.key(0))
    >>> module = to_torch(stack, batch_first=True)
    >>> module(torch.zeros(4, 10, 3))[0].shape
    torch.Size([4, 10, 8])
    """
    torch = _import_torch()
    cls, activation, hidden, bidirectional = _describe(stack)
    kwargs = dict(
        input_size=stack.input_size,
        hidden_size=hidden,
        num_layers=len(stack.layers),
        bias=True,
        batch_first=bool(batch_first),
        dropout=float(stack.dropout) if len(stack.layers) > 1 else 0.0,
        bidirectional=bidirectional,
    )
    if cls is Elman:
        module = torch.nn.RNN(nonlinearity=activation, **kwargs)
    elif cls is LSTM:
        module = torch.nn.LSTM(**kwargs)
    else:
        module = torch.nn.GRU(**kwargs)
    dtype = jnp.result_type(*[leaf for leaf in jax.tree_util.tree_leaves(stack) if eqx.is_inexact_array(leaf)])
    module = module.to(torch.float64 if dtype == jnp.float64 else torch.float32)

    state = {}
    for l, layer in enumerate(stack.layers):
        pairs = [("", layer.cell)] if not bidirectional else [("", layer.forward.cell), ("_reverse", layer.backward.cell)]
        for suffix, cell in pairs:
            name = f"l{l}{suffix}"
            state[f"weight_ih_{name}"] = np.asarray(cell.weight_ih)
            state[f"weight_hh_{name}"] = np.asarray(cell.weight_hh)
            state[f"bias_ih_{name}"] = np.asarray(cell.bias)
            b_hh = np.zeros_like(np.asarray(cell.bias))
            if cls is GRU:
                b_hh[2 * hidden :] = np.asarray(cell.bias_hn)
            state[f"bias_hh_{name}"] = b_hh
    with torch.no_grad():
        for name, param in module.named_parameters():
            param.copy_(torch.from_numpy(np.array(state[name], copy=True)).to(param.dtype))
    return module


# --------------------------------------------------------------------------------------------
# torch's calling convention


class TorchStyle(eqx.Module):
    """A :class:`~recurrax.Stack` called the way torch's recurrent modules are: see :func:`torch_style`."""

    stack: Stack
    batch_first: bool = eqx.field(static=True)

    @property
    def bidirectional(self) -> bool:
        return isinstance(self.stack.layers[0], Bidirectional)

    @property
    def is_lstm(self) -> bool:
        layer = self.stack.layers[0]
        cell = layer.forward.cell if isinstance(layer, Bidirectional) else layer.cell
        return isinstance(cell, LSTM)

    def _slots(self) -> list[tuple[int, str | None]]:
        """(layer, direction) of each row of torch's h_n, in torch's order (layer-major)."""
        if self.bidirectional:
            return [(l, d) for l in range(len(self.stack.layers)) for d in ("forward", "backward")]
        return [(l, None) for l in range(len(self.stack.layers))]

    def _cells(self) -> list[Cell]:
        cells = []
        for l, d in self._slots():
            layer = self.stack.layers[l]
            cells.append(layer.cell if d is None else getattr(layer, d).cell)
        return cells

    def _state_from_torch(self, hx, batch: int) -> tuple[Any, ...]:
        """torch's hx (rows (num_layers*num_directions, B, H)) → the stack's state, batch axis first."""
        cells = self._cells()
        parts = hx if self.is_lstm else (hx,)
        if self.is_lstm and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
            raise ValueError("an LSTM's initial state is the pair hx = (h_0, c_0)")
        rows = []
        for name, part in zip(("h_0", "c_0") if self.is_lstm else ("hx",), parts):
            part = jnp.asarray(part)
            hidden = cells[0].hidden_size
            want = (len(cells), batch, hidden)
            if part.shape != want:
                raise ValueError(
                    f"{name} must have shape (num_layers * num_directions, batch, hidden_size) = {want}, "
                    f"got {tuple(part.shape)}"
                )
            rows.append(part)
        per_slot = []
        for i in range(len(cells)):
            per_slot.append((rows[0][i], rows[1][i]) if self.is_lstm else rows[0][i])
        if self.bidirectional:
            return tuple((per_slot[2 * l], per_slot[2 * l + 1]) for l in range(len(self.stack.layers)))
        return tuple(per_slot)

    def _state_to_torch(self, finals: tuple[Any, ...]):
        """The stack's final state (batch axis first) → torch's h_n (or (h_n, c_n))."""
        slots = []
        for l, d in self._slots():
            s = finals[l]
            slots.append(s if d is None else s[0 if d == "forward" else 1])
        if self.is_lstm:
            return jnp.stack([s[0] for s in slots]), jnp.stack([s[1] for s in slots])
        return jnp.stack(slots)

    def __call__(self, x, hx=None, *, key: jax.Array | None = None):
        """``output, h_n = fn(x, hx)`` in torch's layouts (LSTM: ``output, (h_n, c_n)``).

        ``x`` is (T, B, F), or (B, T, F) when ``batch_first``, or unbatched (T, F). ``hx`` and
        ``h_n`` are (num_layers * num_directions, B, H) (unbatched: without the B axis), rows
        ordered layer by layer, forward before backward; an LSTM's ``hx`` is the pair (h_0, c_0).
        ``key`` enables the stack's dropout between layers (one key per sequence is split from it).
        """
        x = jnp.asarray(x)
        unbatched = x.ndim == 2
        if unbatched:
            x = x[None]
            if hx is not None:
                for h in jax.tree_util.tree_leaves(hx):
                    if jnp.ndim(h) != 2:
                        raise ValueError(
                            "with an unbatched input (T, F), hx must have shape (num_layers * num_directions, "
                            f"hidden_size), got {tuple(jnp.shape(h))}"
                        )
                hx = jax.tree_util.tree_map(lambda h: jnp.asarray(h)[:, None], hx)
        elif x.ndim != 3:
            layout = "(B, T, F)" if self.batch_first else "(T, B, F)"
            raise ValueError(f"x must have shape {layout} or (T, F), got shape {tuple(x.shape)}")
        elif not self.batch_first:
            x = jnp.swapaxes(x, 0, 1)
        batch = x.shape[0]
        state = None if hx is None else self._state_from_torch(hx, batch)
        keys = None if key is None else jax.random.split(key, batch)

        def one(xs, h0, k):
            return self.stack(xs, h0, return_state=True, key=k)

        ys, finals = jax.vmap(one, in_axes=(0, None if state is None else 0, None if keys is None else 0))(
            x, state, keys
        )
        h_n = self._state_to_torch(finals)
        if unbatched:
            return ys[0], jax.tree_util.tree_map(lambda h: h[:, 0], h_n)
        if not self.batch_first:
            ys = jnp.swapaxes(ys, 0, 1)
        return ys, h_n


def torch_style(stack: Stack, batch_first: bool = False) -> TorchStyle:
    """Wrap ``stack`` as a function with torch's calling convention: ``output, h_n = fn(x, hx=None)``.

    ``x``: (T, B, F), or (B, T, F) with ``batch_first=True``, or one unbatched sequence (T, F).
    ``hx`` and ``h_n``: (num_layers * num_directions, B, H), rows ordered as torch orders them
    (layer by layer, forward direction before backward); for an LSTM ``hx`` is ``(h_0, c_0)`` and
    the result is ``output, (h_n, c_n)``. ``hx=None`` starts from zeros. The batch is mapped with
    ``jax.vmap``. The stack must be torch-shaped (see :func:`to_torch`), except that any cell
    type with a single-array or (h, c) state of one hidden size works.

    The result is an Equinox module holding the stack: jit it with ``eqx.filter_jit`` (or
    ``jax.jit``) and differentiate with respect to its parameters with ``eqx.filter_grad``.

    >>> import jax, jax.numpy as jnp, recurrax
    >>> from recurrax.interop import torch_style
    >>> stack = recurrax.make_stack("gru", 3, 5, num_layers=2, bidirectional=True, key=jax.random.key(0))
    >>> gru = torch_style(stack, batch_first=True)
    >>> out, h_n = gru(jnp.ones((4, 7, 3)))                 # (B, T, F)
    >>> out.shape, h_n.shape
    ((4, 7, 10), (4, 4, 5))
    >>> out2, h_n2 = gru(jnp.ones((4, 7, 3)), h_n)           # continue from a state
    """
    if not isinstance(stack, Stack):
        raise TypeError(f"torch_style wraps a recurrax.Stack, got {type(stack).__name__}")
    kinds = {type(layer) for layer in stack.layers}
    if kinds not in ({Recurrent}, {Bidirectional}):
        raise ValueError(
            "torch_style needs all layers Recurrent or all layers Bidirectional (torch's h_n layout assumes one "
            f"number of directions), got {', '.join(type(layer).__name__ for layer in stack.layers)}"
        )
    if kinds == {Bidirectional} and any(layer.merge != "concat" for layer in stack.layers):
        raise ValueError("torch_style needs Bidirectional layers with merge='concat', as torch concatenates directions")
    if kinds == {Recurrent} and any(layer.reverse for layer in stack.layers):
        raise ValueError("torch_style needs forward (not reversed) Recurrent layers")
    style = TorchStyle(stack, bool(batch_first))
    cells = style._cells()
    if len({c.hidden_size for c in cells}) != 1:
        raise ValueError("torch_style needs one hidden size throughout (h_n stacks the layers' states)")
    if len({isinstance(c, LSTM) for c in cells}) != 1:
        raise ValueError("torch_style needs LSTM cells throughout or none (h_n or (h_n, c_n) for the whole stack)")
    return style
