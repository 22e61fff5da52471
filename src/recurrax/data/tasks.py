r"""Synthetic sequence tasks generated from a seed: adding, copy, moving ball.

A :class:`Task` describes a problem (sizes, objective, metric, the score of a trivial predictor)
and draws data with ``task.generate(split, n, seed)``, which returns a :class:`SequenceData`:

* ``inputs``: (N, T, F) float32 feature vectors, or (N, T) int32 token ids (``input_kind``).
* ``targets``: by ``objective``,

  - ``"per-step-mse"``: (N, T, O) float32, a regression target at every step;
  - ``"last-mse"``: (N, O) float32, a regression target read at the last valid step;
  - ``"per-step-xent"``: (N, T) int32 class labels at every step;
  - ``"last-xent"``: (N,) int32 class labels read at the last valid step.

* ``mask``: (N, T) bool, the valid (non-padding) steps; all true for these fixed-length tasks.
* ``loss_mask``: (N, T) bool, the steps whose output is scored. For per-step objectives it
  selects the steps that enter the loss (only the recall steps of ``copy``; targets elsewhere are
  0 and meaningless); for last-step objectives it marks the last valid step.

Generation is NumPy only and deterministic: the generator is seeded from ``(seed, split index)``,
so the same arguments give the same data, and each split and seed an independent stream.
:meth:`Task.score` computes the task's metric from a model's outputs (predictions, or logits for
cross-entropy objectives), and ``task.baseline_outputs(data)`` gives the trivial predictor's
outputs, whose expected score is ``baseline_metric``: a model has learned something only when it
beats it.

>>> from recurrax.data.tasks import get_task
>>> task = get_task("adding", length=50)
>>> data = task.generate("train", 4, seed=0)
>>> data.inputs.shape, data.targets.shape
((4, 50, 2), (4, 1))
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from .. import _checks

SPLITS = ("train", "valid", "test")
OBJECTIVES = ("per-step-mse", "last-mse", "per-step-xent", "last-xent")
METRICS = {"mse": ("per-step-mse", "last-mse"), "accuracy": ("per-step-xent", "last-xent")}
"""Each metric and the objectives it scores."""
INPUT_KINDS = ("vectors", "tokens")

Sampler = Callable[[np.random.Generator, int], "SequenceData"]


@dataclass(frozen=True)
class SequenceData:
    """One split of a task: arrays with the examples along the first axis (see module docstring)."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    loss_mask: np.ndarray

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def length(self) -> int:
        """Number of steps T."""
        return self.inputs.shape[1]


