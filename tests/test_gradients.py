"""Gradients of every cell (through the scan, with resets and masks) against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
from finite_differences import check_gradient

X, H, T = 3, 4, 6


@pytest.mark.parametrize("reverse", [False, True])
def test_gradients_match_finite_differences(cell_name, reverse):
    with jax.enable_x64(True):
        cell = recurrax.get_cell_class(cell_name)(X, H, key=jax.random.key(0))
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(cell))
        xs = jax.random.normal(jax.random.key(1), (T, X))
        h0 = jax.tree_util.tree_map(lambda z: z + 0.3, cell.init_state())
        starts = np.array([0, 0, 0, 1, 0, 0], bool)
        mask = np.array([1, 1, 0, 1, 1, 1], bool)
        readout = jax.random.normal(jax.random.key(2), (T, cell.output_size))

        def loss(variables):
            cell_, xs_, h0_ = variables
            layer = recurrax.Recurrent(cell_, reverse=reverse)
            ys, final = layer(xs_, h0_, starts=starts, mask=mask, return_state=True)
            return jnp.sum(ys * readout) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(final))

        check_gradient(loss, (cell, xs, h0))


def test_associative_gradients_equal_sequential_gradients():
    with jax.enable_x64(True):
        cell = recurrax.LinearRecurrence(X, H, key=jax.random.key(0))
        xs = jax.random.normal(jax.random.key(1), (9, X))
        starts = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0], bool)
        mask = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0], bool)

        def loss(c, mode):
            ys, final = recurrax.scan(c, xs, starts=starts, mask=mask, mode=mode)
            return jnp.sum(jnp.cos(ys)) + jnp.sum(final**2)

        grad = jax.jit(jax.grad(loss), static_argnums=1)
        g_seq, g_assoc = grad(cell, "sequential"), grad(cell, "associative")
        for a, b in zip(jax.tree_util.tree_leaves(g_seq), jax.tree_util.tree_leaves(g_assoc)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        check_gradient(lambda c: loss(c, "associative"), cell)
