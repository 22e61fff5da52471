"""``recurrax._loops.scan_prefetched``, ``scan_into_buffers`` and ``scan_in_place`` against
``jax.lax.scan`` and a Python loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax._loops import scan_in_place, scan_into_buffers, scan_prefetched


def body(carry, inputs):
    x, flag, nothing = inputs
    assert nothing is None
    h, total = carry
    h = jnp.tanh(h * 0.9 + x) * jnp.where(flag, 0.5, 1.0)
    return (h, total + h.sum()), (h, x.sum())


@pytest.mark.parametrize(
    "variant", [scan_prefetched, scan_into_buffers, functools.partial(scan_prefetched, loop=scan_into_buffers)]
)
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


def in_place_body(carry, inputs):
    """Reads its slot (two leaves) and writes new values of the same shapes over it; part of the
    slot is read only by the next carry (as in a backward step), not by the values written."""
    (x, nothing), (a, b) = inputs
    assert nothing is None
    h = jnp.tanh(0.8 * carry + x) + b.sum()
    return h * a, (a * h.sum() - 1.0, b + h[:2])


def in_place_by_hand(init, xs, buffers, reverse):
    """The loop written out step by step over NumPy copies."""
    x = np.asarray(xs[0])
    a, b = (np.array(buf) for buf in buffers)
    carry = init
    for t in (reversed if reverse else iter)(range(len(x))):
        carry, (a_t, b_t) = in_place_body(carry, ((x[t], None), (a[t], b[t])))
        a[t], b[t] = a_t, b_t
    return carry, (a, b)


@pytest.mark.parametrize("length", [1, 2, 7])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("read_ahead", [True, False])
def test_in_place_writes_each_slot_after_reading_it(length, reverse, read_ahead):
    rng = np.random.default_rng(length)
    xs = (jnp.asarray(rng.normal(size=(length, 3)), jnp.float32), None)
    buffers = (jnp.asarray(rng.normal(size=(length, 3)), jnp.float32),
               jnp.asarray(rng.normal(size=(length, 2)), jnp.float32))
    init = jnp.zeros(3)
    want = in_place_by_hand(init, xs, buffers, reverse)
    for unroll in (1, 2):
        got = jax.jit(lambda i, x, b: scan_in_place(in_place_body, i, x, b, reverse=reverse, unroll=unroll,
                                                    read_ahead=read_ahead))(init, xs, buffers)
        jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), got, want)


def test_in_place_under_vmap():
    rng = np.random.default_rng(0)
    xs = (jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32), None)
    buffers = (jnp.asarray(rng.normal(size=(4, 5, 3)), jnp.float32),
               jnp.asarray(rng.normal(size=(4, 5, 2)), jnp.float32))
    init = jnp.zeros((4, 3))
    got = jax.jit(jax.vmap(lambda i, x, b: scan_in_place(in_place_body, i, x, b, reverse=True),
                           (0, (0, None), 0)))(init, xs, buffers)
    for k in range(4):
        want = in_place_by_hand(init[k], (xs[0][k], None), (buffers[0][k], buffers[1][k]), True)
        jax.tree_util.tree_map(lambda g, w: np.testing.assert_allclose(g[k], w, rtol=1e-5, atol=1e-5), got, want)


def test_in_place_updates_the_buffers_without_copying_them():
    """The compiled loop holds one copy of the buffers in its scratch memory, not two (reading a
    step's slot in that step made XLA copy the buffers to keep the read safe from the write)."""
    length, width = 64, 4096

    def run(a, b, x):
        out = scan_in_place(in_place_body, jnp.zeros(width), (x, None), (a * 2.0, b), reverse=True)[1]
        return out[0].sum() + out[1].sum()

    args = (jnp.ones((length, width)), jnp.ones((length, 2)), jnp.ones((length, width)))
    scratch = jax.jit(run).lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert scratch < 1.5 * length * width * 4


def test_a_forward_step_reads_its_slot_in_place():
    """``read_ahead=False`` for a step whose slot reaches the carry only through the values it
    writes (inputs turned into outputs over them, as in a forward step): the values of a Python
    loop, and (XLA's CPU compiler) one copy of the buffer in scratch memory, not two."""
    length, width = 64, 4096

    def forward_body(carry, inputs):
        _, (p,) = inputs
        y = jnp.tanh(p + 0.8 * carry)
        return 0.5 * y, (y,)

    def run(p):
        return scan_in_place(forward_body, jnp.zeros(width), (None,), (p * 2.0,), read_ahead=False)

    p = jnp.asarray(np.random.default_rng(0).normal(size=(length, width)), jnp.float32)
    carry, want = np.zeros(width, np.float32), np.array(p) * 2.0
    for t in range(length):
        want[t] = np.tanh(want[t] + 0.8 * carry)
        carry = 0.5 * want[t]
    got_carry, (got,) = jax.jit(run)(p)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_carry, carry, rtol=1e-5, atol=1e-6)
    if jax.default_backend() == "cpu":
        scratch = jax.jit(lambda p: run(p)[1][0].sum()).lower(p).compile().memory_analysis().temp_size_in_bytes
        assert scratch < 1.5 * length * width * 4
