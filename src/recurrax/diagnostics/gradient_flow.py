r"""The vanishing gradient made visible: how much a loss at the last step feels each earlier state.

For a cell :math:`h_t = f(h_{t-1}, x_t)` and a loss :math:`L_T = \ell(h_T)` at the last step only,
backpropagation through time gives

.. math::  \frac{\partial L_T}{\partial h_t}
           = \frac{\partial L_T}{\partial h_T} \prod_{s=t+1}^{T} \frac{\partial h_s}{\partial h_{s-1}},

a product of T − t Jacobians. When their norms stay below one, :math:`\lVert \partial L_T /
\partial h_t \rVert` shrinks geometrically with the distance T − t (Hochreiter, 1991; Bengio,
Simard & Frasconi, 1994; Pascanu, Mikolov & Bengio, 2013). At initialisation the Elman network's
gradient falls by about 10^-25 over 100 steps; the LSTM's additive cell, its forget gate near
sigmoid(1) ≈ 0.73, keeps it near 10^-7; the GRU and MGU, gates near 1/2, only a few orders of
magnitude better than Elman; the diagonal linear recurrence (decays up to 0.99) best of all.

:func:`gradient_norms` computes the whole curve t = 1..T exactly, in one backward pass: the scan
adds a zero perturbation after every step, :math:`h_t = f(h_{t-1}, x_t) + \delta_t`, and since
:math:`\partial L_T / \partial \delta_t = \partial L_T / \partial h_t`, the gradient with respect
to all the :math:`\delta_t` at once is the gradient with respect to every state.
:func:`gradient_flow` averages the curves of several cells over initialisations and inputs;
:func:`format_table` and :func:`write_report` present them.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from .. import _checks
from ..cells import CELLS, Cell, get_cell_class

Component = Literal["state", "h"]
COMPONENTS = ("state", "h")
TABLE_POINTS = (0, 10, 50, 100, 199)


def _hidden(state: Any) -> jax.Array:
    """The hidden vector h of a state: the state itself, or its first part for tuple states (LSTM's (h, c))."""
    return state[0] if isinstance(state, (tuple, list)) else state


def _unit_vector(hidden_size: int) -> np.ndarray:
    u = np.random.default_rng(0).standard_normal(hidden_size)
    return u / np.linalg.norm(u)


def _loss_vector(state: Any) -> jax.Array:
    """What the default loss reads of a state: its hidden vector h where it has one (a real vector,
    or the first part of a tuple such as LSTM's (h, c)); else every entry of the state, real and
    imaginary parts apart (matrix memories such as S6's or linear attention's, complex states)."""
    h = _hidden(state)
    if h.ndim == 1 and not jnp.iscomplexobj(h):
        return h
    parts = []
    for leaf in jax.tree_util.tree_leaves(state):
        parts.extend([leaf.real, leaf.imag] if jnp.iscomplexobj(leaf) else [leaf])
    return jnp.concatenate([part.ravel() for part in parts])


def _loss_size(cell: Cell) -> int:
    """The length of :func:`_loss_vector` of the cell's state."""
    return jax.eval_shape(lambda: _loss_vector(cell.init_state())).shape[0]


def _projection_loss(u: jax.Array) -> Callable[[Any], jax.Array]:
    return lambda state: jnp.dot(u, _loss_vector(state))


@functools.lru_cache(maxsize=None)
def default_loss(size: int, dtype: Any = jnp.float32) -> Callable[[Any], jax.Array]:
    r"""The default last-step loss :math:`\ell(h_T) = u^\top h_T` with a fixed random unit vector u
    of ``size`` entries.

    u is drawn once from ``numpy.random.default_rng(0)`` (normal, then normalised), so
    :math:`\lVert \partial L_T / \partial h_T \rVert = 1` and every curve starts at 1 at the last
    step. For the cells whose step outputs their hidden vector h (the classic cells, minGRU,
    RG-LRU) this is a loss on the last output; for cells whose state is a matrix memory or complex
    (S6, linear attention, gated DeltaNet, FFM, LRU) u reads every entry of the state
    (:func:`_loss_vector`). A random direction avoids favouring any unit. The same arguments return
    the same function, so compiled gradient computations are reused.
    """
    return _projection_loss(jnp.asarray(_unit_vector(size), dtype))


@eqx.filter_jit
def _norms(cell: Cell, xs: jax.Array, loss_fn: Callable[[Any], jax.Array], component: Component) -> jax.Array:
    """‖∂L_T/∂h_t‖ for t = 1..T as a JAX array."""
    ps = jax.vmap(cell.project)(xs)
    h0 = cell.init_state()
    length = xs.shape[0]

    def loss_of_perturbations(deltas):
        def body(h, inputs):
            p, delta = inputs
            h_new, _ = cell.step(h, p)
            return jax.tree_util.tree_map(jnp.add, h_new, delta), None

        h_last, _ = jax.lax.scan(body, h0, (ps, deltas))
        return loss_fn(h_last)

    zeros = jax.tree_util.tree_map(lambda h: jnp.zeros((length,) + h.shape, h.dtype), h0)
    grads = jax.grad(loss_of_perturbations)(zeros)
    parts = [_hidden(grads)] if component == "h" else jax.tree_util.tree_leaves(grads)
    entries = jnp.concatenate([jnp.abs(g.reshape(length, -1)) for g in parts], axis=1)
    # Scaled by each step's largest entry: squares of entries below sqrt(tiny) (1e-19 in float32,
    # 1e-154 in float64) would underflow to 0 long before the gradient itself does.
    scale = jnp.max(entries, axis=1)
    safe = jnp.where(scale > 0, scale, 1.0)
    return scale * jnp.sqrt(jnp.sum((entries / safe[:, None]) ** 2, axis=1))


def gradient_norms(
    cell: Cell,
    xs: Any,
    loss_fn: Callable[[Any], jax.Array] | None = None,
    *,
    component: Component = "state",
) -> np.ndarray:
    r"""The norms :math:`\lVert \partial L_T / \partial h_t \rVert` for t = 1..T, shape (T,).

    ``xs`` is one input sequence (T, input_size); the cell runs from its initial state.
    ``loss_fn(h_T)`` maps the final state to the scalar :math:`L_T` (default:
    :func:`default_loss`). For tuple states (the LSTM's (h, c)) ``component="state"`` takes the
    norm over the full state, :math:`\sqrt{\lVert \partial L/\partial h_t \rVert^2 + \lVert
    \partial L/\partial c_t \rVert^2}`, and ``component="h"`` over h only; for other cells both
    are the same. Entry t − 1 is step t, so the last entry is the last step.

    Computed exactly by one backward pass (see the module docstring), in the cell's dtype, and
    compiled once per cell type, shapes, ``loss_fn`` object and ``component`` (pass the same
    ``loss_fn`` object to reuse it). float32 underflows near 1e-38, which an Elman network reaches
    within one to two hundred steps: build the cell under ``jax.enable_x64(True)`` to follow the
    curve further.
    """
    _checks.choice("component", component, COMPONENTS)
    dtype = jnp.finfo(_hidden(cell.init_state()).dtype).dtype  # float64 for a complex128 state
    xs = _checks.sequence(jnp.asarray(xs, dtype), cell.input_size)
    loss_fn = default_loss(_loss_size(cell), np.dtype(dtype)) if loss_fn is None else loss_fn
    return np.asarray(_norms(cell, xs, loss_fn, component))


@eqx.filter_jit
def _seed_norms(
    cls: type[Cell], input_size: int, hidden_size: int, batch: int, length: int, keys: jax.Array, u: jax.Array,
    component: Component,
) -> jax.Array:
    """Curves (S, B, T): for each key, a cell and ``batch`` input sequences drawn from it; default loss."""

    def per_seed(key):
        k_cell, k_x = jax.random.split(key)
        cell = cls(input_size, hidden_size, key=k_cell)
        xs = jax.random.normal(k_x, (batch, length, input_size))
        return jax.vmap(lambda x: _norms(cell, x, _projection_loss(u), component))(xs)

    return jax.vmap(per_seed)(keys)


def gradient_flow(
    cell_names: Sequence[str],
    length: int,
    *,
    hidden_size: int = 64,
    input_size: int = 8,
    seeds: Sequence[int] = (0, 1, 2, 3),
    batch: int = 8,
    component: Component = "state",
) -> dict[str, np.ndarray]:
    r"""Mean gradient-norm curve of each cell: ``{name: (length,) array}``, entry t − 1 for step t.

    For each seed s, ``k_cell, k_x = jax.random.split(jax.random.key(s))``: a cell is initialised
    from ``k_cell`` and ``batch`` input sequences :math:`x_t \sim N(0, I)` of shape
    (``length``, ``input_size``) are drawn from ``k_x``; the curves of
    :func:`gradient_norms` (default loss) over all seeds × inputs are averaged **geometrically**,
    :math:`\exp(\overline{\log \lVert \partial L_T / \partial h_t \rVert})`: the norms span tens of
    orders of magnitude, and an arithmetic mean would follow the single slowest-decaying sample.

    Runs in float64 (``jax.enable_x64``) so that curves decaying below float32's range stay
    measurable (to about 1e-308; where any sample's gradient falls below that, the mean is 0);
    one compiled function per cell type, vectorised over seeds and inputs.
    """
    cell_names = _checks.names("cell", cell_names, tuple(CELLS))
    length = _checks.positive_int("length", length)
    _checks.positive_int("batch", batch)
    if not seeds:
        raise ValueError("gradient_flow needs at least one seed")
    _checks.choice("component", component, COMPONENTS)
    curves = {}
    with jax.enable_x64(True):
        keys = jnp.stack([jax.random.key(int(seed)) for seed in seeds])
        for name in cell_names:
            cls = get_cell_class(name)
            size = _loss_size(jax.eval_shape(lambda: cls(input_size, hidden_size, key=jax.random.key(0))))
            u = jnp.asarray(_unit_vector(size), jnp.float64)
            norms = _seed_norms(cls, input_size, hidden_size, batch, length, keys, u, component)
            with np.errstate(divide="ignore"):  # a norm of 0 (below float64's range) makes the mean 0
                curves[name] = np.exp(np.log(np.asarray(norms)).reshape(-1, length).mean(0))
    return curves


def _distances(curves: dict[str, np.ndarray]) -> int:
    """The common length T of the curves."""
    if not curves:
        raise ValueError("no curves given")
    lengths = {len(c) for c in curves.values()}
    if len(lengths) != 1:
        raise ValueError(f"all curves must have the same length, got lengths {sorted(lengths)}")
    return lengths.pop()


def format_table(curves: dict[str, np.ndarray], points: Sequence[int] = TABLE_POINTS) -> str:
    r"""A text table of each curve at several distances T − t from the last step.

    Distances beyond the curve (≥ T) are dropped. The last column is the ratio
    :math:`\lVert \partial L_T/\partial h_1 \rVert / \lVert \partial L_T/\partial h_T \rVert`,
    the far end over the last step.
    """
    length = _distances(curves)
    points = [k for k in points if 0 <= k < length]
    name_width = max([len("cell")] + [len(n) for n in curves])
    header = ["cell".ljust(name_width)] + [f"T-t={k}".rjust(10) for k in points] + ["far/near".rjust(10)]
    lines = ["  ".join(header)]
    for name, curve in curves.items():
        row = [name.ljust(name_width)] + [f"{curve[length - 1 - k]:10.2e}" for k in points]
        lines.append("  ".join(row + [f"{curve[0] / curve[-1]:10.2e}"]))
    return "\n".join(lines)


def write_report(curves: dict[str, np.ndarray], out_dir: str | Path, *, stem: str = "gradient_flow") -> dict[str, Path]:
    """Write ``{stem}.csv``, ``{stem}.png`` and ``{stem}.txt`` into ``out_dir``; returns their paths.

    The CSV has a column ``t`` holding the distance from the last step T − t (0 = last step) and
    one column per cell; the PNG plots the same with a logarithmic y axis; the text file holds
    :func:`format_table`.
    """
    length = _distances(curves)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out / f"{stem}.csv", "png": out / f"{stem}.png", "table": out / f"{stem}.txt"}
    distance = np.arange(length)

    with open(paths["csv"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t"] + list(curves))
        for k in distance:
            writer.writerow([k] + [f"{curve[length - 1 - k]:.6e}" for curve in curves.values()])

    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for name, curve in curves.items():
        ax.plot(distance, curve[::-1], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("distance from the last step, T − t")
    ax.set_ylabel(r"$\Vert \partial L_T / \partial h_t \Vert$")
    ax.set_title("Gradient flow through time")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths["png"], dpi=120)

    paths["table"].write_text(format_table(curves) + "\n")
    return paths
