"""Bad input raises a clear error naming what was expected and what came."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax

X, H = 3, 4
KEY = jax.random.key(0)


@pytest.fixture
def layer():
    return recurrax.Recurrent(recurrax.GRU(X, H, key=KEY))


def test_wrong_feature_size(layer):
    with pytest.raises(ValueError, match=r"5 features per step but the layer expects input_size=3"):
        layer(jnp.ones((7, 5)))


def test_batched_input_suggests_vmap(layer):
    with pytest.raises(ValueError, match="vmap"):
        layer(jnp.ones((2, 7, X)))


def test_integer_inputs(layer):
    with pytest.raises(TypeError, match="floating-point.*int32"):
        layer(jnp.ones((7, X), jnp.int32))


def test_starts_and_mask_of_wrong_length(layer):
    with pytest.raises(ValueError, match=r"starts must have shape \(7,\).*\(6,\)"):
        layer(jnp.ones((7, X)), starts=np.zeros(6, bool))
    with pytest.raises(ValueError, match=r"mask must have shape \(7,\).*\(8,\)"):
        layer(jnp.ones((7, X)), mask=np.ones(8, bool))
    with pytest.raises(TypeError, match="mask must be a boolean"):
        layer(jnp.ones((7, X)), mask=np.ones(7, np.float32))


def test_wrong_state(layer):
    with pytest.raises(ValueError, match=r"state has a leaf of shape \(5,\), expected \(4,\)"):
        layer(jnp.ones((7, X)), jnp.zeros(5))
    lstm = recurrax.Recurrent(recurrax.LSTM(X, H, key=KEY))
    with pytest.raises(ValueError, match="state has structure"):
        lstm(jnp.ones((7, X)), jnp.zeros(H))
    with pytest.raises(TypeError, match="state has a leaf of dtype int32"):
        layer(jnp.ones((7, X)), jnp.zeros(H, jnp.int32))
    with pytest.raises(TypeError, match="complex leaf"):
        layer(jnp.ones((7, X)), jnp.zeros(H, jnp.complex64))


def test_real_initial_state_of_a_complex_state_cell_is_cast():
    """The LRU's state is complex; a real initial state means the same complex numbers."""
    lru = recurrax.Recurrent(recurrax.LRU(X, H, key=KEY), scan="sequential")
    h0 = np.linspace(-1.0, 1.0, lru.cell.init_state().shape[0]).astype(np.float32)
    xs = jnp.ones((5, X))
    ys, final = lru(xs, h0, return_state=True)
    want, want_final = lru(xs, h0.astype(np.complex64), return_state=True)
    np.testing.assert_allclose(ys, want)
    assert final.dtype == want_final.dtype == lru.cell.init_state().dtype


@pytest.mark.parametrize("sizes", [(0, 4), (3, -1), (3, 2.5), (True, 4)])
def test_non_positive_sizes(sizes):
    with pytest.raises((ValueError, TypeError), match="(input_size|hidden_size) must be a positive integer"):
        recurrax.LSTM(*sizes, key=KEY)


def test_unknown_activation_cell_scan_merge():
    with pytest.raises(ValueError, match="unknown activation 'gelu'; expected one of: tanh, sigmoid, relu, identity"):
        recurrax.Elman(X, H, activation="gelu", key=KEY)
    with pytest.raises(ValueError, match="unknown cell 'transformer'; expected one of: linear, elman"):
        recurrax.make_stack("transformer", X, H, key=KEY)
    with pytest.raises(ValueError, match="unknown scan 'parallel'"):
        recurrax.Recurrent(recurrax.GRU(X, H, key=KEY), scan="parallel")
    with pytest.raises(ValueError, match="unknown merge"):
        recurrax.make_stack("gru", X, H, bidirectional=True, merge="mean", key=KEY)


def test_stack_size_mismatch():
    a = recurrax.Recurrent(recurrax.GRU(X, H, key=KEY))
    b = recurrax.Recurrent(recurrax.GRU(H + 1, H, key=KEY))
    with pytest.raises(ValueError, match="layer 1 expects input_size=5 but layer 0 outputs 4"):
        recurrax.Stack([a, b])


