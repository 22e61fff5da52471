"""Named activations that cells accept (``activation="tanh"`` etc.)."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from .. import _checks

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "relu": jax.nn.relu,
    "identity": lambda z: z,
}


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Return the activation called ``name``; unknown names raise listing the valid ones."""
    return ACTIVATIONS[_checks.choice("activation", name, tuple(ACTIVATIONS))]
