"""The native loops of GRU, Elman, ForgetElman, MGU and LinearRecurrence against their equations
and against the plain scan (the LSTM's: test_native.py).

The kernels are checked against the cells' equations written out in NumPy in float64 (forward)
and against JAX's autodiff of the same equations (backward), with masked steps, 1 and 2 threads
and column counts that need the narrow product block; the layers' values and gradients on the
native path against the plain scan (batched, masked, reversed, bidirectional, in chunks, per
example); and the cases left to XLA. They run where the native code can be built (Linux, x86-64
with AVX-512 or AVX2, and a C++ compiler); elsewhere recurrax.native.build_error(loops) says why they are
skipped.
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


def needs(loops):
    return pytest.mark.skipif(not native.available(loops),
                              reason=f"native {loops} loops not built: {native.build_error(loops)}")


def activation(xp, name, z):
    if name == "tanh":
        return xp.tanh(z)
    if name == "sigmoid":
        return 1.0 / (1.0 + xp.exp(-z))
    if name == "relu":
        return xp.maximum(z, 0.0)
    return z


def run(xp, kind, act, p, mask, bias, weights, h0, starts=None, h_reset=None):
    """The cell's loop over a batch, in NumPy (float64) or jnp (to be differentiated): ``p`` the
    input products without bias (B, T, G), a masked step keeping the state, a step with its start
    set (``starts`` (B, T)) reading ``h_reset`` (B, H) for the state before it. Returns the states
    (B, T, H) and what the kernel's training forward returns beside them (gates, candidates)."""
    hidden = h0.shape[1]
    sigmoid = lambda z: activation(xp, "sigmoid", z)  # noqa: E731
    h, hs, gates, candidates = h0, [], [], []
    for t in range(p.shape[1]):
        z = p[:, t] + bias
        before = h if starts is None else xp.where(starts[:, t:t + 1] > 0, h_reset, h)
        if kind == "elman":
            (w_hh,) = weights
            new = activation(xp, act, z + before @ w_hh.T)
        else:
            w_fh, w_hh = weights
            f = sigmoid(z[:, :hidden] + before @ w_fh.T)
            n = activation(xp, "tanh" if kind == "mgu" else act, z[:, hidden:] + (f * before) @ w_hh.T)
            new = (1.0 - f) * before + f * n if kind == "mgu" else n
            gates.append(f)
            candidates.append(n)
        h = xp.where(mask[:, t:t + 1] > 0, new, h)
        hs.append(h)
    stack = lambda a: xp.stack(a, 1)  # noqa: E731
    extra = () if kind == "elman" else ((stack(gates),) if kind == "forget_elman" else (stack(gates), stack(candidates)))
    return stack(hs), extra


CASES = [  # kind, activation, batch, hidden: one thread and a 16-column block, or two threads
    ("elman", "tanh", 3, 16), ("elman", "relu", 19, 48), ("forget_elman", "sigmoid", 3, 16),
    ("forget_elman", "identity", 19, 48), ("mgu", "tanh", 19, 48),
]


