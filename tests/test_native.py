"""The LSTM's native loops (recurrax.native) against the equations and against XLA's loops.

The kernels are checked against the LSTM's equations written out in NumPy (forward) and against
JAX's autodiff of the same equations (backward), with masked steps, 1 and 2 threads and column
counts that need the narrow product block; the layer's values and gradients on the native path
against the plain scan, batched, masked, reversed, bidirectional, in chunks, per example and
nested; and the cases the native loops leave to XLA. They run where the native code can be built (Linux, x86-64 with
AVX-512 or AVX2, and a C++ compiler); elsewhere recurrax.native.build_error() says why they are skipped.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
import recurrax.fused
import recurrax.native as native
from native_checks import assert_native_equals_plain, per_example_gradients
from native_checks import runs_native as _runs_native

LOOPS = ("lstm",)  # the forward loops these tests look for


def runs_native(function, *args) -> bool:
    return _runs_native(function, *args, loops=LOOPS)

needs_native = pytest.mark.skipif(not native.available(), reason=f"native loops not built: {native.build_error()}")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_reference(p, mask, starts, h_reset, c_reset, bias, w_hh, h0, c0):
    """The LSTM's loop in float64 NumPy, a masked step keeping the state, a step whose start is set
    reading (h_reset, c_reset) for the state before it: gates (B, T, 4H), hs, cs (B, T, H)."""
    hidden = w_hh.shape[1]
    h, c = h0.astype(np.float64), c0.astype(np.float64)
    gates, hs, cs = [], [], []
    for t in range(p.shape[1]):
        start = starts[:, t:t + 1] > 0
        h_before, c_before = np.where(start, h_reset, h), np.where(start, c_reset, c)
        z = p[:, t] + bias + h_before @ w_hh.T
        i, f = sigmoid(z[:, :hidden]), sigmoid(z[:, hidden:2 * hidden])
        g, o = np.tanh(z[:, 2 * hidden:3 * hidden]), sigmoid(z[:, 3 * hidden:])
        valid = mask[:, t:t + 1] > 0
        c = np.where(valid, f * c_before + i * g, c)
        h = np.where(valid, o * np.tanh(c), h)
        gates.append(np.concatenate([i, f, g, o], axis=1))
        hs.append(h)
        cs.append(c)
    return np.stack(gates, 1), np.stack(hs, 1), np.stack(cs, 1)


def random_inputs(batch, length, hidden, inputs=5, seed=0):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(batch, length, inputs)).astype(np.float32)
    w_ih = (rng.normal(size=(4 * hidden, inputs)) / np.sqrt(inputs)).astype(np.float32)
    bias = rng.normal(size=(4 * hidden,)).astype(np.float32)
    w_hh = (rng.normal(size=(4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    h0, c0 = (rng.normal(size=(batch, hidden)).astype(np.float32) for _ in range(2))
    return xs, w_ih, bias, w_hh, h0, c0


@needs_native
@pytest.mark.parametrize("batch,hidden", [(3, 16), (19, 48)])  # one thread; two threads, a 16-column block
def test_kernels_follow_the_equations(batch, hidden):
    length = 6
    xs, w_ih, bias, w_hh, h0, c0 = random_inputs(batch, length, hidden)
    flags = np.random.default_rng(4).random((2, batch, length))
    mask = (flags[0] > 0.3).astype(np.float32)
    starts = (flags[1] < 0.3).astype(np.float32)  # on masked steps too, which ignore them
    h_reset, c_reset = (np.random.default_rng(5).normal(size=(batch, hidden)).astype(np.float32) for _ in range(2))
    resets = (starts, h_reset, c_reset)
    w_t = np.concatenate([w_ih, w_hh], axis=1).T.copy()
    gates, hs, cs = jax.jit(native.lstm_forward)(xs, mask, *resets, w_t, bias, h0, c0)
    p = xs.astype(np.float64) @ w_ih.T
    want = lstm_reference(p, mask, *resets, bias, w_hh, h0, c0)
    valid = mask[:, :, None] > 0  # a masked step's gates are not used
    np.testing.assert_allclose(np.where(valid, gates, 0), np.where(valid, want[0], 0), atol=2e-6)
    for got, expected in zip((hs, cs), want[1:]):
        np.testing.assert_allclose(got, expected, atol=2e-6)
    hs_only, c_last = jax.jit(native.lstm_inference)(xs, mask, *resets, w_t, bias, h0, c0)
    np.testing.assert_allclose(hs_only, want[1], atol=2e-6)
    np.testing.assert_allclose(c_last, want[2][:, -1], atol=2e-6)
    # The input products computed before the loop (as for a batch that runs on one thread).
    projections, w_hh_t = (xs @ w_ih.T).astype(np.float32), w_hh.T.copy()
    forward = jax.jit(native.lstm_forward, static_argnames="projected")
    _, hs_projected, cs_projected = forward(projections, mask, *resets, w_hh_t, bias, h0, c0, projected=True)
    np.testing.assert_allclose(hs_projected, want[1], atol=2e-6)
    np.testing.assert_allclose(cs_projected, want[2], atol=2e-6)
    inference = jax.jit(native.lstm_inference, static_argnames="projected")
    np.testing.assert_allclose(inference(projections, mask, *resets, w_hh_t, bias, h0, c0, projected=True)[0],
                               want[1], atol=2e-6)

    rng = np.random.default_rng(1)
    dys = rng.normal(size=(batch, length, hidden)).astype(np.float32)
    dh_last, dc_last = (rng.normal(size=(batch, hidden)).astype(np.float32) for _ in range(2))

    def loss(p, h0, c0, h_reset, c_reset):  # the same equations in jnp, differentiated by JAX
        def step(carry, inputs):
            h, c = carry
            pt, valid, start = inputs
            h_before = jnp.where(start[:, None] > 0, h_reset, h)
            c_before = jnp.where(start[:, None] > 0, c_reset, c)
            z = pt + bias + h_before @ w_hh.T
            i, f = jax.nn.sigmoid(z[:, :hidden]), jax.nn.sigmoid(z[:, hidden:2 * hidden])
            g, o = jnp.tanh(z[:, 2 * hidden:3 * hidden]), jax.nn.sigmoid(z[:, 3 * hidden:])
            c = jnp.where(valid[:, None] > 0, f * c_before + i * g, c)
            h = jnp.where(valid[:, None] > 0, o * jnp.tanh(c), h)
            return (h, c), h

        (h, c), ys = jax.lax.scan(step, (h0, c0), (jnp.swapaxes(p, 0, 1), mask.T, starts.T))
        return jnp.sum(jnp.swapaxes(ys, 0, 1) * dys) + jnp.sum(h * dh_last) + jnp.sum(c * dc_last)

    dp, dh0, dc0, dh_reset, dc_reset = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(p.astype(np.float32), h0, c0, h_reset,
                                                                              c_reset)
    got = jax.jit(native.lstm_backward)(gates, cs, dys, mask, starts, c_reset, dh_last, dc_last, c0, w_hh)
    want_grads = (dp, dh0, dc0, jnp.sum(dp, axis=1), dh_reset, dc_reset)
    assert len(got) == len(want_grads)
    for g, expected in zip(got, want_grads):
        np.testing.assert_allclose(g, expected, atol=5e-6)


def layer_and_inputs(hidden=16, batch=17, length=6, inputs=5):
    cell = recurrax.LSTM(inputs, hidden, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (batch, length, inputs))
    return cell, xs


@needs_native
@pytest.mark.parametrize("reverse", [False, True])
def test_the_layer_on_native_loops_equals_the_plain_scan(reverse):
    cell, xs = layer_and_inputs()
    h0 = (0.3 * jnp.ones(16), -0.2 * jnp.ones(16))
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, xs.shape[:2]).at[:, -1].set(False)
    starts = jax.random.bernoulli(jax.random.key(4), 0.25, xs.shape[:2])

    def loss(cell, xs):
        ys, (h, c) = jax.vmap(lambda x: recurrax.scan(cell, x, h0, reverse=reverse))(xs)
        masked, (hm, cm) = jax.vmap(lambda x, m: recurrax.scan(cell, x, h0, mask=m, reverse=reverse))(xs, mask)
        h_reset = (jnp.tanh(cell.bias[:16]), jnp.sin(cell.bias[16:32]))  # their gradients reach the bias
        packed, (hp, cp) = jax.vmap(lambda x, s, m: recurrax.scan(cell, x, h0, starts=s, mask=m, reverse=reverse,
                                                                   reset_state=h_reset))(xs, starts, mask)
        return (jnp.sum(jnp.sin(ys)) + jnp.sum(h * c) + jnp.sum(jnp.cos(masked)) + jnp.sum(hm * cm)
                + jnp.sum(jnp.cos(packed)) + jnp.sum(hp * cp))

    assert_native_equals_plain(loss, cell, xs, loops=LOOPS)


@needs_native
def test_bidirectional_chunks_one_sequence_and_nested_vmap_equal_the_plain_scan():
    cell, xs = layer_and_inputs(length=9)
    bidirectional = recurrax.Bidirectional(recurrax.Recurrent(cell), recurrax.Recurrent(cell))

    def loss(cell, xs):
        bi = jnp.sum(jnp.cos(jax.vmap(bidirectional)(xs)))
        chunked = jnp.sum(jax.vmap(lambda x: recurrax.scan(cell, x, chunk_size=4)[0])(xs) ** 2)
        single = jnp.sum(recurrax.scan(cell, xs[0])[0])
        nested = jnp.sum(jax.vmap(jax.vmap(lambda x: recurrax.scan(cell, x)[0]))(xs.reshape(1, *xs.shape)))
        return bi + chunked + single + nested

    assert_native_equals_plain(loss, cell, xs, loops=LOOPS)


@needs_native
def test_a_call_not_differentiated_runs_the_inference_loop_alone():
    cell, xs = layer_and_inputs()
    layer = lambda c, x: jax.vmap(lambda s: recurrax.scan(c, s)[0])(x)  # noqa: E731
    inference = jax.jit(layer).lower(cell, xs).compile().as_text()
    training = jax.jit(jax.grad(lambda c, x: jnp.sum(layer(c, x)))).lower(cell, xs).compile().as_text()
    assert "recurrax_lstm_inference" in inference and "recurrax_lstm_forward" not in inference
    assert "recurrax_lstm_forward" in training and "recurrax_lstm_inference" not in training


@needs_native
def test_native_loops_run_one_piece_of_time_unless_the_user_sets_more():
    cell, xs = layer_and_inputs(batch=32, length=7)
    layer = lambda c, x: jax.vmap(lambda s: recurrax.scan(c, s)[0])(x)  # noqa: E731
    calls = lambda: str(jax.make_jaxpr(layer)(cell, xs)).count("recurrax_lstm_forward")  # noqa: E731
    assert calls() == 1
    with recurrax.fused.pieces(3):
        assert calls() == 3
        assert_native_equals_plain(lambda c, x: jnp.sum(jnp.sin(layer(c, x))), cell, xs, loops=LOOPS)
    with recurrax.fused.pieces(20):  # at most one a step
        assert calls() == 7


@needs_native
def test_per_example_gradients_on_native_loops():
    cell, xs = layer_and_inputs(batch=4)
    assert per_example_gradients(cell, xs, LOOPS).weight_hh.shape == (4, 64, 16)


@needs_native
def test_what_the_native_loops_leave_to_xla():
    cell, xs = layer_and_inputs()
    flags = jnp.zeros(xs.shape[:2], bool).at[:, 3].set(True)
    layer = lambda c, x: jax.vmap(lambda x: recurrax.scan(c, x)[0])(x)  # noqa: E731
    assert runs_native(layer, cell, xs)
    with recurrax.native.disabled():
        assert not runs_native(layer, cell, xs)
    assert runs_native(lambda c, x, s: jax.vmap(lambda x, s: recurrax.scan(c, x, starts=s)[0])(x, s), cell, xs, flags)
    narrow = recurrax.LSTM(5, 12, key=jax.random.key(0))  # hidden size not a multiple of 16
    assert not runs_native(layer, narrow, xs)
    class MyLSTM(recurrax.LSTM):  # a subclass may change step
        pass

    assert not runs_native(layer, MyLSTM(5, 16, key=jax.random.key(0)), xs)
    ensemble = jax.vmap(lambda k: recurrax.LSTM(5, 16, key=k))(jax.random.split(jax.random.key(2), 2))
    members = lambda c, x: jax.vmap(layer, in_axes=(0, None))(c, x)  # noqa: E731
    assert not runs_native(members, ensemble, xs)


@needs_native
def test_an_ensemble_in_rematerialised_chunks_equals_the_plain_scan():
    """Inside a chunk's loop the weights' batching cannot be seen while tracing, so an ensemble
    reaches the native loops there; it runs one call per sequence."""
    cells = jax.vmap(lambda k: recurrax.LSTM(5, 16, key=k))(jax.random.split(jax.random.key(2), 2))
    xs = jax.random.normal(jax.random.key(1), (2, 3, 8, 5))  # member, batch, time, input

    def loss(cells, xs):
        member = lambda c, x: jax.vmap(lambda s: recurrax.scan(c, s, chunk_size=4)[0])(x)  # noqa: E731
        return jnp.sum(jnp.sin(jax.vmap(member)(cells, xs)))

    assert_native_equals_plain(loss, cells, xs, loops=LOOPS)


@needs_native
def test_native_loops_have_first_order_derivatives_only():
    cell, xs = layer_and_inputs(batch=2)
    loss = lambda c, x: jnp.sum(jax.vmap(lambda x: recurrax.scan(c, x)[0])(x) ** 2)  # noqa: E731
    with pytest.raises(NotImplementedError, match="first-order"):
        jax.grad(lambda x: jnp.sum(jax.grad(loss, argnums=1)(cell, x)))(xs)


def test_why_the_native_loops_are_not_built(monkeypatch):
    monkeypatch.setenv("RECURRAX_NATIVE", "0")
    assert native._why_not_buildable() == "RECURRAX_NATIVE=0 is set"
    monkeypatch.setenv("RECURRAX_NATIVE", "1")
    if native.platform.system() == "Linux" and native.platform.machine() in ("x86_64", "AMD64"):
        monkeypatch.setattr(native, "_cpu_flags", lambda: {"sse2", "avx2"})  # no FMA
        assert "neither AVX-512 nor AVX2 with FMA" in native._why_not_buildable()
        monkeypatch.setattr(native, "_compiler", lambda: "/usr/bin/c++")
        monkeypatch.setattr(native, "_cpu_flags", lambda: {"sse2", "avx2", "fma"})
        assert native._why_not_buildable() is None


@needs_native
def test_a_build_that_fails_names_the_compiler_error(monkeypatch, tmp_path):
    (tmp_path / "lstm.cc").write_text("this is not C++\n")
    (tmp_path / "loops.h").write_text("")
    monkeypatch.setattr(native, "SOURCE_DIR", tmp_path)
    monkeypatch.setenv("RECURRAX_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="compiling lstm.cc failed"):
        native._build("lstm")
    assert not any((tmp_path / "cache").iterdir())  # nothing half-written left behind
