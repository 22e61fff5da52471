"""Deep stacks, bidirectional layers and heads against their definitions written out by hand."""

import equinox as eqx
import jax
import numpy as np
import pytest

import recurrax
from reference import run

X, H, T = 3, 4, 6


def test_deep_stack_is_layers_applied_in_turn():
    net = recurrax.make_stack("gru", X, H, num_layers=3, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, X))
    ys, finals = net(xs, return_state=True)
    hs = np.asarray(xs)
    for layer, final in zip(net.layers, finals):
        hs, h_last = run("gru", layer.cell, hs)
        np.testing.assert_allclose(final, h_last, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ys, hs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("merge", ["concat", "sum"])
def test_bidirectional_concatenates_forward_and_reversed_runs(merge):
    layer = recurrax.Bidirectional(
        recurrax.LSTM(X, H, key=jax.random.key(0)), recurrax.LSTM(X, H, key=jax.random.key(1)), merge=merge
    )
    xs = jax.random.normal(jax.random.key(2), (T, X))
    fwd = run("lstm", layer.forward.cell, xs)[0]
    bwd = run("lstm", layer.backward.cell, xs, reverse=True)[0]
    bwd_by_flipping = run("lstm", layer.backward.cell, np.asarray(xs)[::-1])[0][::-1]
    np.testing.assert_allclose(bwd, bwd_by_flipping, rtol=1e-12)
    want = np.concatenate([fwd, bwd], -1) if merge == "concat" else fwd + bwd
    np.testing.assert_allclose(layer(xs), want, rtol=1e-5, atol=1e-6)
    assert layer.output_size == want.shape[-1]


def test_deep_bidirectional_stack_reads_both_directions():
    net = recurrax.make_stack("elman", X, H, num_layers=2, bidirectional=True, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, X))
    first = np.concatenate(
        [run("elman", net.layers[0].forward.cell, xs)[0], run("elman", net.layers[0].backward.cell, xs, reverse=True)[0]], -1
    )
    second = np.concatenate(
        [run("elman", net.layers[1].forward.cell, first)[0], run("elman", net.layers[1].backward.cell, first, reverse=True)[0]],
        -1,
    )
    np.testing.assert_allclose(net(xs), second, rtol=1e-5, atol=1e-6)
    assert net.layers[1].input_size == 2 * H and net.output_size == 2 * H


