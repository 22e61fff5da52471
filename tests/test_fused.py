"""The fused scan of the classic cells (recurrax.fused) against the plain lax.scan of cell.step.

Values and gradients (weights, inputs, initial and reset states) must agree, batched by vmap, with
starts, masks, reverse, rematerialised chunks and bidirectional layers; float64 gradients are
checked against finite differences. Shapes are tiny and each test compiles a handful of functions.
"""

import importlib

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
import recurrax.fused
import recurrax.native
from finite_differences import check_gradient

X, H, T, B = 3, 4, 7, 3
STARTS = jnp.array([[1, 0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 1, 1, 0]], bool)
MASK = jnp.array([[1, 1, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 1, 1, 1]], bool)


def make(name, key=0, **kwargs):
    return recurrax.get_cell_class(name)(X, H, key=jax.random.key(key), **kwargs)


def random_state(cell, key):
    leaves, treedef = jax.tree_util.tree_flatten(cell.init_state())
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return jax.tree_util.tree_unflatten(treedef, [0.5 * jax.random.normal(k, l.shape) for k, l in zip(keys, leaves)])


def batch_loss(fused, configs, chunk_size=None):
    """A batch loss through vmap, as the trainer computes it: every output and the final state,
    summed over ``configs`` = ((reverse, with starts and mask), ...)."""
    readout = jnp.cos(jnp.arange(T * H, dtype=jnp.float32).reshape(T, H))

    def one(cell, x, h0, h_reset, starts, mask, reverse, flags):
        ys, final = recurrax.scan(
            cell, x, h0, starts=starts if flags else None, mask=mask if flags else None, reset_state=h_reset,
            reverse=reverse, chunk_size=chunk_size, fused=fused,
        )
        return jnp.sum(jnp.tanh(ys) * readout) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(final))

    def loss(variables, starts, mask):
        cell, xs, h0, h_reset = variables
        total = 0.0
        for k, (reverse, flags) in enumerate(configs):
            per_seq = lambda *a: one(*a, reverse, flags)  # noqa: E731
            batched = jax.vmap(per_seq, in_axes=(None, 0, 0, None, 0, 0))
            total += (k + 1) * jnp.sum(batched(cell, xs, h0, h_reset, starts, mask))
        return total

    return loss


def variables(name, **kwargs):
    cell = make(name, **kwargs)
    xs = jax.random.normal(jax.random.key(1), (B, T, X))
    h0 = jax.vmap(lambda k: random_state(cell, k))(jnp.arange(B))
    return cell, xs, h0, random_state(cell, 9)


def assert_trees_close(a, b, tol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def assert_fused_matches_plain(v, flags, **fused_options):
    """The batch loss and its gradients on the fused path equal those of the plain loop, and so
    does the loss computed alone (the fused path's inference loop, which may differ)."""
    fused_loss = batch_loss(True, flags, **fused_options)
    value, grads = jax.jit(jax.value_and_grad(fused_loss))(v, STARTS, MASK)
    want, want_grads = jax.jit(jax.value_and_grad(batch_loss(False, flags)))(v, STARTS, MASK)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(fused_loss)(v, STARTS, MASK), want, rtol=1e-5)
    assert_trees_close(grads, want_grads, 2e-5)


@pytest.mark.parametrize("name", ["elman", "forget-elman", "mgu", "gru", "lstm"])
def test_fused_equals_plain_values_and_gradients_under_vmap(name):
    """Reversed, with starts, mask, initial and reset states."""
    v = variables(name)
    assert_fused_matches_plain(v, ((True, True),))


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_fused_equals_plain_without_flags(name):
    v = variables(name)
    assert_fused_matches_plain(v, ((False, False),))


@pytest.mark.parametrize("name, activation", [("elman", "relu"), ("forget-elman", "sigmoid")])
def test_fused_elman_activations(name, activation):
    v = variables(name, activation=activation)
    assert_fused_matches_plain(v, ((False, True),))


@pytest.mark.parametrize("name", ["lstm", "gru", "forget-elman"])
def test_fused_rematerialised_chunks_equal_plain(name):
    v = variables(name)
    assert_fused_matches_plain(v, ((False, True),), chunk_size=3)


