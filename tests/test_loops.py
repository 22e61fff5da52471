"""``recurrax._loops.scan_prefetched`` against ``jax.lax.scan``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax._loops import scan_prefetched


def body(carry, inputs):
    x, flag, nothing = inputs
    assert nothing is None
    h, total = carry
    h = jnp.tanh(h * 0.9 + x) * jnp.where(flag, 0.5, 1.0)
    return (h, total + h.sum()), (h, x.sum())


@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("reverse", [False, True])
def test_same_carry_and_outputs_as_lax_scan(length, reverse):
    rng = np.random.default_rng(length)
    xs = (jnp.asarray(rng.normal(size=(length, 3)), jnp.float32), jnp.asarray(rng.random(length) < 0.5), None)
    init = (jnp.zeros(3), jnp.float32(0))
    want = jax.lax.scan(body, init, xs, reverse=reverse)
    for unroll in (1, 2):
        got = jax.jit(lambda i, x: scan_prefetched(body, i, x, reverse=reverse, unroll=unroll))(init, xs)
        jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6), got, want)
