"""The linear recurrent cells (LRU, minGRU, minLSTM, S6, RG-LRU, FFM, linear attention, Gated
DeltaNet): NumPy oracles, scan-mode agreement, finite-difference gradients, layers, long sequences."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import recurrax
from finite_differences import check_gradient

X, H = 3, 4
NAMES = ["lru", "mingru", "minlstm", "s6", "rglru", "ffm", "linear-attention", "gated-deltanet"]
# Small state sizes keep the tests fast; the defaults are exercised by the slow T = 100,000 test.
SMALL = {
    "s6": dict(state_size=3),
    "ffm": dict(trace_size=3, context_size=2),
    "linear-attention": dict(key_size=3),
    "gated-deltanet": dict(key_size=3),
}
# (name, options, input_size): every cell, plus the variants with their own code paths.
CASES = [(name, SMALL.get(name, {}), X) for name in NAMES] + [
    ("lru", dict(state_size=5), H),  # diagonal skip D ⊙ x (input_size == hidden_size), N ≠ H
    ("mingru", dict(log_space=False), X),
    ("mingru", dict(log_space=False, candidate="linear"), X),
    ("minlstm", dict(log_space=False), X),
    ("minlstm", dict(log_space=False, candidate="linear"), X),
    ("linear-attention", dict(key_size=2, value_size=5), X),
    ("gated-deltanet", dict(key_size=2, value_size=5), X),
]


def case_id(case):
    name, options, x = case
    return "-".join([name] + [f"{k}={v}" for k, v in options.items()] + ([f"X={x}"] if x != X else []))


def make(name, key=0, input_size=X, hidden_size=H, **options):
    options = {**SMALL.get(name, {}), **options}
    return recurrax.get_cell_class(name)(input_size, hidden_size, key=jax.random.key(key), **options)


# ============================================================================================
# The recurrences written out in plain NumPy (float64, complex128), step by step.


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softplus(z):
    return np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0.0)


def g(z):
    return np.where(z >= 0, z + 0.5, sigmoid(z))


def f64(a):
    return np.asarray(a, np.float64)


def lru_step(c):
    lam = np.exp(-np.exp(f64(c.nu_log)) + 1j * np.exp(f64(c.theta_log)))
    gamma = np.exp(f64(c.gamma_log))
    B = f64(c.B_re) + 1j * f64(c.B_im)
    C = f64(c.C_re) + 1j * f64(c.C_im)
    D = f64(c.D)

    def step(h, x):
        h = lam * h + gamma * (B @ x)
        return h, (C @ h).real + (D * x if D.ndim == 1 else D @ x)

    return step


def min_step(c, lstm):
    W, b = f64(c.weight), f64(c.bias)
    cand = g if c.candidate == "g" else (lambda z: z)

    def step(h, x):
        k = W @ x + b
        if lstm:
            kf, ki, kh = np.split(k, 3)
            f, i = sigmoid(kf), sigmoid(ki)
            h = f / (f + i) * h + i / (f + i) * cand(kh)
        else:
            kz, kh = np.split(k, 2)
            z = sigmoid(kz)
            h = (1 - z) * h + z * cand(kh)
        return h, h

    return step


def s6_step(c):
    W_in, W_x, W_dt, b_dt = f64(c.in_proj), f64(c.x_proj), f64(c.dt_proj), f64(c.dt_bias)
    A, Dskip = -np.exp(f64(c.A_log)), f64(c.skip)
    R, N = c.dt_rank, c.state_size

    def step(h, x):
        u = W_in @ x
        z = W_x @ u
        delta = softplus(W_dt @ z[:R] + b_dt)
        B, C = z[R : R + N], z[R + N :]
        h = np.exp(delta[:, None] * A) * h + delta[:, None] * B[None, :] * u[:, None]
        y = np.array([C @ h[d] for d in range(h.shape[0])]) + Dskip * u
        return h, y

    return step


def rglru_step(c):
    W, b, lam, cc = f64(c.weight), f64(c.bias), f64(c.decay_param), c.c

    def step(h, x):
        xin, kr, ki = np.split(W @ x + b, 3)
        r, i = sigmoid(kr), sigmoid(ki)
        a = sigmoid(lam) ** (cc * r)  # a_t = a^{c r_t}, a = σ(Λ)
        h = a * h + np.sqrt(1 - a**2) * (i * xin)
        return h, h

    return step


def ffm_step(c):
    W_in, b_in = f64(c.input_weight), f64(c.input_bias)
    W_mix, b_mix = f64(c.mix_weight), f64(c.mix_bias)
    W_out, b_out = f64(c.output_weight), f64(c.output_bias)
    gamma = np.exp(-np.abs(f64(c.alpha))[:, None] + 1j * f64(c.omega)[None, :])
    m = c.trace_size

    def step(S, x):
        k = W_in @ x + b_in
        x_tilde = k[:m] * sigmoid(k[m:])
        S = gamma * S + x_tilde[:, None]
        z = W_mix @ np.concatenate([S.real.ravel(), S.imag.ravel()]) + b_mix
        z = (z - z.mean()) / np.sqrt(z.var() + 1e-5)
        o = W_out @ x + b_out
        gate, skip = sigmoid(o[: len(o) // 2]), o[len(o) // 2 :]
        return S, z * gate + skip * (1 - gate)

    return step


def linear_attention_step(c):
    W, b, K = f64(c.weight), f64(c.bias), c.key_size
    phi = lambda z: np.where(z > 0, z + 1.0, np.exp(z))  # noqa: E731  elu(z) + 1

    def step(state, x):
        S, z = state
        p = W @ x + b
        q, k, v = phi(p[:K]), phi(p[K : 2 * K]), p[2 * K :]
        S = S + np.outer(k, v)
        z = z + k
        return (S, z), S.T @ q / (z @ q + 1e-6)

    return step


def gated_deltanet_step(c):
    W, b, K, V = f64(c.weight), f64(c.bias), c.key_size, c.value_size

    def step(S, x):
        p = W @ x + b
        q, k, v = p[:K], p[K : 2 * K], p[2 * K : 2 * K + V]
        q, k = q / np.sqrt(q @ q + 1e-6), k / np.sqrt(k @ k + 1e-6)
        alpha, beta = np.exp(-softplus(p[-2])), sigmoid(p[-1])
        S = S @ (alpha * (np.eye(K) - beta * np.outer(k, k))) + beta * np.outer(v, k)
        return S, S @ q

    return step


def numpy_step(name, cell):
    return {
        "lru": lambda: lru_step(cell),
        "mingru": lambda: min_step(cell, lstm=False),
        "minlstm": lambda: min_step(cell, lstm=True),
        "s6": lambda: s6_step(cell),
        "rglru": lambda: rglru_step(cell),
        "ffm": lambda: ffm_step(cell),
        "linear-attention": lambda: linear_attention_step(cell),
        "gated-deltanet": lambda: gated_deltanet_step(cell),
    }[name]()


def numpy_run(name, cell, xs, h0=None, starts=None, mask=None, reverse=False):
    """The scan semantics by hand: resets to h0 before a start (reversed: on entering another
    episode, episodes delimited by unmasked starts), masked steps keep the state and output zeros.
    Returns (ys, final_state)."""
    step = numpy_step(name, cell)
    xs = f64(xs)
    T = xs.shape[0]
    h0 = jax.tree_util.tree_map(lambda z: np.asarray(z, np.complex128 if np.iscomplexobj(z) else np.float64),
                                cell.init_state() if h0 is None else h0)
    starts = np.zeros(T, bool) if starts is None else np.asarray(starts, bool)
    mask = np.ones(T, bool) if mask is None else np.asarray(mask, bool)
    episode = np.cumsum(starts & mask)
    ys = np.zeros((T, cell.output_size))
    h = h0
    last = None  # the episode of the last unmasked step run
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        if not mask[t]:
            continue
        reset = (last is not None and episode[t] != last) if reverse else starts[t]
        if reset:
            h = h0
        last = episode[t]
        h, ys[t] = step(h, xs[t])
    return ys, h


# ============================================================================================
# Helpers


def random_state(cell, rng):
    """A random state with the structure of ``cell.init_state()`` (complex where it is)."""

    def draw(z):
        r = rng.normal(size=z.shape)
        if jnp.iscomplexobj(z):
            r = r + 1j * rng.normal(size=z.shape)
        return jnp.asarray(r, z.dtype)

    return jax.tree_util.tree_map(draw, cell.init_state())


def assert_tree_close(a, b, tol):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def real_sum(tree, fn):
    """Σ fn(leaf) over a pytree, complex leaves split into real and imaginary parts."""
    total = 0.0
    for leaf in jax.tree_util.tree_leaves(tree):
        parts = (jnp.real(leaf), jnp.imag(leaf)) if jnp.iscomplexobj(leaf) else (leaf,)
        total = total + sum(jnp.sum(fn(p)) for p in parts)
    return total


# XLA's CPU compile time dominates these small tests; without LLVM's optimisations it halves,
# and the programs compute the same numbers (to float tolerance).
QUICK_COMPILE = {"xla_backend_optimization_level": 0}


def quick_jit(fn):
    """Like ``eqx.filter_jit`` (arrays traced, everything else static), compiled with QUICK_COMPILE."""
    compiled = {}

    def wrapper(*args):
        leaves, treedef = jax.tree_util.tree_flatten(args)
        traced = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
        static = tuple(None if t else leaf for t, leaf in zip(traced, leaves))
        key = (treedef, static)
        if key not in compiled:

            def inner(arrays):
                it = iter(arrays)
                full = [next(it) if t else leaf for t, leaf in zip(traced, static)]
                return fn(*jax.tree_util.tree_unflatten(treedef, full))

            compiled[key] = jax.jit(inner, compiler_options=QUICK_COMPILE)
        return compiled[key]([leaf for t, leaf in zip(traced, leaves) if t])

    return wrapper


@quick_jit
def _scan(cell, xs, h0, starts, mask, mode, reverse, chunk_size):
    return recurrax.scan(cell, xs, h0, starts=starts, mask=mask, mode=mode, reverse=reverse, chunk_size=chunk_size)


def scan(cell, xs, h0=None, *, starts=None, mask=None, mode="sequential", reverse=False, chunk_size=None):
    """recurrax.scan, jitted (one compilation per cell configuration, mode, direction and chunk)."""
    return _scan(cell, xs, h0, starts, mask, mode, reverse, chunk_size)


# ============================================================================================
# Against NumPy


@quick_jit
def _both_directions(cell, xs, h0, starts, mask, mode, chunk_size):
    kwargs = dict(starts=starts, mask=mask, mode=mode, chunk_size=chunk_size)
    return recurrax.scan(cell, xs, h0, **kwargs), recurrax.scan(cell, xs, h0, reverse=True, **kwargs)


@quick_jit
def _one_step(cell, state, x):
    return cell(state, x)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_cell_matches_its_numpy_recurrence(case):
    """Sequential scan (every step through ``cell.step``) with resets, a mask and a random h0, both
    directions, and one streaming step, against the recurrence written out in NumPy."""
    name, options, input_size = case
    cell = recurrax.get_cell_class(name)(input_size, H, key=jax.random.key(0), **options)
    rng = np.random.default_rng(1)
    T = 9
    xs = jnp.asarray(rng.normal(size=(T, input_size)), jnp.float32)
    starts = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0], bool)
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1, 0], bool)
    h0 = random_state(cell, rng)
    results = _both_directions(cell, xs, h0, starts, mask, "sequential", None)
    for (ys, final), reverse in zip(results, (False, True)):
        ref_ys, ref_final = numpy_run(name, cell, xs, h0, starts, mask, reverse)
        assert ys.shape == (T, cell.output_size)
        np.testing.assert_allclose(ys, ref_ys, rtol=1e-4, atol=1e-5)
        assert_tree_close(final, ref_final, 1e-4)
    state, y = _one_step(cell, h0, xs[0])
    ref_state, ref_y = numpy_step(name, cell)(jax.tree_util.tree_map(np.asarray, h0), f64(xs[0]))
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
    assert_tree_close(state, ref_state, 1e-4)


def test_log_space_and_plain_min_rnns_agree():
    """Same weights, log-space and plain combines: the same outputs (large inputs: saturated gates)."""
    xs = 4.0 * jax.random.normal(jax.random.key(1), (8, X))
    for name in ("mingru", "minlstm"):
        log_cell, plain = make(name, log_space=True), make(name, log_space=False)
        np.testing.assert_array_equal(log_cell.weight, plain.weight)
        assert_tree_close(scan(log_cell, xs, mode="associative"), scan(plain, xs, mode="associative"), 1e-5)
    with pytest.raises(ValueError, match="positive candidate"):
        recurrax.MinGRU(X, H, key=jax.random.key(0), candidate="linear")


@pytest.mark.parametrize("log_space", [True, False])
def test_min_lstm_gates_that_both_underflow_stay_normalised(log_space):
    """k_f = k_i = −120 in float32: sigmoid gives 0 for both, yet f' = i' = 1/2 (h̃ = g(1) = 1.5):
    h_t = (h_{t−1} + 1.5) / 2 from h_0 = 0, and the gradient is finite, in every mode."""
    cell = recurrax.MinLSTM(1, 1, key=jax.random.key(0), log_space=log_space)
    cell = eqx.tree_at(lambda c: (c.weight, c.bias), cell,
                       (jnp.zeros((3, 1)), jnp.array([-120.0, -120.0, 1.0])))
    xs = jnp.zeros((3, 1))
    expected = np.array([0.75, 1.125, 1.3125])[:, None]
    for mode in ("sequential", "associative", "chunked"):
        ys, _ = recurrax.scan(cell, xs, mode=mode)
        np.testing.assert_allclose(ys, expected, rtol=1e-6)
        grads = jax.grad(lambda c: jnp.sum(recurrax.scan(c, xs, mode=mode)[0]))(cell)
        assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_initialisations_follow_the_papers():
    lru = make("lru", r_min=0.4, r_max=0.9, max_phase=1.0)
    lam = np.asarray(lru.decay)
    assert np.abs(lam).min() >= 0.4 - 1e-6 and np.abs(lam).max() <= 0.9 + 1e-6
    assert np.angle(lam).min() >= 0 and np.angle(lam).max() <= 1.0 + 1e-6
    np.testing.assert_allclose(np.exp(np.asarray(lru.gamma_log)), np.sqrt(1 - np.abs(lam) ** 2), rtol=1e-4)
    assert lru.init_state().dtype == jnp.complex64 and lru.D.shape == (H, X)
    rg = make("rglru")
    a_c = np.asarray(jax.nn.sigmoid(rg.decay_param)) ** rg.c
    assert a_c.min() >= 0.9 - 1e-5 and a_c.max() <= 0.999 + 1e-5
    s6 = make("s6")
    np.testing.assert_allclose(s6.A, -np.broadcast_to(np.arange(1, 4), (H, 3)), rtol=1e-6)
    dt = np.asarray(jax.nn.softplus(s6.dt_bias))
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert s6.dt_rank == 1
    assert make("ffm").init_state().dtype == jnp.complex64
    assert make("linear-attention", value_size=6).output_size == 6
    gdn = make("gated-deltanet", alpha_init=0.9)
    assert gdn.init_state().shape == (H, 3) and gdn.output_size == H
    np.testing.assert_allclose(np.exp(-jax.nn.softplus(gdn.bias[-2])), 0.9, rtol=1e-5)


def test_cells_follow_the_default_float_dtype():
    """Built under jax.enable_x64, every parameter is float64 and complex states complex128
    (traced with eval_shape: nothing is compiled)."""
    with jax.enable_x64(True):
        for name in NAMES:
            build = lambda: recurrax.get_cell_class(name)(X, H, key=jax.random.key(0))  # noqa: E731
            params = jax.eval_shape(build)
            state = jax.eval_shape(lambda: build().init_state())
            assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(params)} == {jnp.dtype("float64")}, name
            want = "complex128" if name in ("lru", "ffm") else "float64"
            assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(state)} == {jnp.dtype(want)}, name


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_cells_run_in_every_mode(name):
    """bfloat16 weights and inputs: every mode runs and stays near the float32 cell; the complex
    states (LRU, FFM) are complex64, there being no half-precision complex type."""
    cell = make(name)
    half = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a, cell)
    xs = jax.random.normal(jax.random.key(1), (6, X))
    want, _ = recurrax.scan(cell, xs)
    for mode in ("sequential", "associative", "chunked"):
        ys, state = recurrax.scan(half, xs.astype(jnp.bfloat16), mode=mode)
        np.testing.assert_allclose(np.asarray(ys, np.float32), want, rtol=0.1, atol=0.1)
        if name in ("lru", "ffm"):
            assert state.dtype == jnp.complex64 and ys.dtype == jnp.float32


# ============================================================================================
# Scan modes agree (properties)

T_PROP = 7  # prime: every chunk size in 2..6 leaves a partial last chunk; 7 and 8 are one chunk


@quick_jit
def _all_modes(cell, xs, h0, starts, mask, reverse, chunk_size):
    kwargs = dict(starts=starts, mask=mask, reverse=reverse)
    return (
        recurrax.scan(cell, xs, h0, mode="sequential", **kwargs),
        recurrax.scan(cell, xs, h0, mode="associative", **kwargs),
        recurrax.scan(cell, xs, h0, mode="chunked", chunk_size=chunk_size, **kwargs),
    )


@settings(max_examples=10, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    seed=st.integers(0, 2**16),
    reverse=st.booleans(),
    chunk_size=st.integers(1, 8),
    p_start=st.sampled_from([0.0, 0.2, 0.5]),
    p_mask=st.sampled_from([1.0, 0.7, 0.4]),
    random_h0=st.booleans(),
)
def test_sequential_associative_and_chunked_agree(name, seed, reverse, chunk_size, p_start, p_mask, random_h0):
    """The three scans, with random resets, masks, direction, chunk size and h0, give the same
    outputs and final state, and the NumPy recurrence's."""
    rng = np.random.default_rng(seed)
    cell = make(name, key=seed)
    xs = jnp.asarray(rng.normal(size=(T_PROP, X)), jnp.float32)
    # Flags are always passed (possibly all-false / all-true): their presence never recompiles.
    starts = rng.random(T_PROP) < p_start
    mask = rng.random(T_PROP) < p_mask
    h0 = random_state(cell, rng) if random_h0 else cell.init_state()
    seq, assoc, chunked = _all_modes(cell, xs, h0, starts, mask, reverse, chunk_size)
    assert_tree_close(assoc, seq, 2e-5)
    assert_tree_close(chunked, seq, 2e-5)
    assert_tree_close(seq, numpy_run(name, cell, xs, h0, starts, mask, reverse), 2e-4)