def test_fused_gradients_match_finite_differences():
    """float64, with a reset state (tests/test_gradients.py covers every cell on the default path)."""
    with jax.enable_x64(True):
        cell = make("lstm")
        xs = jax.random.normal(jax.random.key(1), (T, X))
        h0 = random_state(cell, 3)
        h_reset = random_state(cell, 4)
        readout = jax.random.normal(jax.random.key(2), (T, H))

        def loss(variables):
            cell_, xs_, h0_, h_reset_ = variables
            ys, final = recurrax.scan(cell_, xs_, h0_, starts=STARTS[2], mask=MASK[0], reset_state=h_reset_,
                                      reverse=True, fused=True)
            return jnp.sum(ys * readout) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree_util.tree_leaves(final))

        check_gradient(loss, (cell, xs, h0, h_reset))


def test_per_example_gradients_vmap_of_grad():
    """vmap of grad (per-example weight gradients) is right too: the carrier keeps them separate."""
    cell, xs, _, _ = variables("gru")

    def per_example(fused):
        def loss(c, x):
            return jnp.sum(recurrax.scan(c, x, fused=fused)[0] ** 2)

        return jax.jit(jax.vmap(eqx.filter_grad(loss), in_axes=(None, 0)))(cell, xs)

    fused, plain = per_example(True), per_example(False)
    assert fused.weight_hh.shape == (B,) + cell.weight_hh.shape
    assert_trees_close(fused, plain, 2e-5)


def test_layers_take_the_fused_path_and_match_the_plain_path():
    layer = recurrax.Bidirectional(make("lstm", 0), make("lstm", 1))
    xs = jax.random.normal(jax.random.key(1), (B, T, X))
    loss = lambda m: jnp.sum(jax.vmap(lambda x, s, k: m(x, starts=s, mask=k))(xs, STARTS, MASK) ** 2)  # noqa: E731
    value, grads = jax.jit(jax.value_and_grad(loss))(layer)
    assert "custom_vjp" in str(jax.make_jaxpr(loss)(layer))  # the layer runs fused by default
    with recurrax.fused.disabled():  # acts on tracing: a new function, not one traced before
        plain_loss = lambda m: loss(m)  # noqa: E731
        want, want_grads = jax.jit(jax.value_and_grad(plain_loss))(layer)
        assert "custom_vjp" not in str(jax.make_jaxpr(plain_loss)(layer))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert_trees_close(grads, want_grads, 2e-5)


def test_which_cells_run_fused():
    for name in ("elman", "forget-elman", "mgu", "gru", "lstm"):
        assert recurrax.fused.supports(make(name))
    assert not recurrax.fused.supports(make("linear"))  # no product in its loop: the plain loop is as fast

    class MyGRU(recurrax.GRU):
        pass

    assert not recurrax.fused.supports(MyGRU(X, H, key=jax.random.key(0)))  # a subclass may change step
    with pytest.raises(ValueError, match="no fused scan"):
        recurrax.scan(MyGRU(X, H, key=jax.random.key(0)), jnp.ones((T, X)), fused=True)
    with pytest.raises(ValueError, match="sequential"):
        recurrax.scan(make("linear"), jnp.ones((T, X)), mode="associative", fused=True)
    with pytest.raises(TypeError, match="fused"):
        recurrax.scan(make("gru"), jnp.ones((T, X)), fused="yes")


def test_higher_order_and_forward_mode_need_the_plain_path():
    cell = make("elman")
    xs = jax.random.normal(jax.random.key(1), (T, X))

    def loss(c, x, fused=None):
        return jnp.sum(recurrax.scan(c, x, fused=fused)[0] ** 2)

    with pytest.raises(NotImplementedError, match="first-order"):
        jax.grad(lambda x: jnp.sum(jax.grad(loss, 1)(cell, x) ** 2))(xs)
    hvp_plain = jax.grad(lambda x: jnp.sum(jax.grad(loss, 1)(cell, x, False) ** 2))(xs)
    with recurrax.fused.disabled():
        hvp = jax.grad(lambda x: jnp.sum(jax.grad(loss, 1)(cell, x) ** 2))(xs)
        _, tangent = jax.jvp(lambda x: loss(cell, x), (xs,), (jnp.ones_like(xs),))
    np.testing.assert_allclose(hvp, hvp_plain, rtol=1e-6)
    assert np.isfinite(tangent)


