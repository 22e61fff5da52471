"""rows_matmul: a @ wᵀ whose weight gradient under jax.vmap is one 2-D product over all rows."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax
import recurrax._rows_matmul as rows
import recurrax.fused
from recurrax._rows_matmul import rows_matmul, weight_gradients_as_rows
from recurrax.lm.model import LanguageModel

BATCH, LENGTH, IN, OUT = 3, 5, 4, 6


def _data():
    a = np.asarray(jax.random.normal(jax.random.key(0), (BATCH, LENGTH, IN)))
    w = np.asarray(jax.random.normal(jax.random.key(1), (OUT, IN)))
    return a, w


def _loss_one(w, a_one):
    return jnp.sum(jnp.sin(rows_matmul(a_one, w)))


def _loss(w, a):
    return jnp.sum(jnp.sin(jax.vmap(rows_matmul, in_axes=(0, None))(a, w)))


def _per_sequence_reference(w, a):
    """The equations in NumPy: C_b = A_b Wᵀ, d sin(C)/dW = Σ_t cos(C_b)ᵀ A_b, per sequence b."""
    c = a @ w.T
    return np.einsum("btg,btk->bgk", np.cos(c), a), np.cos(c) @ w


def test_values_and_gradients_in_every_order_of_vmap_and_grad():
    a, w = _data()
    d_w, d_a = _per_sequence_reference(w, a)
    np.testing.assert_allclose(jax.vmap(rows_matmul, in_axes=(0, None))(a, w), a @ w.T, rtol=1e-5, atol=1e-5)
    # grad of a vmapped function: the 2-D product over all rows
    got_w, got_a = jax.jit(jax.grad(_loss, argnums=(0, 1)))(w, a)
    np.testing.assert_allclose(got_w, d_w.sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_a, d_a, rtol=1e-5, atol=1e-5)
    # per-example gradients (vmap of grad), and one sequence without vmap
    per_example = jax.jit(jax.vmap(jax.grad(_loss_one), in_axes=(None, 0)))(w, a)
    np.testing.assert_allclose(per_example, d_w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.grad(_loss_one)(w, a[1]), d_w[1], rtol=1e-5, atol=1e-5)
    # an ensemble: vmap over weights around grad of the batch
    ws = np.stack([w, 2 * w])
    ensemble = jax.vmap(jax.grad(_loss), in_axes=(0, None))(ws, a)
    np.testing.assert_allclose(ensemble[1], _per_sequence_reference(2 * w, a)[0].sum(0), rtol=1e-4, atol=1e-4)
    # inside a scan body under vmap (the batch unseen while tracing)
    def scanned(w, a):
        body = lambda carry, x: (carry, jnp.sin(rows_matmul(x, w)))  # noqa: E731
        return jnp.sum(jax.vmap(lambda s: jax.lax.scan(body, 0.0, s[None])[1])(a))

    np.testing.assert_allclose(jax.grad(scanned)(w, a), d_w.sum(0), rtol=1e-5, atol=1e-5)


def _dots(text):
    """The dot_generals of a StableHLO text: (lhs shape, contracting dims of lhs)."""
    pattern = r"stablehlo\.dot_general %\S+, %\S+,.*?contracting_dims = \[([\d, ]*)\] x .*?: \(tensor<([\dx]+)xf32>"
    return [(shape, dims) for dims, shape in re.findall(pattern, text)]


def test_weight_gradient_under_vmap_is_one_2d_product_over_all_rows():
    """grad of the vmapped product contracts the rows of two (B·T, ·) matrices, not the sequence
    and step axes of two 3-D arrays (which XLA's CPU compiler copies transposed); with the
    weight's gradient not wanted (stopped) there is no product for it."""
    a, w = _data()
    text = jax.jit(jax.grad(_loss)).lower(w, a).as_text()
    assert (f"{BATCH * LENGTH}x{OUT}", "0") in _dots(text), _dots(text)
    plain = jax.jit(jax.grad(lambda w, a: jnp.sum(jnp.sin(jax.vmap(lambda s: s @ w.T)(a))))).lower(w, a).as_text()
    assert (f"{BATCH}x{LENGTH}x{OUT}", "0, 1") in _dots(plain)  # what the plain product gives
    only_a = jax.jit(jax.grad(_loss, argnums=1)).lower(jax.lax.stop_gradient(w), a).as_text()
    assert all(dims != "0" for _, dims in _dots(only_a)), _dots(only_a)


def test_fused_lstm_weight_gradients_take_2d_products():
    """The fused LSTM's training step (native loops or XLA's) contracts no two axes of a 3-D array
    in its weight gradients' products."""
    cell = recurrax.LSTM(IN, 16, key=jax.random.key(0))
    a, _ = _data()

    def loss(c):
        return jnp.sum(jax.vmap(lambda s: recurrax.scan(c, s)[0])(a))

    with weight_gradients_as_rows(True):
        dots = _dots(jax.jit(jax.grad(loss)).lower(cell).as_text())
    assert not [d for d in dots if d[1] == "0, 1"], dots
    assert (f"{BATCH * LENGTH}x{4 * 16}", "0") in dots, dots


@pytest.mark.parametrize("make", [lambda key: recurrax.LSTM(IN, 16, key=key),
                                  lambda key: recurrax.GRU(IN, 16, key=key),
                                  lambda key: recurrax.LinearRecurrence(IN, 16, key=key)])
def test_fused_gradients_equal_the_plain_scan_with_either_product(make):
    """The recurrent scans' products (gate_matmul) as 2-D products or as XLA's products of the
    batched arrays: the programs differ as said, the gradients equal the plain scan's."""
    cell = make(jax.random.key(0))
    a, _ = _data()

    def loss(c):
        return jnp.sum(jnp.sin(jax.vmap(lambda s: recurrax.scan(c, s)[0])(a)))

    with recurrax.fused.disabled():
        want = jax.grad(loss)(cell)
    for as_rows in (True, False):
        with weight_gradients_as_rows(as_rows):
            got = jax.grad(loss)(cell)
            dots = _dots(jax.jit(jax.grad(loss)).lower(cell).as_text())
        assert any(d[1] == "0" for d in dots) == as_rows, (as_rows, dots)
        for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_the_2d_product_is_the_default_but_on_amd_processors_under_the_cpu_backend(monkeypatch):
    monkeypatch.setattr(rows, "_amd_processor", lambda: True)
    assert rows.rows_pay() == (jax.default_backend() != "cpu")
    monkeypatch.setattr(rows, "_amd_processor", lambda: False)
    assert rows.rows_pay()
    with weight_gradients_as_rows(False):
        assert not rows._as_rows()
    assert rows._as_rows()


def test_second_order_derivatives_pass_through():
    """jax.hessian (forward over reverse) of the vmapped product matches the equations: for
    L(W) = Σ sin(A Wᵀ), ∂²L/∂W_gk∂W_hl = -δ_gh Σ_{b,t} sin(C_btg) A_btk A_btl."""
    a, w = _data()
    hessian = jax.hessian(_loss)(w, a)
    c = a @ w.T
    block = -np.einsum("btg,btk,btl->gkl", np.sin(c), a, a)
    expected = np.zeros((OUT, IN, OUT, IN))
    for g in range(OUT):
        expected[g, :, g, :] = block[g]
    np.testing.assert_allclose(hessian, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jacfwd(_loss)(w, a), _per_sequence_reference(w, a)[0].sum(0), rtol=1e-5, atol=1e-5)


def test_heads_weight_gradients_take_2d_products():
    """A head (y_t = W h_t + b) and a language model's softmax read out of a vmapped batch: their
    weights' gradients (against the equations in NumPy) come from one 2-D product over all rows."""
    hs, _ = _data()
    head = recurrax.Head(IN, OUT, key=jax.random.key(2))

    def head_loss(head):
        return jnp.sum(jnp.sin(jax.vmap(head)(hs)))

    w, b = np.asarray(head.weight), np.asarray(head.bias)
    head_grad = jax.jit(jax.grad(head_loss))
    got = head_grad(head)
    np.testing.assert_allclose(got.weight, np.einsum("btg,btk->gk", np.cos(hs @ w.T + b), hs), rtol=1e-5, atol=1e-5)
    assert (f"{BATCH * LENGTH}x{OUT}", "0") in _dots(head_grad.lower(head).as_text())

    lm = LanguageModel("lstm", OUT, 8, key=jax.random.key(3))
    tokens = jax.random.randint(jax.random.key(4), (BATCH, LENGTH), 0, OUT)
    lm_loss = lambda lm: jnp.sum(jnp.sin(jax.vmap(lm)(tokens)))  # noqa: E731
    hidden = np.asarray(jax.vmap(lambda s: lm.hidden(s)[0])(tokens))
    logits = hidden @ np.asarray(lm.output_weight).T + np.asarray(lm.output_bias)
    lm_grad = jax.jit(jax.grad(lm_loss))
    got = lm_grad(lm)
    np.testing.assert_allclose(got.output_weight, np.einsum("btv,bth->vh", np.cos(logits), hidden), rtol=1e-4, atol=1e-5)
    assert (f"{BATCH * LENGTH}x{OUT}", "0") in _dots(lm_grad.lower(lm).as_text())