@pytest.mark.parametrize("kind,act,batch,hidden", CASES)
def test_kernels_follow_the_equations(kind, act, batch, hidden):
    loops = "elman" if kind == "elman" else "forget_gate"
    if not native.available(loops):
        pytest.skip(f"native {loops} loops not built: {native.build_error(loops)}")
    length, inputs = 6, 5
    blocks = 1 if kind == "elman" else 2
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    xs, h0 = normal(batch, length, inputs), normal(batch, hidden)
    w_ih, bias = normal(blocks * hidden, inputs) / np.sqrt(inputs), normal(blocks * hidden)
    weights = tuple(normal(hidden, hidden) / np.sqrt(hidden) for _ in range(blocks))
    mask = (rng.random((batch, length)) > 0.3).astype(np.float32)
    p = xs.astype(np.float64) @ w_ih.T
    # Episode starts, on masked steps too (which ignore them).
    starts, h_reset = (rng.random((batch, length)) < 0.3).astype(np.float32), normal(batch, hidden)
    want, want_extra = run(np, kind, act, p, mask, bias, weights, h0, starts, h_reset)
    valid = mask[:, :, None] > 0  # a masked step's gates are not used

    if kind == "elman":
        w_t = np.concatenate([w_ih, weights[0]], axis=1).T.copy()
        forward = jax.jit(native.elman_forward, static_argnames=("activation", "projected"))
        got = forward(xs, mask, starts, h_reset, w_t, bias, h0, activation=act)
        got, got_extra, inference = (got,), (), None
        # The input products computed before the loop (as for a batch that runs on one thread).
        projected = forward(p.astype(np.float32), mask, starts, h_reset, weights[0].T.copy(), bias, h0,
                            activation=act, projected=True)
        np.testing.assert_allclose(projected, want, atol=2e-6)
    else:
        wf_t = np.concatenate([w_ih[:hidden], weights[0]], axis=1).T.copy()
        wh_t = np.concatenate([w_ih[hidden:], weights[1]], axis=1).T.copy()
        forward = jax.jit(native.forget_gate_forward, static_argnums=0,
                          static_argnames=("activation", "inference", "projected"))
        got = forward(kind, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, activation=act)
        got_extra = got[1:]
        (inference,) = forward(kind, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, activation=act, inference=True)
        np.testing.assert_allclose(inference, want, atol=2e-6)
        # The input products computed before the loop (as for a batch that runs on one thread).
        projected_inputs = (p.astype(np.float32), mask, starts, h_reset, weights[0].T.copy(), weights[1].T.copy(),
                            bias, h0)
        projected = forward(kind, *projected_inputs, activation=act, projected=True)
        (projected_inference,) = forward(kind, *projected_inputs, activation=act, inference=True, projected=True)
        for a in (projected[0], projected_inference):
            np.testing.assert_allclose(a, want, atol=2e-6)
        for a, b in zip(projected[1:], want_extra, strict=True):
            np.testing.assert_allclose(np.where(valid, a, 0), np.where(valid, b, 0), atol=2e-6)
    np.testing.assert_allclose(got[0], want, atol=2e-6)
    assert len(got_extra) == len(want_extra)
    for a, b in zip(got_extra, want_extra):
        np.testing.assert_allclose(np.where(valid, a, 0), np.where(valid, b, 0), atol=2e-6)

    dys, dh_last = normal(batch, length, hidden), normal(batch, hidden)

    def loss(p, bias, h0, h_reset):  # the same equations in jnp, differentiated by JAX
        hs, _ = run(jnp, kind, act, p, mask, bias, weights, h0, starts, h_reset)
        return jnp.sum(hs * dys) + jnp.sum(hs[:, -1] * dh_last)

    dp, dh0, d_reset = jax.grad(loss, argnums=(0, 2, 3))(p.astype(np.float32), jnp.asarray(bias), h0, h_reset)
    if kind == "elman":
        dz, got_dh0, db, got_d_reset = jax.jit(native.elman_backward, static_argnames="activation")(
            got[0], dys, mask, starts, dh_last, weights[0], activation=act)
    else:
        dzf, dzh, got_dh0, db, got_d_reset = jax.jit(native.forget_gate_backward, static_argnums=0,
                                                     static_argnames="activation")(
            kind, tuple(got), dys, mask, starts, h_reset, dh_last, h0, *weights, activation=act)
        dz = jnp.concatenate([dzf, dzh], axis=-1)
    for a, b in ((dz, dp), (got_dh0, dh0), (db, jnp.sum(dp, axis=1)), (got_d_reset, d_reset)):
        np.testing.assert_allclose(a, b, atol=5e-6)