def test_stack_streaming_equals_stack_scan():
    net = recurrax.make_stack("lstm", X, H, num_layers=2, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, X))
    ys = net(xs)
    state = net.init_state()
    step = eqx.filter_jit(net.step)
    outs = []
    for x in xs:
        state, y = step(state, x)
        outs.append(y)
    np.testing.assert_allclose(np.stack(outs), ys, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cannot stream"):
        recurrax.make_stack("gru", X, H, bidirectional=True, key=jax.random.key(0)).step(None, xs[0])


def test_dropout_acts_between_layers_only_with_a_key():
    net = recurrax.make_stack("gru", X, H, num_layers=2, dropout=0.5, key=jax.random.key(0))
    xs = jax.random.normal(jax.random.key(1), (T, X))
    np.testing.assert_array_equal(net(xs), net(xs))
    a, b = net(xs, key=jax.random.key(1)), net(xs, key=jax.random.key(2))
    assert not np.allclose(a, b)
    # with dropout on the first layer's output, the second layer sees a masked, rescaled input
    key = jax.random.key(3)
    k0 = jax.random.split(key, 2)[0]
    keep = np.asarray(jax.random.bernoulli(k0, 0.5, (T, H)))
    h1 = run("gru", net.layers[0].cell, xs)[0]
    want = run("gru", net.layers[1].cell, np.where(keep, h1 / 0.5, 0.0))[0]
    np.testing.assert_allclose(net(xs, key=key), want, rtol=1e-5, atol=1e-5)


def test_head_reads_state_and_optionally_input():
    hs = jax.random.normal(jax.random.key(0), (T, H))
    xs = jax.random.normal(jax.random.key(1), (T, X))
    head = recurrax.Head(H, 2, key=jax.random.key(2))
    np.testing.assert_allclose(head(hs), np.asarray(hs) @ np.asarray(head.weight).T + head.bias, rtol=1e-5, atol=1e-6)
    recall = recurrax.Head(H, 2, input_size=X, activation="sigmoid", key=jax.random.key(3))
    z = np.concatenate([hs, xs], -1) @ np.asarray(recall.weight).T + np.asarray(recall.bias)
    np.testing.assert_allclose(recall(hs, xs), 1 / (1 + np.exp(-z)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="reads the inputs"):
        recall(hs)


def test_last_step_head_reads_the_last_valid_step():
    hs = jax.random.normal(jax.random.key(0), (T, H))
    head = recurrax.Head(H, 2, key=jax.random.key(2))
    np.testing.assert_allclose(head.last(hs), head(hs)[-1], rtol=1e-6)
    mask = np.array([1, 1, 1, 1, 0, 0], bool)
    np.testing.assert_allclose(head.last(hs, mask=mask), head(hs)[3], rtol=1e-6)


def test_last_step_readout_of_a_bidirectional_model_reads_each_direction_where_it_has_seen_everything():
    """readout="last", bidirectional, padded at both ends: g([→h at the last valid step; ←h at the
    first valid step]), each direction run over the valid steps only, by hand."""
    model = recurrax.SequenceModel("gru", X, H, 2, bidirectional=True, readout="last", key=jax.random.key(0))
    xs = np.asarray(jax.random.normal(jax.random.key(1), (T, X)))
    mask = np.array([0, 1, 1, 1, 1, 0], bool)
    layer = model.stack.layers[0]
    fwd = run("gru", layer.forward.cell, xs[mask])[0][-1]
    bwd = run("gru", layer.backward.cell, xs[mask], reverse=True)[0][0]
    want = np.concatenate([fwd, bwd]) @ np.asarray(model.head.weight).T + np.asarray(model.head.bias)
    np.testing.assert_allclose(model(xs, mask=mask), want, rtol=1e-5, atol=1e-6)
    changed = xs.copy()
    changed[1] += 1.0  # the first valid step reaches the backward half of the readout
    assert not np.allclose(model(changed, mask=mask), model(xs, mask=mask))
    with pytest.raises(ValueError, match=r"backward_size must be in \[0, 8\]"):
        model.head.last(np.zeros((T, 2 * H)), backward_size=9)


def test_dropout_of_a_one_layer_model_acts_on_the_top_outputs():
    """One layer, dropout 0.5, identity head: each output entry is 0 or twice the layer's output
    (inverted dropout on the top layer's outputs), and both occur; no key, no dropout."""
    model = recurrax.SequenceModel("gru", X, H, H, dropout=0.5, key=jax.random.key(0))
    model = eqx.tree_at(lambda m: (m.head.weight, m.head.bias), model, (np.eye(H, dtype=np.float32),
                                                                       np.zeros(H, np.float32)))
    xs = np.asarray(jax.random.normal(jax.random.key(1), (T, X)))
    hs = run("gru", model.stack.layers[0].cell, xs)[0]
    np.testing.assert_allclose(model(xs), hs, rtol=1e-5, atol=1e-6)
    dropped = np.asarray(model(xs, key=jax.random.key(2)))
    kept = np.isclose(dropped, 2 * hs, rtol=1e-5, atol=1e-6)
    assert (kept | (dropped == 0)).all() and 0 < kept.sum() < kept.size


def test_layer_type_errors():
    cell = recurrax.LSTM(X, H, key=jax.random.key(0))
    with pytest.raises(TypeError, match=r"layer 0 is a LSTM \(wrap a cell: Recurrent\(LSTM\(...\)\)\)"):
        recurrax.Stack([cell])
    with pytest.raises(TypeError, match="got a LSTM instance"):
        recurrax.make_stack(cell, X, H, key=jax.random.key(0))
    with pytest.raises(ValueError, match="dropout must be a number in"):
        recurrax.Stack([recurrax.Recurrent(cell)], dropout=None)
    with pytest.raises(ValueError, match=r"this head reads hs of shape \(T, 3\), got shape \(6, 4\)"):
        recurrax.Head(3, 2, key=jax.random.key(0))(np.zeros((T, 4)))
    with pytest.raises(ValueError, match="embed_size must be a positive integer"):
        recurrax.SequenceModel("gru", 5, H, 2, input_kind="tokens", embed_size=0, key=jax.random.key(0))