def test_one_step_call_checks_shape_and_dtype():
    cell = recurrax.LSTM(X, H, key=KEY)
    with pytest.raises(ValueError, match=r"one step x of shape \(3,\)"):
        cell(cell.init_state(), jnp.ones((2, X)))
    with pytest.raises(TypeError, match="LSTM takes a floating-point step x, got dtype int32"):
        cell(cell.init_state(), jnp.ones(X, jnp.int32))


def test_empty_sequence(layer):
    with pytest.raises(ValueError, match="empty"):
        layer(jnp.ones((0, X)))


def test_inputs_wider_than_the_cell():
    """bfloat16 parameters and state with float32 inputs: each step would return a float32 state.
    Real inputs to a cell with a complex state (LRU) widen nothing."""
    gru = recurrax.GRU(X, H, key=KEY)
    narrow = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                                    gru)
    with pytest.raises(TypeError, match=r"xs has dtype float32, wider than the cell's bfloat16 state"):
        recurrax.scan(narrow, jnp.ones((5, X), jnp.float32))
    assert recurrax.scan(narrow, jnp.ones((5, X), jnp.bfloat16))[0].dtype == jnp.bfloat16
    lru = recurrax.get_cell_class("lru")(X, H, key=KEY)
    assert recurrax.scan(lru, jnp.ones((5, X), jnp.float32))[0].shape == (5, lru.output_size)


def test_bidirectional_state_must_be_a_pair():
    bi = recurrax.Bidirectional(recurrax.Recurrent(recurrax.GRU(X, H, key=KEY)),
                                recurrax.Recurrent(recurrax.GRU(X, H, key=jax.random.key(1))))
    with pytest.raises(ValueError, match=r"Bidirectional layer is a \(forward, backward\) pair.*shape \(4,\)"):
        bi(jnp.ones((5, X)), jnp.zeros(H))
    with pytest.raises(ValueError, match="reset_state of a Bidirectional layer"):
        bi(jnp.ones((5, X)), reset_state=jnp.zeros(H))


def test_token_ids_out_of_the_vocabulary():
    """An embedding lookup clamps ids silently; every entry point that takes ids refuses them."""
    from recurrax.lm.batches import token_nll
    from recurrax.lm.generate import generate
    from recurrax.lm.model import LanguageModel

    vocab = 5
    lm = LanguageModel("gru", vocab, 4, key=KEY)
    model = recurrax.SequenceModel("gru", vocab, 4, 2, input_kind="tokens", key=KEY)
    for bad, shown in ((np.array([1, 2, vocab]), vocab), (np.array([1, -1, 2]), -1)):
        message = rf"token ids must be in \[0, {vocab}\).*got {shown}"
        for call in (lambda ids: lm(ids), lambda ids: token_nll(lm, ids), lambda ids: generate(lm, ids, 2),
                     lambda ids: model(ids)):
            with pytest.raises(ValueError, match=message):
                call(bad)
    with pytest.raises(TypeError, match="must be integers, got dtype float32"):
        token_nll(lm, np.array([1.0, 2.0, 3.0], np.float32))
    with pytest.raises(ValueError, match=r"one text of token ids \(T,\), got shape \(2, 3\)"):
        token_nll(lm, np.ones((2, 3), int))


def test_unroll_and_mode_must_be_what_they_say():
    cell = recurrax.LinearRecurrence(X, H, key=KEY)
    xs = jnp.ones((4, X))
    for mode in ("sequential", "associative", "chunked"):
        with pytest.raises(ValueError, match="unroll must be a positive integer, got -1"):
            recurrax.scan(cell, xs, mode=mode, unroll=-1)
        with pytest.raises(TypeError, match="unroll must be a positive integer, got 2.0"):
            recurrax.scan(cell, xs, mode=mode, unroll=2.0)
    with pytest.raises(ValueError, match="unknown scan"):
        recurrax.Recurrent(cell, scan=np.array("associative"))
