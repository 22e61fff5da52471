"""BPTT strategies: full (against BPTT written out in NumPy), truncated, curriculum."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import recurrax
from recurrax.train.bptt import BPTT, batch_loss, make_update

X, H, O, T, B = 2, 5, 2, 8, 3


def regression_batch(seed=0, length=T):
    rng = np.random.default_rng(seed)
    return {
        "inputs": jnp.asarray(rng.normal(size=(B, length, X)), jnp.float32),
        "targets": jnp.asarray(rng.normal(size=(B, length, O)), jnp.float32),
        "mask": jnp.ones((B, length), bool),
    }


def model(cell="elman", **kw):
    return recurrax.SequenceModel(cell, X, H, O, key=jax.random.key(0), **kw)


def test_full_bptt_gradient_equals_numpy_bptt_through_the_unrolled_elman_network():
    """The tied weights get the sum over time steps of their per-step gradients."""
    with jax.enable_x64(True):
        m = model()
        batch = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, regression_batch())
        params, static = eqx.partition(m, eqx.is_inexact_array)
        grads = jax.grad(lambda p: batch_loss(p, static, batch, objective="per-step-mse", reduce="sum")[0])(params)

    cell = m.stack.layers[0].cell
    W_hx, W_hh, b = (np.asarray(a, np.float64) for a in (cell.weight_ih, cell.weight_hh, cell.bias))
    W_y, b_y = np.asarray(m.head.weight, np.float64), np.asarray(m.head.bias, np.float64)
    dW_hx, dW_hh, db, dW_y = np.zeros_like(W_hx), np.zeros_like(W_hh), np.zeros_like(b), np.zeros_like(W_y)
    for x, y in zip(np.asarray(batch["inputs"]), np.asarray(batch["targets"])):
        hs = [np.zeros(H)]
        for t in range(T):  # forward: h_t = tanh(W_hh h_{t-1} + W_hx x_t + b), ŷ_t = W_y h_t + b_y
            hs.append(np.tanh(W_hh @ hs[-1] + W_hx @ x[t] + b))
        delta_next = np.zeros(H)  # ∂L/∂a_{t+1}, a = pre-activation
        for t in reversed(range(T)):  # backward through time
            dy = 2 * (W_y @ hs[t + 1] + b_y - y[t]) / B
            dW_y += np.outer(dy, hs[t + 1])
            dh = W_y.T @ dy + W_hh.T @ delta_next
            delta = dh * (1 - hs[t + 1] ** 2)
            dW_hh += np.outer(delta, hs[t])
            dW_hx += np.outer(delta, x[t])
            db += delta
            delta_next = delta
    gcell = grads.stack.layers[0].cell
    np.testing.assert_allclose(gcell.weight_hh, dW_hh, rtol=1e-9)
    np.testing.assert_allclose(gcell.weight_ih, dW_hx, rtol=1e-9)
    np.testing.assert_allclose(gcell.bias, db, rtol=1e-9)
    np.testing.assert_allclose(grads.head.weight, dW_y, rtol=1e-9)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_curriculum_stage_gradient_equals_gradient_on_prefixes(bidirectional):
    m = model("gru", bidirectional=bidirectional)  # bidirectional: the steps after the prefix are unread
    params, static = eqx.partition(m, eqx.is_inexact_array)
    batch = regression_batch(1)
    stages = BPTT("curriculum", stride=3).stages(T)
    assert stages == [3, 6, 8]
    assert BPTT("curriculum", stride=3).stages(T, first_scored=5) == [6, 8]  # shorter prefixes score nothing
    # Compiled once each (the prefix's shape changes with k, so `direct` compiles once per k).
    masked_grad = jax.jit(jax.grad(
        lambda p, scored: batch_loss(p, static, {**batch, "mask": batch["mask"] & scored}, objective="per-step-mse",
                                     reduce="mean")[0]))
    direct_grad = jax.jit(jax.grad(lambda p, b: batch_loss(p, static, b, objective="per-step-mse", reduce="mean")[0]))
    scored_grad = jax.jit(jax.grad(
        lambda p, scored: batch_loss(p, static, batch, objective="per-step-mse", reduce="mean", scored=scored)[0]))
    for k in [1, 4, T]:
        scored = jnp.arange(T) < k
        masked = masked_grad(params, scored)
        direct = direct_grad(params, {name: a[:, :k] for name, a in batch.items()})
        via_scored = scored_grad(params, scored)
        for a, b, c in zip(*(jax.tree_util.tree_leaves(g) for g in (masked, direct, via_scored))):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
            np.testing.assert_allclose(c, b, rtol=2e-5, atol=1e-7)


def test_curriculum_update_applies_the_prefix_gradient():
    m = model("gru")
    params, static = eqx.partition(m, eqx.is_inexact_array)
    opt = optax.sgd(0.1)
    update = make_update(static, opt, "per-step-mse", "mean", BPTT("curriculum", stride=2))
    batch = regression_batch(2)
    new_params, _, _, metrics = update(params, opt.init(params), None, batch, jax.random.key(0), 4)
    prefix = {name: a[:, :4] for name, a in batch.items()}
    loss, grads = jax.value_and_grad(lambda p: batch_loss(p, static, prefix, objective="per-step-mse", reduce="mean")[0])(params)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    want = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_truncated_bptt_carries_state_without_gradient_and_resets_at_episode_starts():
    m = model("lstm")
    params, static = eqx.partition(m, eqx.is_inexact_array)
    batch = regression_batch(3, length=7)
    batch["starts"] = jnp.zeros((B, 7), bool).at[1, 5].set(True)
    opt = optax.sgd(0.05)
    update = make_update(static, opt, "per-step-mse", "sum", BPTT("truncated", chunk=3))
    new_params, _, carry, _ = update(params, opt.init(params), None, batch, jax.random.key(0), 1)

    # by hand: chunks [0:3], [3:6], [6:7]; each an SGD step from the carried state, no gradient into it
    p, state = params, None
    chunk_gradient = jax.jit(lambda p, chunk, carried: jax.value_and_grad(batch_loss, has_aux=True)(
        p, static, chunk, objective="per-step-mse", reduce="sum", carry=carried, reset_to_initial=True))
    for lo, hi in [(0, 3), (3, 6), (6, 7)]:
        chunk = {name: a[:, lo:hi] for name, a in batch.items()}
        (_, finals), grads = chunk_gradient(p, chunk, jax.lax.stop_gradient(state))
        p = jax.tree_util.tree_map(lambda a, g: a - 0.05 * g, p, grads)
        state = finals
    for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(p)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_reset_inside_a_chunk_goes_to_the_initial_state_not_the_carried_one():
    m = model("gru")
    x = jax.random.normal(jax.random.key(1), (6, X))
    carried = m.init_state()
    carried = (carried[0] + 3.0,)
    starts = jnp.zeros(6, bool).at[2].set(True)
    ys = m(x, carried, starts=starts, reset_state=m.init_state())
    fresh = m(x[2:])
    np.testing.assert_allclose(ys[2:], fresh, rtol=1e-5, atol=1e-6)


def test_truncated_with_last_step_objective_scores_only_the_final_chunk():
    m = recurrax.SequenceModel("gru", X, H, 1, readout="last", key=jax.random.key(0))
    params, static = eqx.partition(m, eqx.is_inexact_array)
    rng = np.random.default_rng(4)
    batch = {
        "inputs": jnp.asarray(rng.normal(size=(B, 7, X)), jnp.float32),
        "targets": jnp.asarray(rng.normal(size=(B, 1)), jnp.float32),
        "mask": jnp.ones((B, 7), bool),
    }
    opt = optax.sgd(0.1)
    update = make_update(static, opt, "last-mse", "sum", BPTT("truncated", chunk=4))
    new_params, _, _, metrics = update(params, opt.init(params), None, batch, jax.random.key(0), 1)
    _, state = batch_loss(params, static, {k: (v[:, :4] if k != "targets" else v) for k, v in batch.items()},
                          objective="last-mse", reduce="sum")
    tail = {k: (v[:, 4:] if k != "targets" else v) for k, v in batch.items()}
    loss, grads = jax.jit(jax.value_and_grad(
        lambda p: batch_loss(p, static, tail, objective="last-mse", reduce="sum", carry=state)[0]))(params)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_schedules_count_steps_when_truncated_bptt_updates_once_per_chunk():
    """Warmup then cosine over 6 steps of 4 updates each: update u uses the rate of step u // 4."""
    from recurrax.train.trainer import TrainConfig, make_optimizer

    steps, warmup, rate, per_step = 6, 2, 0.1, 4
    config = TrainConfig(steps=steps, learning_rate=rate, schedule="cosine", warmup=warmup, optimizer="sgd",
                         clip=None, bptt="truncated", chunk=2)
    assert config.strategy.updates_per_step(8, last_step=False) == per_step
    assert config.strategy.updates_per_step(8, last_step=True) == 1
    assert config.strategy.updates_per_step(7, last_step=False) == per_step  # the last chunk padded

    def schedule(step):  # written out: linear warmup from 0, then cosine decay to 0 at `steps`
        if step < warmup:
            return rate * step / warmup
        return rate * 0.5 * (1 + np.cos(np.pi * (step - warmup) / (steps - warmup)))

    opt = make_optimizer(config, per_step)
    param, state, velocity, want = jnp.zeros(()), None, 0.0, 0.0
    state = opt.init(param)
    for u in range(steps * per_step):  # gradient 1 at every update; SGD with momentum 0.9
        updates, state = opt.update(jnp.ones(()), state, param)
        param = optax.apply_updates(param, updates)
        velocity = 1.0 + 0.9 * velocity
        want -= schedule(u // per_step) * velocity
        np.testing.assert_allclose(param, want, rtol=1e-5, atol=1e-7)


def test_bad_strategies():
    with pytest.raises(ValueError, match="unknown bptt 'partial'"):
        BPTT("partial")
    with pytest.raises(ValueError, match="needs a chunk length"):
        BPTT("truncated")
    m = recurrax.SequenceModel("gru", X, H, 1, readout="last", key=jax.random.key(0))
    with pytest.raises(ValueError, match="scores only the last step"):
        make_update(eqx.partition(m, eqx.is_inexact_array)[1], optax.sgd(0.1), "last-mse", "sum", BPTT("curriculum"))


def test_truncated_last_step_reads_a_short_padded_sequence_at_its_own_last_step():
    """A sequence padded past the final chunk: the truncated update scores the same outputs as the
    full model (read at each sequence's last valid step), and its gradient reaches the recurrent
    weights: the full-BPTT gradient of the last 4 valid steps, the earlier ones carried in."""
    m = recurrax.SequenceModel("gru", X, H, 1, readout="last", key=jax.random.key(0))
    params, static = eqx.partition(m, eqx.is_inexact_array)
    rng = np.random.default_rng(5)
    lengths = np.array([12, 9, 5])
    batch = {
        "inputs": jnp.asarray(rng.normal(size=(B, 12, X)), jnp.float32),
        "targets": jnp.asarray(rng.normal(size=(B, 1)), jnp.float32),
        "mask": jnp.asarray(np.arange(12)[None] < lengths[:, None]),
    }
    full_loss, _ = batch_loss(params, static, batch, objective="last-mse", reduce="sum")
    opt = optax.sgd(0.1)
    update = make_update(static, opt, "last-mse", "sum", BPTT("truncated", chunk=4))
    new_params, _, _, metrics = update(params, opt.init(params), None, batch, jax.random.key(0), 1)
    np.testing.assert_allclose(metrics["loss"], full_loss, rtol=1e-6)

    def one_sequence_loss(p, b):  # this sequence alone, its last 4 valid steps differentiated
        n = lengths[b]
        head = {"inputs": batch["inputs"][b:b + 1, : n - 4], "mask": jnp.ones((1, n - 4), bool),
                "targets": batch["targets"][b:b + 1]}
        _, state = batch_loss(params, static, head, objective="last-mse", reduce="sum")
        tail = {"inputs": batch["inputs"][b:b + 1, n - 4 : n], "mask": jnp.ones((1, 4), bool),
                "targets": batch["targets"][b:b + 1]}
        return batch_loss(p, static, tail, objective="last-mse", reduce="sum", carry=jax.lax.stop_gradient(state))[0]

    grads = jax.jit(jax.grad(lambda p: sum(one_sequence_loss(p, b) for b in range(B)) / B))(params)
    want = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
    for a, b in zip(jax.tree_util.tree_leaves(new_params), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_truncated_with_a_chunk_longer_than_the_sequences_is_full_bptt_over_their_steps(monkeypatch):
    """One chunk of the sequences' 5 steps (no padded steps computed), and the update of full BPTT
    from the initial state."""
    import recurrax.train.bptt as bptt_module

    m = model("gru")
    params, static = eqx.partition(m, eqx.is_inexact_array)
    batch = regression_batch(3, length=5)
    opt = optax.sgd(0.05)
    lengths = []
    batch_loss_traced = bptt_module.batch_loss
    monkeypatch.setattr(bptt_module, "batch_loss",
                        lambda p, s, b, **k: lengths.append(b["mask"].shape[1]) or batch_loss_traced(p, s, b, **k))
    truncated = make_update(static, opt, "per-step-mse", "sum", BPTT("truncated", chunk=50))
    got = truncated(params, opt.init(params), None, batch, jax.random.key(0), 1)[0]
    assert lengths == [5]
    full = make_update(static, opt, "per-step-mse", "sum", BPTT("full"))
    want = full(params, opt.init(params), None, batch, jax.random.key(0), 5)[0]
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
