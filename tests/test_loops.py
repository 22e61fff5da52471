"""``recurrax._loops.scan_prefetched`` and ``scan_into_buffers`` against ``jax.lax.scan``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax._loops import scan_into_buffers, scan_prefetched


def body(carry, inputs):
    x, flag, nothing = inputs
    assert nothing is None
    h, total = carry
    h = jnp.tanh(h * 0.9 + x) * jnp.where(flag, 0.5, 1.0)
    return (h, total + h.sum()), (h, x.sum())


@pytest.mark.parametrize("variant", [scan_prefetched, scan_into_buffers])
@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("reverse", [False, True])
def test_same_carry_and_outputs_as_lax_scan(variant, length, reverse):
    rng = np.random.default_rng(length)
    xs = (jnp.asarray(rng.normal(size=(length, 3)), jnp.float32), jnp.asarray(rng.random(length) < 0.5), None)
    init = (jnp.zeros(3), jnp.float32(0))
    want = jax.lax.scan(body, init, xs, reverse=reverse)
    for unroll in (1, 2):
        got = jax.jit(lambda i, x: variant(body, i, x, reverse=reverse, unroll=unroll))(init, xs)
        jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6), got, want)


def test_buffers_under_vmap_equal_lax_scan():
    """Batched by vmap (the carried buffers then batched too), outputs still land at their steps."""
    rng = np.random.default_rng(0)
    xs = (jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32), jnp.asarray(rng.random((4, 5)) < 0.5), None)
    init = (jnp.zeros((4, 3)), jnp.zeros(4))
    in_axes = ((0, 0), (0, 0, None))
    want = jax.vmap(lambda i, x: jax.lax.scan(body, i, x, reverse=True), in_axes)(init, xs)
    got = jax.jit(jax.vmap(lambda i, x: scan_into_buffers(body, i, x, reverse=True), in_axes))(init, xs)
    jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6), got, want)