# ============================================================================================
# Gradients


def _split_complex(tree):
    return jax.tree_util.tree_map(lambda z: [jnp.real(z), jnp.imag(z)] if jnp.iscomplexobj(z) else z, tree)


def _join_complex(parts, like):
    leaves, treedef = jax.tree_util.tree_flatten(like)
    flat = treedef.flatten_up_to(parts)
    return treedef.unflatten([jax.lax.complex(*p) if jnp.iscomplexobj(z) else p for z, p in zip(leaves, flat)])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_match_finite_differences(name):
    """Gradients with respect to the parameters, the inputs and h0 (real and imaginary parts of a
    complex state) through a reversed associative scan with resets and a mask, against central
    differences in float64."""
    cell32 = make(name)
    with jax.enable_x64(True):
        # (cast rather than rebuilt under x64, which costs new compilations; the float64
        # construction itself is checked in test_cells_follow_the_default_float_dtype)
        cell = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, cell32)
        assert cell.init_state() is not None and all(
            leaf.dtype == jnp.float64 for leaf in jax.tree_util.tree_leaves(cell) if eqx.is_inexact_array(leaf)
        )
        rng = np.random.default_rng(0)
        T = 4  # an associative scan's compile time grows with log2(T): 4 keeps it short
        xs = jnp.asarray(rng.normal(size=(T, X)))
        h0 = random_state(cell, rng)
        starts = np.array([0, 0, 1, 0], bool)
        mask = np.array([1, 1, 1, 0], bool)
        readout = jnp.asarray(rng.normal(size=(T, cell.output_size)))

        def loss(variables):
            cell_, xs_, h0_parts = variables
            h0_ = _join_complex(h0_parts, cell.init_state())
            ys, final = recurrax.scan(cell_, xs_, h0_, starts=starts, mask=mask, mode="associative", reverse=True)
            return jnp.sum(ys * readout) + real_sum(final, jnp.sin)

        check_gradient(loss, (cell, xs, _split_complex(h0)), rtol=1e-5)


