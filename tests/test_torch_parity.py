"""Parity with PyTorch: recurrax.interop against torch.nn.RNN / LSTM / GRU, forward and backward.

For every module kind (RNN tanh, RNN relu, LSTM, GRU), with num_layers 1 and 2, bidirectional or
not, batch_first both ways, with and without an initial state (and one module without biases per
kind): outputs and final states match torch's to 1e-5, and the gradients of a scalar loss with
respect to the input, the initial state and every torch parameter match torch's autograd to 1e-4.
The gradients of the converted stack are mapped back to torch's parameter names; a merged bias
receives the gradient of both torch biases.

Every case compiles one program (forward and gradients together), so the grid is a covering set
of 24 cases rather than the full product (see ``STRUCTURES`` and ``_batch_first``); the other
tests reuse those programs or compile none.
"""

from __future__ import annotations

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
    parts = 2 if isinstance(module, torch.nn.LSTM) else 1  # LSTM: (h_0, c_0)
    hx = [0.5 * rng.normal(size=(rows, B, H)).astype(np.float32) for _ in range(parts)]
    return x, (tuple(hx) if parts == 2 else hx[0])


def run_torch(module, x, hx):
    t = lambda a: torch.from_numpy(a)
    if hx is None:
        return module(t(x))
    return module(t(x), tuple(map(t, hx)) if isinstance(hx, tuple) else t(hx))


@eqx.filter_jit
def call(fn, x, hx=None):
    """``fn(x, hx)`` compiled as one program (eagerly, every layer's scan would compile on its own)."""
    return fn(x, hx)


def torch_outputs(module, x, hx=None):
    with torch.no_grad():
        out, h = run_torch(module, x, hx)
    return out.numpy(), [t.numpy() for t in (h if isinstance(h, tuple) else (h,))]


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


# (num_layers, bidirectional, initial state given): every layout with an initial state (the state's
# rows must land in the right layer and direction), and two without.
STRUCTURES = [(1, False, True), (1, True, True), (2, False, True), (2, True, True), (1, False, False), (2, True, False)]


def _batch_first(k, num_layers, bidirectional, with_state):
    # batch_first alternates so that, within each kind, it takes both values with every number of
    # layers, with and without bidirectional, with and without an initial state.
    return bool((num_layers == 2) ^ (bidirectional and with_state) ^ with_state ^ (k % 2))


def _configs():
    out = []
    for k, kind in enumerate(KINDS):
        for num_layers, bidirectional, with_state in STRUCTURES:
            batch_first = _batch_first(k, num_layers, bidirectional, with_state)
            # One case per kind converts a module without biases (same program, zero biases).
            bias = not (num_layers == 1 and not bidirectional and not with_state)
            out.append(pytest.param(
                kind, num_layers, bidirectional, batch_first, with_state, bias,
                id=f"{kind}-L{num_layers}-{'bi' if bidirectional else 'uni'}-{'bf' if batch_first else 'tf'}"
                f"-{'hx' if with_state else 'nohx'}{'' if bias else '-nobias'}",
            ))
    return out


def check_against_torch(module, fn, kind, with_state):
    """``fn`` (torch_style) against ``module``: outputs, final states and all gradients."""
    x, hx = inputs(module, with_state)

    # torch: forward, then autograd of a scalar loss of the outputs and final states
    xt = torch.from_numpy(x).requires_grad_(True)
    hxt = None if hx is None else jax.tree_util.tree_map(lambda h: torch.from_numpy(h).requires_grad_(True), hx)
    out_t, h_t = module(xt) if hxt is None else module(xt, hxt)
    h_t_leaves = list(h_t) if isinstance(h_t, tuple) else [h_t]
    w_out, w_h = loss_weights(tuple(out_t.shape), [tuple(h.shape) for h in h_t_leaves])
    loss_t = (out_t * torch.from_numpy(w_out)).sum()
    loss_t = loss_t + sum((h * torch.from_numpy(w)).sum() for h, w in zip(h_t_leaves, w_h))
    loss_t.backward()

    # recurrax: the same, in one compiled program
    hx_j = None if hx is None else jax.tree_util.tree_map(jnp.asarray, hx)
    value, out, h_n, (g_fn, gx, ghx) = jax_loss_and_grads(fn, jnp.asarray(x), hx_j, w_out, w_h)

    # forward: outputs and final states (h_n, or (h_n, c_n)) in torch's layouts
    assert out.shape == tuple(out_t.shape)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert isinstance(h_n, tuple) == (kind == "lstm")
    assert_close(h_n, [h.detach().numpy() for h in h_t_leaves], 1e-5, "final state")
    np.testing.assert_allclose(value, loss_t.item(), rtol=1e-5, atol=1e-5)

    # gradients w.r.t. every torch parameter, the input and the initial state
    by_name = grads_by_torch_name(g_fn.stack, kind)
    expected = set(by_name) if module.bias else {n for n in by_name if not n.startswith("bias")}
    assert {name for name, _ in module.named_parameters()} == expected
    for name, param in module.named_parameters():
        np.testing.assert_allclose(by_name[name], param.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg="input gradient")
    if hx is not None:
        want = [h.grad.numpy() for h in jax.tree_util.tree_leaves(hxt)]
        assert_close(ghx, want, 1e-4, "initial state gradient")


