"""Pytree helpers shared by the scan engine and its fused path."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def tree_where(cond: Any, a: Any, b: Any) -> Any:
    """``jnp.where`` over two pytrees of the same structure, ``cond`` broadcast against each leaf
    along its leading axes (a per-step flag against (T, ...) leaves, a scalar against anything)."""

    def pick(x, y):
        c = jnp.reshape(cond, jnp.shape(cond) + (1,) * (max(jnp.ndim(x), jnp.ndim(y)) - jnp.ndim(cond)))
        return jnp.where(c, x, y)

    return jax.tree_util.tree_map(pick, a, b)