@dataclass(frozen=True)
class Task:
    """A synthetic sequence task: its sizes, objective, metric and a sampler of examples.

    ``input_size`` is the number of features per step, or the vocabulary size for token inputs;
    ``output_size`` the number of regression outputs or classes. ``baseline_metric`` is the
    (expected) ``metric`` of the trivial predictor whose outputs ``baseline_outputs(data)`` returns
    (laid out as a model's, see :meth:`score`). ``options`` records the options the task was built
    with; ``sampler(rng, n)`` draws ``n`` examples (use :meth:`generate`).
    """

    name: str
    input_size: int
    output_size: int
    input_kind: Literal["vectors", "tokens"]
    objective: Literal["per-step-mse", "last-mse", "per-step-xent", "last-xent"]
    metric: Literal["mse", "accuracy"]
    description: str
    baseline_metric: float
    options: dict[str, Any]
    sampler: Sampler = field(repr=False, compare=False)
    baseline_outputs: Callable[[SequenceData], np.ndarray] = field(repr=False, compare=False)

    def __post_init__(self):
        _checks.choice("input_kind", self.input_kind, INPUT_KINDS)
        _checks.choice("objective", self.objective, OBJECTIVES)
        _checks.choice("metric", self.metric, tuple(METRICS))
        if self.objective not in METRICS[self.metric]:
            raise ValueError(f"metric {self.metric!r} does not score objective {self.objective!r}")

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger ``metric`` is better (accuracy) or worse (mse)."""
        return self.metric == "accuracy"

    def generate(self, split: str, n: int, seed: int) -> SequenceData:
        """``n`` examples of ``split`` (``"train"``, ``"valid"`` or ``"test"``) drawn from ``seed``.

        Deterministic: the generator is ``np.random.default_rng((seed, split index))``.
        """
        _checks.choice("split", split, SPLITS)
        n = _checks.positive_int("n", n)
        _checks.seed(seed)
        return self.sampler(np.random.default_rng((int(seed), SPLITS.index(split))), n)

    def score(self, outputs: Any, data: SequenceData) -> float:
        """The task's ``metric`` of a model's ``outputs`` on ``data``.

        ``outputs`` are predictions shaped like the targets for MSE objectives, and logits with a
        trailing class axis ((N, T, O) or (N, O)) for cross-entropy objectives, scored by argmax.
        Per-step objectives average over the steps of ``loss_mask`` (and over output features).
        """
        outputs = np.asarray(outputs)
        accuracy = self.metric == "accuracy"
        expected = data.targets.shape + ((self.output_size,) if accuracy else ())
        if outputs.shape != expected:
            raise ValueError(f"{self.name} outputs must have shape {expected}, got {outputs.shape}")
        if accuracy:
            per_item = (np.argmax(outputs, -1) == data.targets).astype(np.float64)
        else:
            per_item = (outputs.astype(np.float64) - data.targets) ** 2
            if self.objective == "per-step-mse":
                per_item = per_item.mean(-1)
        if self.objective.startswith("per-step"):
            return float(per_item[data.loss_mask].mean())
        return float(per_item.mean())


def _last_step_mask(n: int, length: int) -> np.ndarray:
    mask = np.zeros((n, length), bool)
    mask[:, -1] = True
    return mask


def _int_option(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _float_option(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def adding(*, length: int = 100) -> Task:
    r"""The adding problem (Hochreiter & Schmidhuber, 1997; in the form of Le et al., 2015).

    Each step carries two features: a value :math:`v_t \sim U[0, 1]` and a marker
    :math:`m_t \in \{0, 1\}`. Exactly two steps are marked, one uniformly in the first half
    :math:`[0, \lfloor T/2 \rfloor)` and one in the second half; the target, read at the last step,
    is :math:`y = \sum_t m_t v_t`. Objective ``"last-mse"``.

    Baseline: always predicting 1 (the mean of y) scores MSE = Var(v₁ + v₂) = 2/12 = 1/6 ≈ 0.167.
    The long-range difficulty is the distance between the markers and the end, up to T steps.
    """
    length = _int_option("length", length, 2)

    def sample(rng: np.random.Generator, n: int) -> SequenceData:
        half = length // 2
        values = rng.random((n, length))
        first = rng.integers(0, half, n)
        second = rng.integers(half, length, n)
        markers = np.zeros((n, length))
        markers[np.arange(n), first] = 1.0
        markers[np.arange(n), second] = 1.0
        inputs = np.stack([values, markers], -1).astype(np.float32)
        targets = (values * markers).sum(1, keepdims=True).astype(np.float32)
        return SequenceData(inputs, targets, np.ones((n, length), bool), _last_step_mask(n, length))

    return Task(
        name="adding",
        input_size=2,
        output_size=1,
        input_kind="vectors",
        objective="last-mse",
        metric="mse",
        description=f"sum the two marked values among {length} uniform values; read at the last step",
        baseline_metric=1.0 / 6.0,
        options={"length": length},
        sampler=sample,
        baseline_outputs=lambda data: np.ones_like(data.targets),
    )


def copy(*, n_symbols: int = 10, alphabet: int = 8, delay: int = 20) -> Task:
    r"""The copy (recall) task over a controllable delay (Hochreiter & Schmidhuber, 1997; Arjovsky et al., 2016).

    Token ids: symbols ``0 .. alphabet-1``, ``blank = alphabet``, ``go = alphabet + 1`` (so
    ``input_size = alphabet + 2``). A sequence of length :math:`T = 2K + D + 1` is

    .. code-block:: text

        s_1 .. s_K | blank × D | go | blank × K
                                      ^ outputs s_1 .. s_K here

    with K = ``n_symbols`` symbols drawn uniformly, D = ``delay``. The targets are the symbols at
    the last K steps (``loss_mask`` true there, targets 0 elsewhere). Objective ``"per-step-xent"``
    over ``output_size = alphabet`` classes, metric: accuracy of the recalled symbols.

    Baseline: a constant guess (always symbol 0) is right with probability 1/alphabet.
    """
    n_symbols = _int_option("n_symbols", n_symbols, 1)
    alphabet = _int_option("alphabet", alphabet, 2)
    delay = _int_option("delay", delay, 0)
    blank, go = alphabet, alphabet + 1
    length = 2 * n_symbols + delay + 1
    recall = slice(length - n_symbols, length)

    def sample(rng: np.random.Generator, n: int) -> SequenceData:
        symbols = rng.integers(0, alphabet, (n, n_symbols))
        inputs = np.full((n, length), blank, np.int32)
        inputs[:, :n_symbols] = symbols
        inputs[:, n_symbols + delay] = go
        targets = np.zeros((n, length), np.int32)
        targets[:, recall] = symbols
        loss_mask = np.zeros((n, length), bool)
        loss_mask[:, recall] = True
        return SequenceData(inputs, targets, np.ones((n, length), bool), loss_mask)

    def baseline(data: SequenceData) -> np.ndarray:
        logits = np.zeros(data.targets.shape + (alphabet,), np.float32)
        logits[..., 0] = 1.0
        return logits

    return Task(
        name="copy",
        input_size=alphabet + 2,
        output_size=alphabet,
        input_kind="tokens",
        objective="per-step-xent",
        metric="accuracy",
        description=f"recall {n_symbols} symbols of {alphabet} after {delay} blanks and a go marker",
        baseline_metric=1.0 / alphabet,
        options={"n_symbols": n_symbols, "alphabet": alphabet, "delay": delay},
        sampler=sample,
        baseline_outputs=baseline,
    )


SPEED_RANGE = (0.02, 0.08)
"""The ball's initial speed, uniform in this range (box widths per step), in a uniform direction."""

