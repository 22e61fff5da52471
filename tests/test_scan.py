"""The scan engine: resets, masks, reverse, initial/final state, streaming, sequential vs associative."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import recurrax
from reference import run

X, H = 3, 4


def make(name, key=0):
    return recurrax.get_cell_class(name)(X, H, key=jax.random.key(key))


def random_state(cell, key):
    leaves, treedef = jax.tree_util.tree_flatten(cell.init_state())
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def assert_tree_close(a, b, tol=1e-5):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def test_starts_masks_reverse_and_initial_state_match_numpy(cell_name):
    cell = make(cell_name)
    T = 9
    xs = jax.random.normal(jax.random.key(1), (T, X))
    starts = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0], bool)
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0], bool)
    h0 = random_state(cell, 5)
    h0_np = jax.tree_util.tree_map(np.asarray, h0)
    layer_fwd = recurrax.Recurrent(cell, "sequential")
    layer_bwd = recurrax.Recurrent(cell, "sequential", reverse=True)
    for layer, reverse in [(layer_fwd, False), (layer_bwd, True)]:
        ys, final = layer(xs, h0, starts=starts, mask=mask, return_state=True)
        ref_ys, ref_final = run(cell_name, cell, xs, h0_np, starts, mask, reverse)
        np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
        assert_tree_close(final, ref_final)


def test_packed_episodes_equal_separate_runs(cell_name):
    """Three episodes packed in one row with `starts` give what three separate runs give."""
    cell = make(cell_name)
    lengths = [4, 2, 5]
    xs = jax.random.normal(jax.random.key(2), (sum(lengths), X))
    starts = np.zeros(sum(lengths), bool)
    starts[np.cumsum([0] + lengths[:-1])] = True
    layer = recurrax.Recurrent(cell)  # auto: associative for the linear cell
    packed, final = layer(xs, starts=starts, return_state=True)
    pieces = np.split(np.asarray(xs), np.cumsum(lengths)[:-1])
    separate = [layer(jnp.asarray(p), return_state=True) for p in pieces]
    np.testing.assert_allclose(packed, np.concatenate([s[0] for s in separate]), rtol=1e-5, atol=1e-6)
    assert_tree_close(final, separate[-1][1])
    # reversed: each episode reversed on its own
    rlayer = recurrax.Recurrent(cell, reverse=True)
    rpacked = rlayer(xs, starts=starts)
    rseparate = np.concatenate([rlayer(jnp.asarray(p)) for p in pieces])
    np.testing.assert_allclose(rpacked, rseparate, rtol=1e-5, atol=1e-6)
    # each episode padded at its end (masked steps of garbage): the same, in both directions
    pad = 2
    padded = np.concatenate([np.concatenate([p, 50.0 * np.ones((pad, X))]) for p in pieces])
    starts = np.zeros(len(padded), bool)
    starts[np.cumsum([0] + [n + pad for n in lengths[:-1]])] = True
    mask = np.concatenate([np.arange(n + pad) < n for n in lengths])
    for lay, want in ((layer, np.concatenate([s[0] for s in separate])), (rlayer, rseparate)):
        ys = lay(jnp.asarray(padded), starts=starts, mask=mask)
        np.testing.assert_allclose(np.asarray(ys)[mask], want, rtol=1e-5, atol=1e-6)


def test_right_padding_gives_the_unpadded_result(cell_name):
    cell = make(cell_name)
    xs = jax.random.normal(jax.random.key(3), (5, X))
    padded = jnp.concatenate([xs, 100.0 * jnp.ones((3, X))])
    mask = np.arange(8) < 5
    for reverse in (False, True):
        layer = recurrax.Recurrent(cell, reverse=reverse)
        ys, final = layer(padded, mask=mask, return_state=True)
        want, want_final = layer(xs, return_state=True)
        np.testing.assert_allclose(ys[:5], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ys[5:], 0.0)
        assert_tree_close(final, want_final)


def test_streaming_one_step_at_a_time_equals_scan(cell_name):
    cell = make(cell_name)
    xs = jax.random.normal(jax.random.key(4), (7, X))
    layer = recurrax.Recurrent(cell)
    ys, final = layer(xs, return_state=True)
    state = layer.init_state()
    step = eqx.filter_jit(layer.step)
    outs = []
    for x in xs:
        state, y = step(state, x)
        outs.append(y)
    np.testing.assert_allclose(np.stack(outs), ys, rtol=1e-5, atol=1e-6)
    assert_tree_close(state, final)


def test_final_state_continues_the_sequence(cell_name):
    """Running two halves with the state carried equals running the whole."""
    cell = make(cell_name)
    xs = jax.random.normal(jax.random.key(6), (8, X))
    layer = recurrax.Recurrent(cell)
    whole = layer(xs)
    first, h = layer(xs[:3], return_state=True)
    second = layer(xs[3:], h)
    np.testing.assert_allclose(jnp.concatenate([first, second]), whole, rtol=1e-5, atol=1e-6)


# recurrax.scan compiled as one program per mode, shape and flags (run eagerly, the associative and
# chunked modes compile many small operations anew for each shape): a few lengths and chunk sizes,
# the flags and values free.
_compiled_scan = eqx.filter_jit(recurrax.scan)


@settings(max_examples=15, deadline=None)
@given(
    length=st.sampled_from([1, 7, 24]),
    seed=st.integers(0, 2**16),
    reverse=st.booleans(),
    use_starts=st.booleans(),
    use_mask=st.booleans(),
    chunk_size=st.sampled_from([1, 3, 8]),
)
def test_associative_and_chunked_equal_sequential(length, seed, reverse, use_starts, use_mask, chunk_size):
    rng = np.random.default_rng(seed)
    cell = recurrax.LinearRecurrence(X, H, key=jax.random.key(seed))
    xs = jnp.asarray(rng.normal(size=(length, X)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=H), jnp.float32)
    starts = rng.random(length) < 0.25 if use_starts else None
    mask = rng.random(length) < 0.7 if use_mask else None
    kwargs = dict(starts=starts, mask=mask, reverse=reverse)
    seq = _compiled_scan(cell, xs, h0, mode="sequential", **kwargs)
    assoc = _compiled_scan(cell, xs, h0, mode="associative", **kwargs)
    chunked = _compiled_scan(cell, xs, h0, mode="chunked", chunk_size=chunk_size, **kwargs)
    remat = _compiled_scan(cell, xs, h0, mode="sequential", chunk_size=chunk_size, **kwargs)
    assert_tree_close(seq, assoc, tol=2e-5)
    assert_tree_close(seq, chunked, tol=2e-5)
    assert_tree_close(seq, remat, tol=2e-5)
    ref_ys, ref_final = run("linear", cell, xs, np.asarray(h0), starts, mask, reverse)
    np.testing.assert_allclose(assoc[0], ref_ys, rtol=2e-5, atol=2e-5)


def test_batches_come_from_vmap(cell_name):
    cell = make(cell_name)
    layer = recurrax.Recurrent(cell)
    batch = jax.random.normal(jax.random.key(7), (3, 5, X))
    mask = np.array([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0]], bool)
    ys = jax.vmap(lambda x, m: layer(x, mask=m))(batch, mask)
    for b in range(3):
        np.testing.assert_allclose(ys[b], layer(batch[b], mask=mask[b]), rtol=1e-5, atol=1e-6)


def test_associative_scan_of_cell_without_combine_is_an_error():
    with pytest.raises(ValueError, match="no associative"):
        recurrax.Recurrent(make("gru"), scan="associative")
    with pytest.raises(ValueError, match="no associative"):
        recurrax.scan(make("lstm"), jnp.ones((3, X)), mode="associative")
    assert recurrax.Recurrent(make("linear"), scan="associative").scan == "associative"
    auto = "sequential" if jax.default_backend() == "cpu" else "associative"
    assert recurrax.Recurrent(make("linear")).scan == auto
    assert recurrax.Recurrent(make("gru")).scan == "sequential"


def test_rematerialised_sequential_scan_has_the_same_values_and_gradients(cell_name):
    cell = make(cell_name)
    xs = jax.random.normal(jax.random.key(8), (11, X))
    starts = np.array([0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0], bool)

    def loss(c, chunk_size):
        ys, final = recurrax.scan(c, xs, starts=starts, chunk_size=chunk_size)
        return jnp.sum(jnp.sin(ys)) + sum(jnp.sum(f) for f in jax.tree_util.tree_leaves(final))

    plain, g_plain = eqx.filter_value_and_grad(loss)(cell, None)
    remat, g_remat = eqx.filter_value_and_grad(loss)(cell, 4)
    np.testing.assert_allclose(plain, remat, rtol=1e-5)
    assert_tree_close(g_plain, g_remat, tol=1e-5)