@pytest.fixture
def cpu_choices(monkeypatch):
    """The fused path's choices as on a CPU (where the tests run in CI; on a GPU every batch
    hoists), so that their code paths are tested on any platform."""
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")


@pytest.mark.parametrize("memory_kept", [False, True])
@pytest.mark.usefixtures("cpu_choices")
def test_where_the_input_projection_runs(monkeypatch, memory_kept):
    """Hoisted for one sequence and small batches; in the loop for large batches; in between, in
    the loop for GRU and LSTM with small input weights only, unless the process keeps the memory
    it frees or (LSTM) the projections are small."""
    monkeypatch.setattr(recurrax.fused, "freed_memory_kept", lambda: memory_kept)
    mid, large = recurrax.fused.LOOP_MIN_BATCH, recurrax.fused.LARGE_BATCH
    in_loop_at_mid = () if memory_kept else ("gru", "lstm")
    for name in ("elman", "forget-elman", "mgu", "gru", "lstm"):
        cell = make(name)
        assert not recurrax.fused.project_in_loop(cell, None)
        assert not recurrax.fused.project_in_loop(cell, 1)
        assert not recurrax.fused.project_in_loop(cell, mid - 1)
        assert recurrax.fused.project_in_loop(cell, large)
        assert recurrax.fused.project_in_loop(cell, mid) == (name in in_loop_at_mid)
    big_inputs = recurrax.LSTM(512, 512, key=jax.random.key(0))  # 512 x 2048 input weights
    assert not recurrax.fused.project_in_loop(big_inputs, mid)
    assert recurrax.fused.project_in_loop(big_inputs, large)
    # LSTM hoists at mid batches while its projections fit in HOISTED_BYTES.
    lstm, gru = make("lstm"), make("gru")
    fits = recurrax.fused.HOISTED_BYTES // (mid * 4 * H * 4)  # steps of 4H float32 gates that fit
    assert not recurrax.fused.project_in_loop(lstm, mid, fits)
    assert recurrax.fused.project_in_loop(lstm, mid, fits + 1) == (not memory_kept)
    assert recurrax.fused.project_in_loop(lstm, large, fits)
    assert recurrax.fused.project_in_loop(gru, mid, fits) == (not memory_kept)


def test_off_a_cpu_the_input_projection_is_hoisted():
    """On a GPU every batch hoists its projections (so no joint product either), at any length."""
    large = recurrax.fused.LARGE_BATCH
    for name in ("elman", "forget-elman", "mgu", "gru", "lstm"):
        for batch in (recurrax.fused.LOOP_MIN_BATCH, large, 4 * large):
            assert not recurrax.fused.project_in_loop(make(name), batch, 1000, platform="gpu")
        assert recurrax.fused.project_in_loop(make(name), large, 1000, platform="cpu")


def test_off_a_cpu_the_forward_loops_stack_their_outputs(monkeypatch):
    """GRU's forward loop reads each step ahead into carried buffers on a CPU; elsewhere it stacks
    its outputs with ``jax.lax.scan`` (:func:`recurrax.fused._loop`)."""
    used = []
    for helper in ("scan_prefetched", "scan_into_buffers"):
        original = getattr(recurrax.fused, helper)
        monkeypatch.setattr(recurrax.fused, helper,
                            lambda *a, _original=original, _helper=helper, **k: used.append(_helper) or _original(*a, **k))
    for platform in ("cpu", "gpu"):
        monkeypatch.setattr(jax, "default_backend", lambda: platform)
        used.clear()
        jax.make_jaxpr(jax.grad(batch_loss(True, ((False, False),))))(variables("gru"), STARTS, MASK)
        assert set(used) == ({"scan_prefetched", "scan_into_buffers"} if platform == "cpu" else set())


