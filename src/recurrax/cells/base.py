r"""The cell protocol: one step of the recurrence f : H × X × Θ → H.

A cell splits its step in two so that work not depending on the state runs once for the whole
sequence:

* ``project(x)``: the state-independent part of a step (input projections ``W x + b``). The scan
  maps it over all T steps at once with ``jax.vmap``, which XLA compiles into one matrix product.
* ``step(state, p)``: the state-dependent part; returns ``(new_state, y)``.

Calling a cell on one time step, ``state, y = cell(state, x)``, is ``step(state, project(x))``:
streaming inference runs the very same function as the scan.

An :class:`AssociativeCell` is a cell whose transition is an element of a monoid acting on the
state, e.g. the diagonal linear recurrence :math:`h_t = a_t \odot h_{t-1} + b_t` with elements
``(a, b)``. It exposes

* ``element(p)``: the transition of one step,
* ``combine(earlier, later)``: composition of two transitions (associative),
* ``apply(e, state)``: the state after applying transition ``e`` to ``state``,
* ``readout(state, p)``: the step's output from the new state,

so the same cell runs sequentially or with ``jax.lax.associative_scan`` in O(log T) depth.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .. import _checks

State = Any
Projection = Any
Element = Any


class Cell(eqx.Module):
    """Base class of recurrent cells. ``state, y = cell(state, x)`` runs one time step."""

    input_size: int = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    @property
    def output_size(self) -> int:
        """Size of the per-step output ``y`` (the hidden size unless a cell says otherwise)."""
        return self.hidden_size

    def init_state(self) -> State:
        """The initial state h_0 (zeros)."""
        return jnp.zeros((self.hidden_size,), self._dtype())

    @abc.abstractmethod
    def project(self, x: jax.Array) -> Projection:
        """State-independent part of a step, for one input ``x`` of shape (input_size,)."""

    @abc.abstractmethod
    def step(self, state: State, p: Projection) -> tuple[State, jax.Array]:
        """State-dependent part of a step: returns ``(new_state, y)``."""

    def __call__(self, state: State, x: jax.Array) -> tuple[State, jax.Array]:
        """One time step: ``f(h_{t-1}, x_t)`` and the step's output."""
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{type(self).__name__} takes a floating-point step x, got dtype {x.dtype}; cast it "
                            "(e.g. x.astype(jnp.float32)) or embed token ids first")
        if x.shape != (self.input_size,):
            raise ValueError(
                f"{type(self).__name__} takes one step x of shape ({self.input_size},), got shape {tuple(x.shape)}"
            )
        state = _checks.state_like("state", state, self.init_state())
        return self.step(state, self.project(x))

    def _dtype(self) -> jnp.dtype:
        leaves = [leaf for leaf in jax.tree_util.tree_leaves(self) if eqx.is_inexact_array(leaf)]
        return jnp.result_type(*leaves) if leaves else jnp.float32

    def _complex_dtype(self) -> jnp.dtype:
        """The dtype of a complex state: complex64, or complex128 for float64 weights (there is
        no half-precision complex type, so bfloat16 and float16 cells keep complex64 states)."""
        return jnp.result_type(self._dtype(), jnp.complex64)

    def _complex(self, re: jax.Array, im: jax.Array) -> jax.Array:
        """re + i·im in :meth:`_complex_dtype` (``lax.complex`` takes float32 or float64 parts only)."""
        real = jnp.finfo(self._complex_dtype()).dtype
        return jax.lax.complex(re.astype(real), im.astype(real))


class AssociativeCell(Cell):
    """A cell whose recurrence is the action of an associative combine (see module docstring)."""

    @abc.abstractmethod
    def element(self, p: Projection) -> Element:
        """The transition of one step."""

    @abc.abstractmethod
    def combine(self, earlier: Element, later: Element) -> Element:
        """Compose two transitions: applying the result equals applying ``earlier`` then ``later``."""

    @abc.abstractmethod
    def apply(self, e: Element, state: State) -> State:
        """Apply a transition to a state."""

    def readout(self, state: State, p: Projection) -> jax.Array:
        """The step's output from its new state (the state itself by default)."""
        del p
        return state

    def step(self, state: State, p: Projection) -> tuple[State, jax.Array]:
        new_state = self.apply(self.element(p), state)
        return new_state, self.readout(new_state, p)


def uniform_init(key: jax.Array, shape: tuple[int, ...], scale: float) -> jax.Array:
    """U(-scale, scale), the initialisation torch uses for its recurrent layers (scale = 1/√H).

    The dtype is JAX's default float: float32, or float64 under ``jax.enable_x64``.
    """
    return jax.random.uniform(key, shape, minval=-scale, maxval=scale)