@pytest.mark.parametrize("kind,num_layers,bidirectional,batch_first,with_state,bias", _configs())
def test_forward_and_gradients_match_torch(kind, num_layers, bidirectional, batch_first, with_state, bias):
    module = make_torch(kind, num_layers, bidirectional, batch_first, bias=bias)
    stack = from_torch(module)
    if not bias:
        for layer in stack.layers:
            for name in ("bias", "bias_hn"):
                if hasattr(layer.cell, name):
                    np.testing.assert_array_equal(getattr(layer.cell, name), 0.0)
    check_against_torch(module, torch_style(stack, batch_first=batch_first), kind, with_state)


@pytest.mark.parametrize("kind", KINDS)
def test_to_torch_of_a_recurrax_stack(kind):
    """A stack built in recurrax, with arbitrary weights (GRU bias_hn included), matches its torch module.

    The configuration is one of the grid's (2 layers, bidirectional, initial state), so the compiled
    program is reused.
    """
    cell = {"rnn_tanh": "elman", "rnn_relu": "elman", "lstm": "lstm", "gru": "gru"}[kind]
    extra = {"activation": kind[4:]} if kind.startswith("rnn") else {}
    shapes = jax.eval_shape(
        lambda: recurrax.make_stack(cell, X, H, num_layers=2, bidirectional=True, key=jax.random.key(3), **extra)
    )
    rng = np.random.default_rng(3)  # arbitrary values everywhere (cheaper than running the initialisers)
    stack = jax.tree_util.tree_map(lambda s: jnp.asarray(rng.uniform(-0.6, 0.6, s.shape).astype(np.float32)), shapes)
    batch_first = _batch_first(KINDS.index(kind), 2, True, True)
    module = to_torch(stack, batch_first=batch_first)
    check_against_torch(module, torch_style(stack, batch_first=batch_first), kind, with_state=True)


# ---------------------------------------------------------------------------------------------
# conversions (torch only: no compilation)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
def test_round_trip_gives_same_outputs(kind, num_layers, bidirectional):
    module = make_torch(kind, num_layers, bidirectional, dropout=0.25 if num_layers > 1 else 0.0).eval()
    back = to_torch(from_torch(module), batch_first=True).eval()
    assert type(back) is type(module)
    assert back.batch_first and back.num_layers == num_layers and back.bidirectional == bidirectional
    assert back.dropout == module.dropout
    if kind.startswith("rnn"):
        assert back.nonlinearity == module.nonlinearity
    x, hx = inputs(module, with_state=True)
    want_out, want_h = torch_outputs(module, x, hx)
    got_out, got_h = torch_outputs(back, np.ascontiguousarray(np.swapaxes(x, 0, 1)), hx)
    np.testing.assert_allclose(np.swapaxes(got_out, 0, 1), want_out, rtol=1e-5, atol=1e-5)
    assert_close(got_h, want_h, 1e-5, "final state")
    # the merged bias sits in bias_ih; bias_hh is zero except a GRU's n-gate part
    b_hh = back.bias_hh_l0.detach().numpy()
    np.testing.assert_array_equal(b_hh[: 2 * H], 0.0)
    if kind == "gru":
        np.testing.assert_array_equal(b_hh[2 * H :], module.bias_hh_l0.detach().numpy()[2 * H :])
    else:
        np.testing.assert_array_equal(b_hh, 0.0)


def test_from_torch_structure():
    module = make_torch("gru", num_layers=2, bidirectional=True, dropout=0.5)
    stack = from_torch(module)
    assert isinstance(stack, recurrax.Stack) and stack.dropout == 0.5
    assert all(isinstance(layer, recurrax.Bidirectional) and layer.merge == "concat" for layer in stack.layers)
    assert all(layer.forward.scan == "sequential" for layer in stack.layers)
    assert stack.input_size == X and stack.output_size == 2 * H and stack.layers[1].input_size == 2 * H
    cell = stack.layers[1].backward.cell
    np.testing.assert_array_equal(cell.weight_hh, module.weight_hh_l1_reverse.detach().numpy())
    np.testing.assert_array_equal(cell.bias_hn, module.bias_hh_l1_reverse.detach().numpy()[2 * H :])
    for leaf in jax.tree_util.tree_leaves(stack):
        assert isinstance(leaf, jax.Array) and leaf.dtype == jnp.float32

    rnn = make_torch("rnn_relu", num_layers=1).double()  # float64 weights arrive as float32
    (layer,) = from_torch(rnn).layers
    assert isinstance(layer.cell, recurrax.Elman) and layer.cell.activation == "relu"
    assert layer.cell.weight_ih.dtype == jnp.float32