@pytest.mark.parametrize("name", ["mgu", "gru", "lstm"])
def test_the_forward_loops_off_a_cpu_equal_plain(monkeypatch, name):
    """With a GPU's choices (projections hoisted, outputs stacked, no read-ahead), the fused path
    equals the plain loop."""
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert_fused_matches_plain(variables(name), ((True, True), (False, False)))


@pytest.mark.parametrize("name", ["mgu", "gru", "lstm"])
def test_a_batch_of_states_over_one_shared_sequence_equals_plain(name):
    """vmap over initial states only (the inputs unbatched): the hoisted projection is then computed
    once for all, and values and gradients still equal the plain loop's."""
    cell, xs, h0, _ = variables(name)

    def loss(fused):
        def total(cell, x, h0):
            ys = jax.vmap(lambda h: recurrax.scan(cell, x, h, fused=fused)[0])(h0)
            return jnp.sum(jnp.sin(ys))

        return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))(cell, xs[0], h0)

    (value, grads), (want, want_grads) = loss(True), loss(False)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert_trees_close(grads, want_grads, 2e-5)


def test_nested_vmap_equals_plain():
    """vmap of vmap (e.g. several batches of sequences): the batched forward rule, which lays the
    projections out time-major, runs under a second vmap; values and gradients equal the plain loop's."""
    cell = make("lstm")
    xs = jax.random.normal(jax.random.key(1), (2, B, T, X))

    def loss(fused):
        def total(cell, xs):
            ys = jax.vmap(jax.vmap(lambda x: recurrax.scan(cell, x, fused=fused)[0]))(xs)
            return jnp.sum(jnp.sin(ys))

        return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(cell, xs)

    (value, grads), (want, want_grads) = loss(True), loss(False)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert_trees_close(grads, want_grads, 2e-5)


@pytest.mark.parametrize("name", ["elman", "forget-elman", "mgu", "gru", "lstm"])
def test_an_ensemble_vmapped_over_its_weights_equals_plain(name):
    """vmap over the cells' weights (an ensemble of B members), each member on its own sequence and
    all on one shared sequence, with starts and masks: each member projects its inputs with its own
    weights; values and gradients equal the plain loop's."""
    cells = eqx.filter_vmap(lambda k: make(name, k))(jnp.arange(B))
    xs = jax.random.normal(jax.random.key(1), (B, T, X))

    def loss(fused):
        def total(cells, xs):
            own = eqx.filter_vmap(lambda c, x, s, m: recurrax.scan(c, x, starts=s, mask=m, fused=fused)[0])
            shared = eqx.filter_vmap(lambda c: recurrax.scan(c, xs[0], reverse=True, fused=fused)[0])
            return jnp.sum(jnp.sin(own(cells, xs, STARTS, MASK))) + jnp.sum(jnp.cos(shared(cells)))

        return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(cells, xs)

    (value, grads), (want, want_grads) = loss(True), loss(False)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    assert_trees_close(grads, want_grads, 2e-5)


@pytest.mark.usefixtures("cpu_choices")
def test_which_inference_loops_take_one_product():
    """The inference loop joins the input and recurrent products for LSTM at large batches only."""
    mid, large = recurrax.fused.LOOP_MIN_BATCH, recurrax.fused.LARGE_BATCH
    lstm = make("lstm")
    assert recurrax.fused.joint_product(lstm, large)
    assert not recurrax.fused.joint_product(lstm, mid)
    assert not recurrax.fused.joint_product(lstm, None)
    assert not any(recurrax.fused.joint_product(make(name), large) for name in ("elman", "forget-elman", "mgu", "gru"))