@needs("elman")
def test_calls_running_at_once_each_get_their_own_answer():
    """Calls from several threads at once (as XLA runs independent operations side by side): one
    takes the kept helper threads, the others start their own; each answer follows the equations."""
    import concurrent.futures

    batch, length, inputs, hidden = 19, 40, 5, 16
    rng = np.random.default_rng(1)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    w_ih, w_hh, bias = normal(hidden, inputs) / 3, normal(hidden, hidden) / 4, normal(hidden)
    mask = (rng.random((batch, length)) > 0.2).astype(np.float32)
    w_t = np.concatenate([w_ih, w_hh], axis=1).T.copy()
    forward = jax.jit(native.elman_forward)
    starts = np.zeros((batch, length), np.float32)
    cases = [(normal(batch, length, inputs), normal(batch, hidden)) for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        answers = list(pool.map(lambda case: np.asarray(forward(case[0], mask, starts, case[1], w_t, bias, case[1])),
                                cases * 4))
    for (xs, h0), got in zip(cases * 4, answers):
        want, _ = run(np, "elman", "tanh", xs.astype(np.float64) @ w_ih.T, mask, bias, (w_hh,), h0)
        np.testing.assert_allclose(got, want, atol=2e-6)


def gru_run(xp, p, mask, bias, bias_hn, w_hh, h0, starts, h_reset):
    """The GRU's loop in NumPy (float64) or jnp: ``p`` the input products without bias (B, T, 3H),
    ``h_reset`` read for the state before a step whose start is set (``starts`` (B, T)). Returns
    the states (B, T, H) and the gates (r, z, n, W_hn h + b_hn) (B, T, 4H)."""
    hidden = h0.shape[1]
    sigmoid = lambda z: activation(xp, "sigmoid", z)  # noqa: E731
    h, hs, gates = h0, [], []
    for t in range(p.shape[1]):
        before = xp.where(starts[:, t:t + 1] > 0, h_reset, h)
        pt, g = p[:, t] + bias, before @ w_hh.T
        r, z = sigmoid(pt[:, :hidden] + g[:, :hidden]), sigmoid(pt[:, hidden:2 * hidden] + g[:, hidden:2 * hidden])
        gn = g[:, 2 * hidden:] + bias_hn
        n = xp.tanh(pt[:, 2 * hidden:] + r * gn)
        h = xp.where(mask[:, t:t + 1] > 0, (1.0 - z) * n + z * before, h)
        hs.append(h)
        gates.append(xp.concatenate([r, z, n, gn], axis=1))
    return xp.stack(hs, 1), xp.stack(gates, 1)


@needs("gru")
@pytest.mark.parametrize("batch,hidden", [(3, 16), (19, 48)])
def test_the_gru_kernels_follow_the_equations(batch, hidden):
    length, inputs = 6, 5
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    xs, h0 = normal(batch, length, inputs), normal(batch, hidden)
    w_ih, w_hh = normal(3 * hidden, inputs) / np.sqrt(inputs), normal(3 * hidden, hidden) / np.sqrt(hidden)
    bias, bias_hn = normal(3 * hidden), normal(hidden)
    mask = (rng.random((batch, length)) > 0.3).astype(np.float32)
    starts, h_reset = (rng.random((batch, length)) < 0.3).astype(np.float32), normal(batch, hidden)
    p = xs.astype(np.float64) @ w_ih.T
    want, want_gates = gru_run(np, p, mask, bias, bias_hn, w_hh, h0, starts, h_reset)
    forward = jax.jit(native.gru_forward, static_argnames=("inference", "projected"))
    loop_inputs = (xs, mask, starts, h_reset, w_ih.T.copy(), w_hh.T.copy(), bias, bias_hn, h0)
    hs, gates = forward(*loop_inputs)
    (inference,) = forward(*loop_inputs, inference=True)
    # The input products computed before the loop (as for a batch that runs on one thread).
    projected_inputs = (p.astype(np.float32),) + loop_inputs[1:]
    projected_hs, projected_gates = forward(*projected_inputs, projected=True)
    (projected_inference,) = forward(*projected_inputs, inference=True, projected=True)
    valid = mask[:, :, None] > 0  # a masked step's gates are not used
    for got in (hs, inference, projected_hs, projected_inference):
        np.testing.assert_allclose(got, want, atol=2e-6)
    for got in (gates, projected_gates):
        np.testing.assert_allclose(np.where(valid, got, 0), np.where(valid, want_gates, 0), atol=2e-6)

    dys, dh_last = normal(batch, length, hidden), normal(batch, hidden)

    def loss(p, gn_shift, h0, h_reset):  # gn_shift: a zero added to W_hn h + b_hn, for its gradient
        hidden_ = h0.shape[1]
        shifted_bias_hn = bias_hn + gn_shift  # (B, T, H) -> one per sequence and step
        h, hs = h0, []
        for t in range(length):
            before = jnp.where(starts[:, t:t + 1] > 0, h_reset, h)
            pt, g = p[:, t] + bias, before @ w_hh.T
            r = jax.nn.sigmoid(pt[:, :hidden_] + g[:, :hidden_])
            z = jax.nn.sigmoid(pt[:, hidden_:2 * hidden_] + g[:, hidden_:2 * hidden_])
            n = jnp.tanh(pt[:, 2 * hidden_:] + r * (g[:, 2 * hidden_:] + shifted_bias_hn[:, t]))
            h = jnp.where(mask[:, t:t + 1] > 0, (1.0 - z) * n + z * before, h)
            hs.append(h)
        hs = jnp.stack(hs, 1)
        return jnp.sum(hs * dys) + jnp.sum(hs[:, -1] * dh_last)

    dp, dgn, dh0, d_reset = jax.grad(loss, argnums=(0, 1, 2, 3))(p.astype(np.float32),
                                                                 jnp.zeros((batch, length, hidden)), h0, h_reset)
    got = jax.jit(native.gru_backward)(hs, gates, dys, mask, starts, h_reset, dh_last, h0, w_hh)
    want_grads = (dp[..., :2 * hidden], dp[..., 2 * hidden:], dgn, dh0, jnp.sum(dp, axis=1), jnp.sum(dgn, axis=1),
                  d_reset)
    for a, b in zip(got, want_grads, strict=True):
        np.testing.assert_allclose(a, b, atol=5e-6)


@needs("linear")
@pytest.mark.parametrize("batch", [3, 19])
def test_the_linear_kernels_follow_the_equations(batch):
    # 155 state numbers: with AVX-512 the loops' blocks in registers (forward 128, backward 2 x 64),
    # a vector of 16, then 11 numbers one by one; with AVX2 blocks of 32 and 16, vectors of 8, then 3
    length, hidden, inputs = 7, 155, 5
    rng = np.random.default_rng(0)
    xs, h0 = rng.normal(size=(batch, length, inputs)).astype(np.float32), rng.normal(size=(batch, hidden)).astype(np.float32)
    w = (rng.normal(size=(hidden, inputs)) / np.sqrt(inputs)).astype(np.float32)
    ps = xs @ w.T
    gamma = rng.uniform(0.5, 1.0, hidden).astype(np.float32)
    bias = rng.normal(size=hidden).astype(np.float32)
    mask = (rng.random((batch, length)) > 0.3).astype(np.float32)
    starts = (rng.random((batch, length)) < 0.3).astype(np.float32)  # on masked steps too, which ignore them
    h_reset = rng.normal(size=(batch, hidden)).astype(np.float32)

    def reference(xp, ps, gamma, bias, h0, h_reset):  # gamma and bias per sequence (B, H)
        h, hs = h0, []
        for t in range(length):
            before = xp.where(starts[:, t:t + 1] > 0, h_reset, h)
            h = xp.where(mask[:, t:t + 1] > 0, gamma * before + (ps[:, t] + bias), h)
            hs.append(h)
        return xp.stack(hs, 1)

    hs = jax.jit(native.linear_forward)(ps, mask, starts, h_reset, gamma, bias, h0)
    np.testing.assert_allclose(hs, reference(np, xs.astype(np.float64) @ w.T, gamma, bias, h0, h_reset), atol=5e-6)
    dys, dh_last = rng.normal(size=ps.shape).astype(np.float32), rng.normal(size=h0.shape).astype(np.float32)

    def loss(ps, gamma, bias, h0, h_reset):
        out = reference(jnp, ps, gamma, bias, h0, h_reset)
        return jnp.sum(out * dys) + jnp.sum(out[:, -1] * dh_last)

    per_sequence = lambda a: jnp.broadcast_to(a, h0.shape)  # noqa: E731
    dp, dgamma, db, dh0, d_reset = jax.grad(loss, argnums=(0, 1, 2, 3, 4))(ps, per_sequence(gamma),
                                                                           per_sequence(bias), h0, h_reset)
    got = jax.jit(native.linear_backward)(hs, dys, mask, starts, h_reset, gamma, h0, dh_last)
    for a, b in zip(got, (dp, dh0, dgamma, db, d_reset), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)


LOOPS = ("gru", "elman", "forget_elman", "mgu", "linear")  # the forward loops these tests look for


def runs_native(function, *args) -> bool:
    return _runs_native(function, *args, loops=LOOPS)


LAYER_CASES = [
    ("gru", lambda key: recurrax.GRU(5, 16, key=key)),
    ("elman", lambda key: recurrax.Elman(5, 16, activation="relu", key=key)),
    ("forget_gate", lambda key: recurrax.ForgetElman(5, 32, key=key)),
    ("forget_gate", lambda key: recurrax.MGU(5, 16, key=key)),
    ("linear", lambda key: recurrax.LinearRecurrence(5, 20, key=key)),
]


@pytest.mark.parametrize("loops,make", LAYER_CASES)
def test_the_layers_on_native_loops_equal_the_plain_scan(loops, make):
    """Masked and reversed, with episode starts, bidirectional, in chunks, one sequence, and
    per-example gradients."""
    if not native.available(loops):
        pytest.skip(f"native {loops} loops not built: {native.build_error(loops)}")
    cell = make(jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (17, 9, 5))
    mask = jax.random.bernoulli(jax.random.key(3), 0.7, xs.shape[:2]).at[:, -1].set(False)
    starts = jax.random.bernoulli(jax.random.key(4), 0.25, xs.shape[:2])
    h0 = 0.3 * jnp.ones(cell.hidden_size)
    bidirectional = recurrax.Bidirectional(recurrax.Recurrent(cell), recurrax.Recurrent(cell))

    def loss(cell, xs):
        masked, hm = jax.vmap(lambda x, m: recurrax.scan(cell, x, h0, mask=m, reverse=True))(xs, mask)
        h_reset = jnp.tanh(cell.bias[:cell.hidden_size])  # its gradient reaches the bias
        packed, hp = jax.vmap(lambda x, s, m: recurrax.scan(cell, x, h0, starts=s, mask=m, reset_state=h_reset))(
            xs, starts, mask)
        chunked, hc = jax.vmap(lambda x: recurrax.scan(cell, x, chunk_size=4))(xs)
        single = recurrax.scan(cell, xs[0])[0]
        few = jax.vmap(lambda x: recurrax.scan(cell, x)[0])(xs[:5])  # one thread: products before the loop
        return (jnp.sum(jnp.sin(masked)) + jnp.sum(hm ** 2) + jnp.sum(jnp.cos(chunked)) + jnp.sum(hc)
                + jnp.sum(jnp.sin(packed)) + jnp.sum(hp ** 2)
                + jnp.sum(jnp.cos(jax.vmap(bidirectional)(xs))) + jnp.sum(single) + jnp.sum(jnp.tanh(few)))

    assert_native_equals_plain(loss, cell, xs, loops=LOOPS)
    per_example_gradients(cell, xs, LOOPS)


@needs("forget_gate")
def test_a_call_not_differentiated_runs_the_inference_loop_alone():
    cell = recurrax.MGU(5, 16, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (4, 6, 5))
    layer = lambda c, x: jax.vmap(lambda s: recurrax.scan(c, s)[0])(x)  # noqa: E731
    inference = jax.jit(layer).lower(cell, xs).compile().as_text()
    training = jax.jit(jax.grad(lambda c, x: jnp.sum(layer(c, x)))).lower(cell, xs).compile().as_text()
    assert "recurrax_mgu_inference" in inference and "recurrax_mgu_forward" not in inference
    assert "recurrax_mgu_forward" in training and "recurrax_mgu_inference" not in training


@needs("linear")
def test_what_the_native_loops_leave_to_xla():
    xs = jax.random.normal(jax.random.key(1), (4, 6, 5))
    flags = jnp.zeros(xs.shape[:2], bool).at[:, 3].set(True)
    layer = lambda c, x: jax.vmap(lambda x: recurrax.scan(c, x)[0])(x)  # noqa: E731
    linear = recurrax.LinearRecurrence(5, 16, key=jax.random.key(0))
    assert runs_native(layer, linear, xs)
    with recurrax.fused.disabled():
        assert not runs_native(layer, linear, xs)
    with recurrax.native.disabled():
        assert not runs_native(layer, linear, xs)
    assert not runs_native(lambda c, x: jax.vmap(lambda x: recurrax.scan(c, x, fused=False)[0])(x), linear, xs)
    assert not runs_native(lambda c, x: jax.vmap(lambda x: recurrax.scan(c, x, mode="associative")[0])(x), linear, xs)
    episodes = lambda c, x, s: jax.vmap(lambda x, s: recurrax.scan(c, x, starts=s)[0])(x, s)  # noqa: E731
    assert runs_native(episodes, linear, xs, flags)
    assert runs_native(episodes, recurrax.Elman(5, 16, key=jax.random.key(0)), xs, flags)
    assert runs_native(episodes, recurrax.GRU(5, 16, key=jax.random.key(0)), xs, flags)
    ensemble = jax.vmap(lambda k: recurrax.LinearRecurrence(5, 16, key=k))(jax.random.split(jax.random.key(2), 2))
    assert not runs_native(lambda c, x: jax.vmap(layer, in_axes=(0, None))(c, x), ensemble, xs)
    assert not runs_native(layer, recurrax.Elman(5, 12, key=jax.random.key(0)), xs)  # 12: not a multiple of 16
    assert runs_native(layer, recurrax.LinearRecurrence(5, 12, key=jax.random.key(0)), xs)  # any size
    assert not runs_native(layer, jax.tree_util.tree_map(lambda a: a.astype(jnp.float16), linear),
                           xs.astype(jnp.float16))


def test_an_unknown_activation_or_loops_name_is_refused():
    with pytest.raises(ValueError, match="no activation 'gelu'"):
        native.elman_forward(jnp.zeros((1, 2, 3)), jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1, 16)),
                             jnp.zeros((19, 16)), jnp.zeros(16), jnp.zeros((1, 16)), activation="gelu")
    with pytest.raises(ValueError, match="run 'forget_elman' or 'mgu', not 'gru'"):
        native.forget_gate_forward("gru", jnp.zeros((1, 2, 3)), jnp.ones((1, 2)), jnp.zeros((1, 2)),
                                   jnp.zeros((1, 16)), jnp.zeros((19, 16)), jnp.zeros((19, 16)), jnp.zeros(32),
                                   jnp.zeros((1, 16)))
    with pytest.raises(ValueError, match="no native loops 'attention'"):
        native.available("attention")
