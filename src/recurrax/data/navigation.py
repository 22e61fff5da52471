r"""Robot navigation: speed and turn-rate commands in, the integrated 2-D position out, with noise.

A robot (a unicycle) starts at the origin facing along x. At every step t = 1..T it is commanded a
forward speed :math:`v_t` and a turn rate :math:`\omega_t` and moves by

.. math::  \theta_t = \theta_{t-1} + \omega_t, \qquad
           p_t = p_{t-1} + v_t\,(\cos\theta_t, \sin\theta_t), \qquad \theta_0 = 0,\ p_0 = 0.

The commands are smooth random signals: :math:`v_t = \max(0, \bar v\,(1 + 0.5 z_t))` and
:math:`\omega_t = \sigma_\omega w_t`, where :math:`z, w` are independent stationary AR(1)
processes with unit variance and coefficient ``SMOOTHING`` (the robot's speed and steering change
gradually). The network reads the *measured* commands, corrupted by independent Gaussian noise
(odometry noise): :math:`(v_t + \epsilon_t, \omega_t + \eta_t)`, with standard deviations
``speed_noise`` and ``turn_noise`` in the commands' own units (distance and radians per step:
the defaults 0.005 and 0.02 are 0.1 :math:`\bar v` and 0.25 :math:`\sigma_\omega`), divided by
``COMMAND_SCALE`` = (:math:`\bar v`, :math:`\sigma_\omega`) into inputs of order one, and
predicts the true position :math:`p_t` at every step (objective ``"per-step-mse"``, mean over
steps and both coordinates). Default horizon T = 200.

Baseline: **dead reckoning**, integrating the noisy measured commands with the exact equations
above (:func:`dead_reckoning`). It knows the physics perfectly; its error comes from the noise,
whose effect on the heading accumulates like a random walk, so it grows with the horizon. A
network can only beat it by learning both the integration and a better estimate of the commands
than the raw measurements (the commands are smooth, the noise is not, so filtering helps). The
trivial constant predictor (the origin) scores far worse; ``NavigationTask.zero_metric`` gives its
measured MSE for reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import SPLITS, TASKS, SequenceData, Task, _float_option, _int_option

MEAN_SPEED = 0.05
"""v̄: the mean commanded speed, in distance units per step (10 units of path over 200 steps)."""

TURN_SCALE = 0.08
"""σ_ω: the standard deviation of the commanded turn rate, in radians per step."""

SMOOTHING = 0.95
"""The AR(1) coefficient of the command processes."""

COMMAND_SCALE = np.array([MEAN_SPEED, TURN_SCALE])
"""The inputs are the measured (v, ω) divided by this: commands in units of v̄ and σ_ω."""

BASELINE_SEQUENCES = 2048
"""The baselines' metrics are measured on this many sequences from a stream no split uses."""


def _ar1(rng: np.random.Generator, n: int, length: int, phi: float) -> np.ndarray:
    """(n, length) stationary AR(1) paths with unit variance."""
    out = np.empty((n, length))
    out[:, 0] = rng.standard_normal(n)
    scale = np.sqrt(1.0 - phi**2)
    for t in range(1, length):
        out[:, t] = phi * out[:, t - 1] + scale * rng.standard_normal(n)
    return out


def integrate(commands: np.ndarray) -> np.ndarray:
    """Positions p_1..p_T (..., T, 2) of commands (..., T, 2) = (v_t, ω_t), by the equations above."""
    commands = np.asarray(commands, np.float64)
    heading = np.cumsum(commands[..., 1], axis=-1)
    steps = commands[..., 0:1] * np.stack([np.cos(heading), np.sin(heading)], -1)
    return np.cumsum(steps, axis=-2)


def dead_reckoning(inputs: np.ndarray) -> np.ndarray:
    """The baseline: the task's inputs (measured commands / ``COMMAND_SCALE``) integrated exactly, (..., T, 2)."""
    return integrate(np.asarray(inputs, np.float64) * COMMAND_SCALE).astype(np.float32)