@pytest.mark.parametrize("name", ["forget-elman", "gru", "lstm"])
@pytest.mark.usefixtures("cpu_choices")
def test_projection_in_the_loop_under_vmap_equals_plain(monkeypatch, name):
    """The tests' small batch hoists the projection; made to project in the loop, as large batches
    do (LSTM's inference loop then with one product per step), the fused path still equals the
    plain loop."""
    monkeypatch.setattr(recurrax.fused, "LOOP_MIN_BATCH", 1)
    monkeypatch.setattr(recurrax.fused, "LARGE_BATCH", 1)
    assert recurrax.fused.project_in_loop(make(name), B)
    assert recurrax.fused.joint_product(make(name), B) == (name == "lstm")
    assert_fused_matches_plain(variables(name), ((True, True),))


def test_long_sequences_are_rematerialised_by_default(monkeypatch):
    scan_module = importlib.import_module("recurrax.scan")
    assert scan_module.auto_chunk_size(100_000) == 250  # a divisor near 256: no shorter chunk left
    assert scan_module.auto_chunk_size(8209) == 256  # a prime
    monkeypatch.setattr(scan_module, "AUTO_CHUNK_LENGTH", 5)
    monkeypatch.setattr(scan_module, "DEFAULT_CHUNK_SIZE", 3)
    cell = make("lstm")
    xs = jax.random.normal(jax.random.key(1), (T, X))
    loss = lambda c, chunk_size=None: jnp.sum(recurrax.scan(c, xs, chunk_size=chunk_size)[0] ** 2)  # noqa: E731
    assert "remat" in str(jax.make_jaxpr(jax.grad(loss))(cell))
    assert "remat" not in str(jax.make_jaxpr(jax.grad(lambda c: loss(c, T)))(cell))
    assert_trees_close(jax.grad(loss)(cell), jax.grad(lambda c: loss(c, T))(cell), 2e-5)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_backward_writes_its_gradients_over_the_residuals(monkeypatch, name):
    """LSTM's and GRU's pre-activation gradients take the place of their saved gate values (4H
    numbers per step either way): the training step needs less scratch memory than with buffers
    of their own, by at least half the residuals' size (XLA's CPU compiler; a GPU's lays its
    buffers out otherwise: on an H100 the two differed by under 6 KiB)."""
    if jax.default_backend() != "cpu":
        pytest.skip("a claim about the scratch memory of XLA's CPU compiler")
    batch, length, hidden = 16, 64, 32
    cell = recurrax.get_cell_class(name)(hidden, hidden, key=jax.random.key(0))
    xs = jnp.ones((batch, length, hidden))

    def scratch():  # XLA's loops: the native ones (recurrax.native) keep their buffers apart
        step = jax.jit(jax.grad(lambda c: jnp.sum(jax.vmap(lambda x: recurrax.scan(c, x)[0])(xs))))
        with recurrax.native.disabled():
            return step.lower(cell).compile().memory_analysis().temp_size_in_bytes

    in_place = scratch()
    rule_for = recurrax.fused.rule_for
    monkeypatch.setattr(recurrax.fused, "rule_for", lambda c: rule_for(c)._replace(
        gradients_over_residuals=False, residuals_over_projections=False))
    residuals = batch * length * 4 * hidden * 4
    assert scratch() - in_place >= residuals / 2


def test_lstm_writes_its_gates_over_the_hoisted_projections(monkeypatch):
    """Where LSTM hoists its input projections (here: 16 sequences), the loop that saves the
    gates writes them over the projections: at least a quarter of a T x B x 4H buffer less scratch
    memory than with a buffer of their own (XLA's CPU compiler reuses some of that buffer later:
    here 26% of it is saved, 50% while the weight gradients' products copied their operands), and the
    same values and gradients as the plain loop (the other tests run this path at their small
    batches)."""
    if jax.default_backend() != "cpu":
        pytest.skip("a claim about the scratch memory of XLA's CPU compiler")
    batch, length, hidden = 16, 64, 32
    cell = recurrax.LSTM(hidden, hidden, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (batch, length, hidden))
    assert not recurrax.fused.project_in_loop(cell, batch, length)

    def loss(c, x):
        return jnp.sum(jnp.sin(jax.vmap(lambda s: recurrax.scan(c, s)[0])(x)))

    def scratch():  # XLA's loops: the native ones (recurrax.native) keep their buffers apart
        with recurrax.native.disabled():
            return jax.jit(jax.grad(loss)).lower(cell, xs).compile().memory_analysis().temp_size_in_bytes

    over = scratch()
    rule_for = recurrax.fused.rule_for
    monkeypatch.setattr(recurrax.fused, "rule_for", lambda c: rule_for(c)._replace(residuals_over_projections=False))
    gates = batch * length * 4 * hidden * 4
    assert scratch() - over >= gates / 4
    monkeypatch.undo()
    with recurrax.fused.disabled():
        want = jax.jit(jax.value_and_grad(loss))(cell, xs)
    with recurrax.native.disabled():
        got = jax.jit(jax.value_and_grad(loss))(cell, xs)
    assert_trees_close(got, want, 2e-5)


