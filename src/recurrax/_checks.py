"""Input validation shared by cells, scans and layers.

Every check runs in Python on static shapes and dtypes, so a bad argument raises a clear
``ValueError``/``TypeError`` at construction or trace time instead of an XLA shape error.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int, or raise if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a positive integer, got {value!r} ({type(value).__name__})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def token_ids(tokens: Any, vocab_size: int, what: str = "token ids") -> jax.Array:
    """``tokens`` as an array, or a clear error: integer ids, each in [0, vocab_size). The range is
    checked where the values are known (not inside ``jax.jit``), since an embedding lookup with an
    id out of range silently reads a clamped row."""
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{what} must be integers, got dtype {tokens.dtype}")
    if tokens.size and not isinstance(tokens, jax.core.Tracer):
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{what} must be in [0, {vocab_size}) for this vocabulary, got {bad}")
    return tokens


def seed(value: Any) -> int:
    """Return ``value`` as an int, or raise if it is not a non-negative integer (a random seed)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def names(kind: str, given: Sequence[str], valid: Sequence[str]) -> list[str]:
    """``given`` stripped of blanks, or a clear error: none given, an unknown name, or a name twice."""
    given = [n.strip() for n in given if n.strip()]
    if not given:
        raise ValueError(f"no {kind}s given; choose from: {', '.join(valid)}")
    unknown = [n for n in given if n not in valid]
    if unknown:
        raise ValueError(f"unknown {kind}{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"choose from: {', '.join(valid)}")
    if len(set(given)) != len(given):
        raise ValueError(f"a {kind} is listed twice: {', '.join(given)}")
    return given


def choice(name: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    """Return ``value`` if it is one of ``choices`` (a string), else raise naming the valid choices."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(map(str, choices))}")
    return str(value)


def sequence(xs: Any, input_size: int, what: str = "xs") -> jax.Array:
    """Check that ``xs`` is one floating-point sequence of shape (T, input_size)."""
    xs = jnp.asarray(xs) if not isinstance(xs, jax.Array) else xs
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(
            f"{what} must be a floating-point array of shape (T, {input_size}), got dtype {xs.dtype}; "
            "cast it (e.g. xs.astype(jnp.float32)) or embed token ids first"
        )
    if xs.ndim != 2:
        hint = " (a batch? map over it with jax.vmap)" if xs.ndim == 3 else ""
        raise ValueError(f"{what} must have shape (T, {input_size}), got shape {tuple(xs.shape)}{hint}")
    if xs.shape[1] != input_size:
        raise ValueError(
            f"{what} has {xs.shape[1]} features per step but the layer expects input_size={input_size} "
            f"(shape {tuple(xs.shape)})"
        )
    if xs.shape[0] == 0:
        raise ValueError(f"{what} is empty: a sequence needs at least one step, got shape {tuple(xs.shape)}")
    return xs


def inputs_fit_state(xs: jax.Array, state: Any, what: str = "xs") -> None:
    """Check that ``xs``'s dtype does not widen the state's (float64 inputs to a float32 cell, or
    float32 inputs to a bfloat16 one): the step's new state would then have another dtype than
    the state it started from, which no scan carries."""
    for leaf in jax.tree_util.tree_leaves(state):
        dtype = jnp.result_type(leaf)
        if jnp.result_type(xs.dtype, dtype) != dtype:
            raise TypeError(
                f"{what} has dtype {xs.dtype}, wider than the cell's {dtype} state and parameters; cast the "
                f"inputs (xs.astype(jnp.{dtype})) or the cell's parameters to one dtype"
            )


def step_flags(name: str, flags: Any, length: int) -> jax.Array | None:
    """Check a per-step boolean array (``starts`` or ``mask``) of shape (T,)."""
    if flags is None:
        return None
    flags = jnp.asarray(flags)
    if flags.dtype != jnp.bool_ and not jnp.issubdtype(flags.dtype, jnp.integer):
        raise TypeError(f"{name} must be a boolean array of shape ({length},), got dtype {flags.dtype}")
    if flags.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) (one flag per step), got shape {tuple(flags.shape)}")
    return flags.astype(jnp.bool_)


def state_like(name: str, value: Any, reference: Any) -> Any:
    """Check that a state pytree has the structure and leaf shapes of ``reference``; return it with
    each leaf in the dtype of ``reference``'s (a real state given to a complex-state cell becomes
    complex). Integer or boolean leaves are an error."""
    ref_def = jax.tree_util.tree_structure(reference)
    val_def = jax.tree_util.tree_structure(value)
    if ref_def != val_def:
        raise ValueError(f"{name} has structure {val_def}, expected {ref_def}")
    leaves = []
    for got, want in zip(jax.tree_util.tree_leaves(value), jax.tree_util.tree_leaves(reference)):
        if jnp.shape(got) != jnp.shape(want):
            raise ValueError(
                f"{name} has a leaf of shape {tuple(jnp.shape(got))}, expected {tuple(jnp.shape(want))} "
                "(a batch of states? map over it with jax.vmap)"
            )
        dtype = jnp.result_type(got)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(f"{name} has a leaf of dtype {dtype}; states are floating point ({jnp.result_type(want)})")
        if jnp.issubdtype(dtype, jnp.complexfloating) and not jnp.issubdtype(jnp.result_type(want), jnp.complexfloating):
            raise TypeError(f"{name} has a complex leaf ({dtype}) where the cell's state is real ({jnp.result_type(want)})")
        leaves.append(jnp.asarray(got, jnp.result_type(want)))
    return jax.tree_util.tree_unflatten(ref_def, leaves)