BASELINE_STEPS = 2**18
"""The moving ball's ``baseline_metric`` is measured on ⌈BASELINE_STEPS / length⌉ sequences."""


def _reflect(position: np.ndarray, velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fold positions back into [0, 1] by elastic reflection at the walls, flipping the velocity.

    The unfolded coordinate x maps to the triangle wave of period 2; the velocity is reversed when
    an odd number of walls was crossed, i.e. when x mod 2 > 1.
    """
    folded = np.mod(position, 2.0)
    crossed = folded > 1.0
    return np.where(crossed, 2.0 - folded, folded), np.where(crossed, -velocity, velocity)


def moving_ball(*, length: int = 50, noise: float = 0.01, gravity: float = 0.0) -> Task:
    r"""A ball bouncing in the unit box, observed with noise: predict its next position.

    True positions :math:`p_0, p_1, \ldots \in [0, 1]^2` of a point ball start uniform in the box
    with a velocity of uniform direction and speed in ``SPEED_RANGE`` per step, and move by

    .. math::  v_{t+1} = v_t - (0, g), \qquad p_{t+1} = p_t + v_{t+1}

    followed by elastic reflection at the walls (g = ``gravity``, 0 by default). The inputs are
    the noisy observations :math:`o_t = p_t + \varepsilon_t`, :math:`\varepsilon_t \sim N(0,
    \sigma^2 I)` (σ = ``noise``), for t = 0..T-1; the target at step t is the next true position
    :math:`p_{t+1}`. Objective ``"per-step-mse"`` (mean over steps and both coordinates).

    Baseline: the "last position" predictor :math:`\hat p_{t+1} = o_t`. Its MSE is close to
    E[v_x²] + σ² = E[s²]/2 + σ² = 0.0014 + σ² without gravity (reflections lower it slightly:
    0.00147 with the defaults);
    ``baseline_metric`` is its exact score measured on about ``BASELINE_STEPS`` steps drawn from a
    fixed stream, ``default_rng((0, len(SPLITS)))``, that no split uses.
    """
    length = _int_option("length", length, 2)
    noise = _float_option("noise", noise)
    gravity = _float_option("gravity", gravity)

    def sample(rng: np.random.Generator, n: int) -> SequenceData:
        position = rng.random((n, 2))
        angle = rng.uniform(0.0, 2.0 * np.pi, n)
        speed = rng.uniform(*SPEED_RANGE, n)
        velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)
        positions = [position]
        for _ in range(length):
            velocity = velocity - np.array([0.0, gravity])
            position, velocity = _reflect(position + velocity, velocity)
            positions.append(position)
        path = np.stack(positions, 1)
        observed = path[:, :-1] + noise * rng.standard_normal((n, length, 2))
        valid = np.ones((n, length), bool)
        return SequenceData(observed.astype(np.float32), path[:, 1:].astype(np.float32), valid, valid.copy())

    def baseline(data: SequenceData) -> np.ndarray:
        return data.inputs.copy()

    reference = sample(np.random.default_rng((0, len(SPLITS))), -(-BASELINE_STEPS // length))
    return Task(
        name="moving-ball",
        input_size=2,
        output_size=2,
        input_kind="vectors",
        objective="per-step-mse",
        metric="mse",
        description=f"predict the next position of a ball bouncing in the unit box over {length} noisy steps",
        baseline_metric=float(np.mean((baseline(reference).astype(np.float64) - reference.targets) ** 2)),
        options={"length": length, "noise": noise, "gravity": gravity},
        sampler=sample,
        baseline_outputs=baseline,
    )


TASKS: dict[str, Callable[..., Task]] = {"adding": adding, "copy": copy, "moving-ball": moving_ball}


def get_task(name: str, **options: Any) -> Task:
    """Build the task registered as ``name`` with ``options`` (e.g. ``get_task("copy", delay=50)``).

    Unknown names and unknown options raise ``ValueError`` listing the valid ones.
    """
    builder = TASKS[_checks.choice("task", name, tuple(TASKS))]
    valid = tuple(inspect.signature(builder).parameters)
    for key in options:
        if key not in valid:
            raise ValueError(f"task {name!r} has no option {key!r}; "
                             + (f"its options are: {', '.join(valid)}" if valid else "it takes none"))
    return builder(**options)


# Tasks defined in their own modules register themselves in TASKS when imported (they import this
# module, so the import comes last): navigation, real-data forecasting and digits, number words.
from . import navigation, series, digits, translation  # noqa: E402,F401,I001