@pytest.mark.parametrize("name", ["elman", "forget-elman", "gru", "lstm"])
def test_a_sequence_cut_into_pieces_of_time_equals_plain(name):
    """Three pieces of 2, 3 and 2 steps (:func:`recurrax.fused.pieces`), each a fused scan of
    its own, the state carried: values and gradients of the plain loop, reversed and with starts,
    masks, initial and reset states."""
    with recurrax.fused.pieces(3):
        assert_fused_matches_plain(variables(name), ((True, True), (False, False)))


def test_how_many_pieces_of_time():
    """Pieces of about the rule's piece_steps (50 steps; 25 for GRU, MGU and ForgetElman) for
    batches of PIECE_MIN_BATCH sequences or more on a CPU, at most MAX_PIECES; one piece for
    smaller batches, one sequence, large recurrent matrices and off a CPU."""
    fused = recurrax.fused
    lstm, batch, steps = make("lstm"), fused.PIECE_MIN_BATCH, 50
    for name, count in (("elman", 4), ("forget-elman", 8), ("mgu", 8), ("gru", 8)):
        assert fused.time_pieces(make(name), batch, 4 * steps, platform="cpu") == count, name
    assert fused.time_pieces(lstm, batch, 4 * steps, platform="cpu") == 4
    assert fused.time_pieces(lstm, batch, 4 * steps + steps - 1, platform="cpu") == 4
    assert fused.time_pieces(lstm, 8 * batch, 100 * steps, platform="cpu") == fused.MAX_PIECES
    assert fused.time_pieces(lstm, batch, steps - 1, platform="cpu") == 1
    assert fused.time_pieces(lstm, batch - 1, 4 * steps, platform="cpu") == 1
    assert fused.time_pieces(lstm, None, 4 * steps, platform="cpu") == 1
    assert fused.time_pieces(lstm, batch, 4 * steps, platform="gpu") == 1
    wide = recurrax.LSTM(4, 256, key=jax.random.key(0))  # a 1024 x 256 recurrent matrix: PIECE_MAX_WEIGHTS
    assert fused.time_pieces(wide, batch, 4 * steps, platform="cpu") == 1
    assert fused.time_pieces(recurrax.GRU(4, 256, key=jax.random.key(0)), batch, 2 * steps, platform="cpu") == 4


@pytest.fixture
def piece_lengths(monkeypatch):
    """The lengths of the fused pieces traced from here on, in order."""
    lengths = []
    piece = recurrax.fused._fused_piece
    monkeypatch.setattr(recurrax.fused, "_fused_piece", lambda *a, **k: lengths.append(a[2].shape[0]) or piece(*a, **k))
    return lengths


def test_pieces_set_by_the_user_replace_the_choice_while_tracing(piece_lengths):
    """``recurrax.fused.pieces(n)`` gives every trace inside it n pieces (one sequence too, which
    gets one by itself), at most one a step; ``None`` and the block's end restore the choice."""
    cell, fused = make("lstm"), recurrax.fused
    xs = jnp.zeros((7, X))
    trace = lambda: jax.make_jaxpr(jax.grad(lambda c: jnp.sum(recurrax.scan(c, xs)[0])))(cell)  # noqa: E731
    with fused.pieces(3):
        trace()
        assert piece_lengths == [2, 3, 2]
        assert fused.time_pieces(cell, None, 2, platform="gpu") == 2  # every platform, at most a piece a step
        with fused.pieces(None):
            assert fused.time_pieces(cell, None, 7) == 1
        assert fused.time_pieces(cell, None, 7) == 3
    piece_lengths.clear()
    trace()
    assert piece_lengths == [7]


