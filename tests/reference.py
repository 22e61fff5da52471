"""The cells' equations written out in plain NumPy, step by step: the tests' independent oracle."""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACT = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0), "sigmoid": sigmoid, "identity": lambda z: z}


def params(cell) -> dict[str, np.ndarray]:
    """A cell's parameter arrays as float64 NumPy arrays, by field name."""
    return {
        name: np.asarray(getattr(cell, name), np.float64)
        for name in ("weight_ih", "weight_hh", "weight_fh", "bias", "bias_hn", "weight", "decay_logit")
        if hasattr(cell, name)
    }


def elman_step(p, h, x, activation="tanh"):
    return ACT[activation](p["weight_hh"] @ h + p["weight_ih"] @ x + p["bias"])


def forget_elman_step(p, h, x, activation="tanh"):
    H = h.shape[0]
    w_fx, w_x = p["weight_ih"][:H], p["weight_ih"][H:]
    b_f, b = p["bias"][:H], p["bias"][H:]
    f = sigmoid(w_fx @ x + p["weight_fh"] @ h + b_f)
    return ACT[activation](w_x @ x + p["weight_hh"] @ (f * h) + b)


def mgu_step(p, h, x):
    H = h.shape[0]
    w_fx, w_x = p["weight_ih"][:H], p["weight_ih"][H:]
    b_f, b = p["bias"][:H], p["bias"][H:]
    f = sigmoid(w_fx @ x + p["weight_fh"] @ h + b_f)
    candidate = np.tanh(w_x @ x + p["weight_hh"] @ (f * h) + b)
    return (1 - f) * h + f * candidate


def gru_step(p, h, x):
    H = h.shape[0]
    wi, wh, b = p["weight_ih"], p["weight_hh"], p["bias"]
    r = sigmoid(wi[:H] @ x + wh[:H] @ h + b[:H])
    z = sigmoid(wi[H : 2 * H] @ x + wh[H : 2 * H] @ h + b[H : 2 * H])
    n = np.tanh(wi[2 * H :] @ x + b[2 * H :] + r * (wh[2 * H :] @ h + p["bias_hn"]))
    return (1 - z) * n + z * h


def lstm_step(p, state, x):
    h, c = state
    H = h.shape[0]
    z = p["weight_ih"] @ x + p["weight_hh"] @ h + p["bias"]
    i, f, g, o = sigmoid(z[:H]), sigmoid(z[H : 2 * H]), np.tanh(z[2 * H : 3 * H]), sigmoid(z[3 * H :])
    c = f * c + i * g
    return o * np.tanh(c), c


def linear_step(p, h, x):
    gamma = sigmoid(p["decay_logit"])
    return gamma * h + p["weight"] @ x + p["bias"]


def run(name, cell, xs, h0=None, starts=None, mask=None, reverse=False):
    """Run cell ``name`` over ``xs`` with the scan semantics written out by hand.

    Returns (ys, final_state) as NumPy arrays. ``starts`` resets to h0 before a step, masked steps
    keep the state and output zeros (and ignore their starts), ``reverse`` walks backwards and resets
    where it enters another episode.
    """
    p = params(cell)
    xs = np.asarray(xs, np.float64)
    T, H = xs.shape[0], cell.hidden_size
    act = getattr(cell, "activation", "tanh")
    is_lstm = name == "lstm"
    if h0 is None:
        h0 = (np.zeros(H), np.zeros(H)) if is_lstm else np.zeros(H)
    starts = np.zeros(T, bool) if starts is None else np.asarray(starts, bool)
    mask = np.ones(T, bool) if mask is None else np.asarray(mask, bool)
    step = {
        "elman": lambda h, x: elman_step(p, h, x, act),
        "forget-elman": lambda h, x: forget_elman_step(p, h, x, act),
        "mgu": lambda h, x: mgu_step(p, h, x),
        "gru": lambda h, x: gru_step(p, h, x),
        "lstm": lambda h, x: lstm_step(p, h, x),
        "linear": lambda h, x: linear_step(p, h, x),
    }[name]
    episode = np.cumsum(starts & mask)  # the episode of each step: valid starts delimit them
    order = range(T - 1, -1, -1) if reverse else range(T)
    h = h0
    ys = np.zeros((T, H))
    last = None  # the episode of the last valid step run
    for t in order:
        if not mask[t]:
            continue
        reset = (last is not None and episode[t] != last) if reverse else starts[t]
        if reset:
            h = h0
        last = episode[t]
        h = step(h, xs[t])
        ys[t] = h[0] if is_lstm else h
    return ys, h