def test_unbatched_input():
    module = make_torch("lstm", num_layers=2, bidirectional=True)
    x, hx = inputs(module, with_state=True)
    x1, hx1 = x[:, 0], tuple(h[:, 0] for h in hx)  # one sequence (T, F), states (L*D, H)
    out, (h_n, c_n) = call(torch_style(from_torch(module)), jnp.asarray(x1), tuple(map(jnp.asarray, hx1)))
    want_out, want_h = torch_outputs(module, x1, hx1)
    assert out.shape == want_out.shape == (T, 2 * H) and h_n.shape == (4, H)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    assert_close((h_n, c_n), want_h, 1e-5, "final state")


# ---------------------------------------------------------------------------------------------
# errors


def test_from_torch_rejects_projected_lstm():
    with pytest.raises(ValueError, match="proj_size"):
        from_torch(torch.nn.LSTM(X, H, proj_size=2))


@pytest.mark.parametrize("module", [torch.nn.Linear(X, H), torch.nn.RNNCell(X, H), torch.nn.LSTMCell(X, H)])
def test_from_torch_rejects_other_modules(module):
    with pytest.raises(TypeError, match=r"torch\.nn\.RNN, torch\.nn\.LSTM and torch\.nn\.GRU"):
        from_torch(module)


def _keys():
    return jax.random.split(jax.random.key(0), 3)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda k: recurrax.Stack([recurrax.Recurrent(recurrax.GRU(X, H, key=k[0])),
                                    recurrax.Bidirectional(recurrax.GRU(H, H, key=k[1]), recurrax.GRU(H, H, key=k[2]))]),
         "all layers Recurrent or all layers Bidirectional"),
        (lambda k: recurrax.Stack([recurrax.Recurrent(recurrax.GRU(X, H, key=k[0])),
                                    recurrax.Recurrent(recurrax.LSTM(H, H, key=k[1]))]),
         "one cell type"),
        (lambda k: recurrax.make_stack("mgu", X, H, key=k[0]), "MGU has no torch.nn counterpart"),
        (lambda k: recurrax.make_stack("elman", X, H, activation="sigmoid", key=k[0]), "'tanh' and 'relu'"),
        (lambda k: recurrax.Stack([recurrax.Recurrent(recurrax.Elman(X, H, key=k[0])),
                                    recurrax.Recurrent(recurrax.Elman(H, H, activation="relu", key=k[1]))]),
         "one Elman activation"),
        (lambda k: recurrax.Stack([recurrax.Recurrent(recurrax.LSTM(X, H, key=k[0])),
                                    recurrax.Recurrent(recurrax.LSTM(H, H + 1, key=k[1]))]),
         "one hidden size"),
        (lambda k: recurrax.make_stack("gru", X, H, bidirectional=True, merge="sum", key=k[0]), "merge='concat'"),
        (lambda k: recurrax.Stack([recurrax.Recurrent(recurrax.GRU(X, H, key=k[0]), reverse=True)]), "reversed"),
    ],
    ids=["mixed-layers", "mixed-cells", "mgu", "sigmoid", "mixed-activations", "mixed-sizes", "merge-sum", "reversed"],
)
def test_to_torch_rejects_unconvertible_stacks(build, match):
    stack = jax.eval_shape(lambda: build(_keys()))  # the structure is all that matters here
    with pytest.raises(ValueError, match=match):
        to_torch(stack)


def test_to_torch_rejects_non_stacks():
    with pytest.raises(ValueError, match="recurrax.Stack"):
        to_torch(jax.eval_shape(lambda: recurrax.Recurrent(recurrax.LSTM(X, H, key=jax.random.key(0)))))


def test_torch_style_checks_its_arguments():
    fn = torch_style(from_torch(make_torch("lstm", num_layers=2)))
    x = jnp.zeros((T, B, X))
    with pytest.raises(ValueError, match="pair"):
        fn(x, jnp.zeros((2, B, H)))
    with pytest.raises(ValueError, match=r"\(num_layers \* num_directions, batch, hidden_size\)"):
        fn(x, (jnp.zeros((1, B, H)), jnp.zeros((1, B, H))))
    with pytest.raises(ValueError, match="shape"):
        fn(jnp.zeros((1, T, B, X)))
    with pytest.raises(ValueError, match="unbatched"):
        fn(jnp.zeros((T, X)), (jnp.zeros((2, B, H)), jnp.zeros((2, B, H))))
    with pytest.raises(TypeError, match="Stack"):
        torch_style(jax.eval_shape(lambda: recurrax.Recurrent(recurrax.LSTM(X, H, key=jax.random.key(0)))))