def test_the_switches_trace_again_a_function_jitted_before(piece_lengths):
    """jax.jit caches a function's trace; ``disabled()`` and ``pieces(n)`` are part of its key, so
    the same function jitted again under them is traced again (the plain loop; n pieces), and
    after the block the first trace serves again."""
    cell, xs = make("gru"), jnp.zeros((7, X))
    loss = lambda c, x: jnp.sum(recurrax.scan(c, x)[0])  # noqa: E731
    runs_fused = lambda: "custom_vjp" in str(jax.jit(loss).trace(cell, xs).jaxpr)  # noqa: E731
    assert runs_fused() and piece_lengths == [7]
    with recurrax.fused.disabled():
        assert not runs_fused()
    with recurrax.fused.pieces(3):
        assert runs_fused() and piece_lengths == [7, 2, 3, 2]
    assert runs_fused() and piece_lengths == [7, 2, 3, 2]


@pytest.mark.parametrize("count, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_pieces_must_be_a_positive_integer(count, error):
    with pytest.raises(error, match="pieces must be a positive integer"):
        with recurrax.fused.pieces(count):
            pass


@pytest.mark.usefixtures("cpu_choices")
def test_the_batch_that_vmap_maps_chooses_the_pieces(piece_lengths):
    """fused_scan reads the batch size from the vmap around it: a batch of PIECE_MIN_BATCH
    sequences of twice GRU's piece_steps runs as two pieces, one sequence as one."""
    cell = make("gru")
    steps = 2 * recurrax.fused.rule_for(cell).piece_steps
    xs = jnp.zeros((recurrax.fused.PIECE_MIN_BATCH, steps, X))
    loss = lambda c, x: jnp.sum(recurrax.scan(c, x)[0])  # noqa: E731
    jax.make_jaxpr(jax.grad(lambda c: jnp.sum(jax.vmap(lambda x: loss(c, x))(xs))))(cell)
    assert piece_lengths == [steps // 2, steps // 2]
    piece_lengths.clear()
    jax.make_jaxpr(jax.grad(loss))(cell, xs[0])
    assert piece_lengths == [steps]


@pytest.mark.usefixtures("cpu_choices")
def test_the_chunks_of_a_long_sequence_run_in_pieces_of_the_mapped_batch(piece_lengths):
    """Inside the chunks' loop (a lax.scan, traced before vmap batches it) the batch cannot be read from
    vmap; scan reads it outside and hands it on: chunks of twice LSTM's piece_steps of a batch of
    PIECE_MIN_BATCH sequences run as two pieces each, one sequence's chunks as one."""
    cell = make("lstm")
    steps = recurrax.fused.rule_for(cell).piece_steps
    xs = jnp.zeros((recurrax.fused.PIECE_MIN_BATCH, 4 * steps, X))
    loss = lambda c, x: jnp.sum(recurrax.scan(c, x, chunk_size=2 * steps)[0])  # noqa: E731
    jax.make_jaxpr(jax.grad(lambda c: jnp.sum(jax.vmap(lambda x: loss(c, x))(xs))))(cell)
    assert piece_lengths and set(piece_lengths) == {steps}
    piece_lengths.clear()
    jax.make_jaxpr(jax.grad(loss))(cell, xs[0])
    assert piece_lengths and set(piece_lengths) == {2 * steps}


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_rematerialised_chunks_in_pieces_of_time_equal_plain(monkeypatch, name):
    """Chunks of 3 steps (and a last one of 1), each cut into two pieces where a batch is mapped:
    values and gradients of the plain loop, reversed and with starts, masks, initial and reset states."""
    monkeypatch.setattr(recurrax.fused, "time_pieces",
                        lambda cell, batch, length, platform=None: 2 if batch and length > 1 else 1)
    assert_fused_matches_plain(variables(name), ((True, True),), chunk_size=3)