# ============================================================================================
# Layers


@quick_jit
def _batched(layer, batch, mask):
    return jax.vmap(lambda x, m: layer(x, mask=m))(batch, mask)


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_stack_under_vmap(name):
    """make_stack(name, bidirectional=True) (associative scans both ways) over a padded batch
    with jax.vmap, against the NumPy recurrences."""
    net = recurrax.make_stack(
        name, X, H, bidirectional=True, scan="associative", key=jax.random.key(0), **SMALL.get(name, {})
    )
    layer = net.layers[0]
    assert layer.forward.scan == layer.backward.scan == "associative"
    batch = jax.random.normal(jax.random.key(1), (2, 5, X))
    mask = np.array([[1] * 5, [1] * 3 + [0] * 2], bool)
    ys = _batched(net, batch, mask)
    assert ys.shape == (2, 5, net.output_size)
    for b in range(2):
        fwd = numpy_run(name, layer.forward.cell, batch[b], mask=mask[b])[0]
        bwd = numpy_run(name, layer.backward.cell, batch[b], mask=mask[b], reverse=True)[0]
        np.testing.assert_allclose(ys[b], np.concatenate([fwd, bwd], -1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ys[1, 3:], 0.0)


def test_deep_bidirectional_stack_chains_output_sizes():
    """Layer 2 reads both directions of layer 1, whose width is 2 × output_size (≠ hidden_size)."""
    net = recurrax.make_stack(
        "linear-attention", X, H, num_layers=2, bidirectional=True, key=jax.random.key(0), key_size=2, value_size=3
    )
    assert net.layers[1].input_size == 6 and net.output_size == 6
    xs = jax.random.normal(jax.random.key(1), (5, X))
    first = net.layers[0]
    hs = np.concatenate(
        [numpy_run("linear-attention", first.forward.cell, xs)[0],
         numpy_run("linear-attention", first.backward.cell, xs, reverse=True)[0]], -1
    )
    second = net.layers[1]
    want = np.concatenate(
        [numpy_run("linear-attention", second.forward.cell, hs)[0],
         numpy_run("linear-attention", second.backward.cell, hs, reverse=True)[0]], -1
    )
    np.testing.assert_allclose(quick_jit(lambda n, x: n(x))(net, xs), want, rtol=1e-4, atol=1e-5)


# ============================================================================================
# Long sequences: float32 stays finite, values and gradients


def _loss_and_grads(cell, xs, starts, mode, chunk_size):
    def loss(c, x):
        ys, final = recurrax.scan(c, x, starts=starts, mode=mode, chunk_size=chunk_size)
        return jnp.mean(ys**2) + real_sum(final, jnp.square), (ys, final)

    return eqx.filter_value_and_grad(loss, has_aux=True)(cell, xs)


def _long_run(name, T, mode, chunk_size, with_starts, defaults=False, jit=eqx.filter_jit):
    cell = recurrax.get_cell_class(name)(X, H, key=jax.random.key(0)) if defaults else make(name)
    xs = jax.random.normal(jax.random.key(1), (T, X))
    starts = jnp.zeros((T,), bool).at[T // 2].set(True) if with_starts else None
    (value, (ys, final)), grads = jit(_loss_and_grads)(cell, xs, starts, mode, chunk_size)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(ys)))
    for leaf in jax.tree_util.tree_leaves((final, grads)):
        assert np.all(np.isfinite(np.asarray(leaf))), f"{name}: non-finite state or gradient"
    return ys, final, grads


@pytest.mark.parametrize("name", NAMES)
def test_long_sequence_is_finite_chunked(name):
    """T = 20,000 in float32 with the chunked scan: outputs, final state and gradients finite.

    Small chunks keep the compilation short (an associative scan's compile time grows quickly
    with its length); the numbers still flow through 5,000 chunk-to-chunk hand-overs."""
    _long_run(name, 20_000, "chunked", 4, with_starts=False, jit=quick_jit)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_very_long_sequence_is_finite_and_modes_agree(name):
    """T = 100,000 in float32, default options, associative and sequential scans: finite, and the
    same outputs and gradients."""
    ys_a, final_a, grads_a = _long_run(name, 100_000, "associative", None, with_starts=True, defaults=True)
    ys_s, final_s, grads_s = _long_run(name, 100_000, "sequential", None, with_starts=True, defaults=True)
    np.testing.assert_allclose(ys_a, ys_s, rtol=1e-3, atol=1e-3)
    for a, s in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_s)):
        np.testing.assert_allclose(a, s, rtol=2e-2, atol=2e-3)
