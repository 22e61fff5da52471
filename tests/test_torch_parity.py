"""Parity with PyTorch: recurrax.interop against torch.nn.RNN / LSTM / GRU, forward and backward.

For every module kind (RNN tanh, RNN relu, LSTM, GRU), every combination of num_layers {1, 2},
bidirectional, batch_first and an initial state (given or not): outputs and final states match
torch's to 1e-5, and the gradients of a scalar loss with respect to the input, the initial state
and every torch parameter match torch's autograd to 1e-4. The gradients of the converted stack are
mapped back to torch's parameter names; a merged bias receives the gradient of both torch biases.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrax

torch = pytest.importorskip("torch")
from recurrax.interop import from_torch, to_torch, torch_style  # noqa: E402

torch.set_num_threads(1)

T, B, X, H = 5, 3, 4, 5
KINDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def make_torch(kind, num_layers=1, bidirectional=False, batch_first=False, bias=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    common = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias, **kwargs)
    if kind.startswith("rnn"):
        return torch.nn.RNN(X, H, nonlinearity=kind[4:], **common)
    return {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind](X, H, **common)


def inputs(module, with_state, seed=1):
    """x and hx (or None) in torch's layouts, as float32 numpy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, X) if module.batch_first else (T, B, X)).astype(np.float32)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    if not with_state:
        return x, None
    hx = [0.5 * rng.normal(size=(rows, B, H)).astype(np.float32) for _ in range(2 if isinstance(module, torch.nn.LSTM) else 1)]
    return x, (tuple(hx) if len(hx) == 2 else hx[0])


def run_torch(module, x, hx):
    t = lambda a: torch.from_numpy(a)
    if hx is None:
        return module(t(x))
    return module(t(x), tuple(map(t, hx)) if isinstance(hx, tuple) else t(hx))


def flat(tree):
    return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(tree)]


def assert_close(got, want, tol, what=""):
    got, want = flat(got), flat(want)
    assert len(got) == len(want), what
    for g, w in zip(got, want):
        assert g.shape == w.shape, (what, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=what)


def grads_by_torch_name(grad_stack, kind):
    """Gradients of a converted stack, keyed by torch's parameter names."""
    out = {}
    for l, layer in enumerate(grad_stack.layers):
        cells = [("", layer.cell)] if isinstance(layer, recurrax.Recurrent) else [
            ("", layer.forward.cell),
            ("_reverse", layer.backward.cell),
        ]
        for suffix, g in cells:
            name = f"l{l}{suffix}"
            out[f"weight_ih_{name}"] = g.weight_ih
            out[f"weight_hh_{name}"] = g.weight_hh
            # torch adds b_ih + b_hh wherever our merged bias appears: both get its gradient...
            out[f"bias_ih_{name}"] = g.bias
            out[f"bias_hh_{name}"] = g.bias
            if kind == "gru":  # ...except the n-gate recurrent bias, which sits inside r * (.)
                out[f"bias_hh_{name}"] = jnp.concatenate([g.bias[: 2 * H], g.bias_hn])
    return out


def loss_weights(out_shape, h_shapes, seed=2):
    """Random cotangents, so that every output and state entry matters to the loss."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=out_shape).astype(np.float32), [rng.normal(size=s).astype(np.float32) for s in h_shapes]


@eqx.filter_jit
def jax_loss_and_grads(fn, x, hx, w_out, w_h):
    """The loss, outputs and final state of ``fn(x, hx)``, and the loss's gradients w.r.t. (fn, x, hx)."""

    def loss(args):
        out, h_n = args[0](args[1], args[2])
        h_leaves = jax.tree_util.tree_leaves(h_n)
        value = jnp.sum(out * w_out) + sum(jnp.sum(h * w) for h, w in zip(h_leaves, w_h))
        return value, (out, h_n)

    (value, (out, h_n)), grads = eqx.filter_value_and_grad(loss, has_aux=True)((fn, x, hx))
    return value, out, h_n, grads


CONFIGS = list(itertools.product([1, 2], [False, True], [False, True], [False, True]))


@pytest.mark.parametrize("num_layers,bidirectional,batch_first,with_state", CONFIGS)
@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_gradients_match_torch(kind, num_layers, bidirectional, batch_first, with_state):
    module = make_torch(kind, num_layers, bidirectional, batch_first)
    x, hx = inputs(module, with_state)

    # torch: forward, then autograd of the same scalar loss
    xt = torch.from_numpy(x).requires_grad_(True)
    hxt = None
    if hx is not None:
        hxt = tuple(torch.from_numpy(h).requires_grad_(True) for h in hx) if isinstance(hx, tuple) else torch.from_numpy(hx).requires_grad_(True)
    out_t, h_t = module(xt, hxt) if hxt is not None else module(xt)
    h_t_leaves = list(h_t) if isinstance(h_t, tuple) else [h_t]
    w_out, w_h = loss_weights(tuple(out_t.shape), [tuple(h.shape) for h in h_t_leaves])
    loss_t = (out_t * torch.from_numpy(w_out)).sum() + sum((h * torch.from_numpy(w)).sum() for h, w in zip(h_t_leaves, w_h))
    loss_t.backward()

    fn = torch_style(from_torch(module), batch_first=batch_first)
    hx_j = None if hx is None else jax.tree_util.tree_map(jnp.asarray, hx)
    value, out, h_n, (g_fn, gx, ghx) = jax_loss_and_grads(fn, jnp.asarray(x), hx_j, w_out, w_h)

    # forward
    assert out.shape == tuple(out_t.shape)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert_close(h_n, [h.detach().numpy() for h in h_t_leaves], 1e-5, "final state")
    np.testing.assert_allclose(value, loss_t.item(), rtol=1e-5, atol=1e-5)

    # gradients w.r.t. every torch parameter
    by_name = grads_by_torch_name(g_fn.stack, kind)
    names = [name for name, _ in module.named_parameters()]
    assert sorted(by_name) == sorted(names)
    for name, param in module.named_parameters():
        np.testing.assert_allclose(by_name[name], param.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)

    # gradients w.r.t. the input and the initial state
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-4)
    if hx is not None:
        want = [h.grad.numpy() for h in (hxt if isinstance(hxt, tuple) else (hxt,))]
        assert_close(ghx, want, 1e-4, "initial state gradient")
