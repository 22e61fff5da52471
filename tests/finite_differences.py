"""Directional finite differences in float64: the gradient oracle the tests use."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def check_gradient(loss, tree, *, directions: int = 3, eps: float = 1e-6, rtol: float = 1e-6, seed: int = 0):
    """Assert that jax.grad(loss)(tree) · v equals a central difference along random directions v.

    ``tree`` is any pytree whose inexact-array leaves are the variables (float64 expected);
    other leaves stay fixed.
    """
    params, static = eqx.partition(tree, eqx.is_inexact_array)
    f = jax.jit(lambda p: loss(eqx.combine(p, static)))
    grad = jax.jit(jax.grad(f))(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(seed)
    for _ in range(directions):
        v = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(rng.normal(size=l.shape)) for l in leaves])
        plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, v)
        minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, v)
        numeric = (f(plus) - f(minus)) / (2 * eps)
        analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(v)))
        np.testing.assert_allclose(float(analytic), float(numeric), rtol=rtol, atol=1e-8)
