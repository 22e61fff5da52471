"""Every classic cell against its equations written out in NumPy, step by step."""

import jax
import numpy as np
import pytest

import recurrax
from reference import run

T, X, H = 6, 3, 4


def make(name, key=0, **kwargs):
    return recurrax.get_cell_class(name)(X, H, key=jax.random.key(key), **kwargs)


def test_scan_matches_numpy_equations(cell_name):
    cell = make(cell_name)
    xs = jax.random.normal(jax.random.key(1), (T, X))
    ys, final = recurrax.scan(cell, xs)
    ref_ys, ref_final = run(cell_name, cell, xs)
    np.testing.assert_allclose(ys, ref_ys, rtol=1e-5, atol=1e-5)
    for got, want in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(ref_final)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "identity"])
@pytest.mark.parametrize("name", ["elman", "forget-elman"])
def test_activation_choice_matches_numpy(name, activation):
    cell = make(name, activation=activation)
    xs = jax.random.normal(jax.random.key(2), (T, X))
    ys, _ = recurrax.scan(cell, xs)
    np.testing.assert_allclose(ys, run(name, cell, xs)[0], rtol=1e-5, atol=1e-5)


def test_one_step_call_matches_numpy(cell_name):
    cell = make(cell_name)
    x = jax.random.normal(jax.random.key(3), (X,))
    state, y = cell(cell.init_state(), x)
    ref_ys, _ = run(cell_name, cell, x[None])
    np.testing.assert_allclose(y, ref_ys[0], rtol=1e-5, atol=1e-6)


def test_lstm_forget_bias_starts_at_one():
    cell = make("lstm")
    np.testing.assert_array_equal(cell.bias[H : 2 * H], np.ones(H))
    np.testing.assert_array_equal(np.delete(np.asarray(cell.bias), np.s_[H : 2 * H]), np.zeros(3 * H))


def test_linear_recurrence_decay_in_unit_interval():
    gamma = np.asarray(make("linear").decay)
    assert np.all((gamma > 0.5 - 1e-6) & (gamma < 0.99 + 1e-6))


def test_cells_are_registered_by_name():
    classic = {"linear", "elman", "forget-elman", "mgu", "gru", "lstm"}
    linear = {"lru", "mingru", "minlstm", "s6", "rglru", "ffm", "linear-attention", "gated-deltanet"}
    assert set(recurrax.CELLS) == classic | linear
    assert recurrax.get_cell_class("LSTM") is recurrax.LSTM
    assert recurrax.get_cell_class("LinearRecurrence") is recurrax.LinearRecurrence  # class names too
    assert recurrax.get_cell_class("forgetelman") is recurrax.ForgetElman
    with pytest.raises(ValueError, match="unknown cell 'linear_recurrence'"):
        recurrax.get_cell_class("linear_recurrence")