def simulate(rng: np.random.Generator, n: int, length: int, speed_noise: float, turn_noise: float
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(commands, measured, positions)``: true commands (n, T, 2), noisy measurements, positions (n, T, 2)."""
    speed = np.maximum(0.0, MEAN_SPEED * (1.0 + 0.5 * _ar1(rng, n, length, SMOOTHING)))
    turn = TURN_SCALE * _ar1(rng, n, length, SMOOTHING)
    commands = np.stack([speed, turn], -1)
    noise = rng.standard_normal((n, length, 2)) * np.array([speed_noise, turn_noise])
    return commands, commands + noise, integrate(commands)


@dataclass(frozen=True)
class NavigationTask(Task):
    """The navigation task, with the constant predictor's score and a trajectory plot."""

    zero_metric: float = float("nan")

    def plot_predictions(self, outputs: Any, data: SequenceData, path: str | Path, *, split: str = "test",
                         title: str = "", count: int = 4) -> Path:
        """True, predicted and dead-reckoned paths of the first ``count`` sequences, and the error by step."""
        from matplotlib.figure import Figure

        outputs = np.asarray(outputs)
        reckoned = dead_reckoning(data.inputs)
        fig = Figure(figsize=(4 * count, 7.5), constrained_layout=True)
        axes = fig.subplots(2, count, squeeze=False)
        for i in range(min(count, len(outputs))):
            ax = axes[0, i]
            ax.plot(*data.targets[i].T, color="black", lw=1.5, label="truth")
            ax.plot(*outputs[i].T, color="C3", lw=1.2, label="model")
            ax.plot(*reckoned[i].T, color="C0", lw=1, ls="--", label="dead reckoning")
            ax.plot(0, 0, "ko", ms=4)
            ax.set_aspect("equal", "datalim")
            ax.set_title(f"{split} path {i}")
            if i == 0:
                ax.legend(fontsize=8)
        gs = axes[1, 0].get_gridspec()
        for ax in axes[1]:
            ax.remove()
        ax = fig.add_subplot(gs[1, :])
        steps = np.arange(1, data.length + 1)
        ax.plot(steps, ((outputs - data.targets) ** 2).mean((0, 2)), color="C3", label="model")
        ax.plot(steps, ((reckoned - data.targets) ** 2).mean((0, 2)), color="C0", ls="--", label="dead reckoning")
        ax.set_xlabel("step")
        ax.set_ylabel("mean squared error")
        ax.set_yscale("log")
        ax.legend()
        if title:
            fig.suptitle(title)
        fig.savefig(path, dpi=100)
        return Path(path)


def navigation(*, length: int = 200, speed_noise: float = 0.005, turn_noise: float = 0.02) -> NavigationTask:
    """Integrate noisy (speed, turn-rate) commands into 2-D positions over ``length`` steps (module docstring)."""
    length = _int_option("length", length, 1)
    speed_noise = _float_option("speed_noise", speed_noise)
    turn_noise = _float_option("turn_noise", turn_noise)

    def sample(rng: np.random.Generator, n: int) -> SequenceData:
        _, measured, positions = simulate(rng, n, length, speed_noise, turn_noise)
        valid = np.ones((n, length), bool)
        inputs = (measured / COMMAND_SCALE).astype(np.float32)
        return SequenceData(inputs, positions.astype(np.float32), valid, valid.copy())

    reference = sample(np.random.default_rng((0, len(SPLITS))), BASELINE_SEQUENCES)
    targets = reference.targets.astype(np.float64)
    return NavigationTask(
        name="navigation",
        input_size=2,
        output_size=2,
        input_kind="vectors",
        objective="per-step-mse",
        metric="mse",
        description=f"integrate {length} noisy (speed, turn-rate) commands into 2-D positions; baseline: dead reckoning",
        baseline_metric=float(np.mean((dead_reckoning(reference.inputs) - targets) ** 2)),
        options={"length": length, "speed_noise": speed_noise, "turn_noise": turn_noise},
        sampler=sample,
        baseline_outputs=lambda data: dead_reckoning(data.inputs),
        zero_metric=float(np.mean(targets**2)),
    )


TASKS["navigation"] = navigation
