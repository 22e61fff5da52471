"""What the tests of the native loops share: whether a function runs them, and their values and
gradients against the plain scan's (recurrax.fused.disabled() around tracing)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import recurrax
import recurrax.fused


def runs_native(function, *args, loops: tuple[str, ...]) -> bool:
    """Whether ``function(*args)`` calls the forward loop of one of ``loops`` (names as in the
    custom calls' targets, ``recurrax_<name>_forward``)."""
    jaxpr = str(jax.make_jaxpr(function)(*args))
    return any(f"recurrax_{name}_forward" in jaxpr for name in loops)


def assert_close(got, want):
    """Every leaf of ``got`` equals ``want``'s to 2e-5, relative to the larger of 1 and its largest value."""
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
        scale = max(1.0, float(np.max(np.abs(b))))
        np.testing.assert_allclose(np.asarray(a) / scale, np.asarray(b) / scale, atol=2e-5)


def native_and_plain(function, *args):
    """``function(*args)`` compiled as it is, and with the plain scan (the fused path switched off)."""
    native = jax.jit(function)(*args)
    with recurrax.fused.disabled():
        plain = jax.jit(lambda *a: function(*a))(*args)
    return native, plain


def assert_native_equals_plain(loss, *args, loops: tuple[str, ...]):
    """``loss`` runs native loops, and its value and gradients equal the plain scan's."""
    assert runs_native(loss, *args, loops=loops)
    assert_close(*native_and_plain(jax.value_and_grad(loss, argnums=tuple(range(len(args)))), *args))


def per_example_gradients(cell, xs, loops: tuple[str, ...]):
    """Each sequence's gradient of its summed squared states with respect to ``cell`` (``jax.grad``
    inside ``jax.vmap``), which runs native loops and equals the plain scan's; returned."""

    def per_example(cell, xs):
        return jax.vmap(jax.grad(lambda c, x: jnp.sum(recurrax.scan(c, x)[0] ** 2)), in_axes=(None, 0))(cell, xs)

    assert runs_native(per_example, cell, xs, loops=loops)
    got, want = native_and_plain(per_example, cell, xs)
    assert_close(got, want)
    return got
