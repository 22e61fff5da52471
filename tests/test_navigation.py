"""Robot navigation: positions are the integral of the commands, noise on the inputs only, baselines."""

import math

import numpy as np
import pytest

from recurrax.data import navigation as N
from recurrax.data.tasks import TASKS, get_task


def _integrate_by_hand(commands):
    """Step-by-step unicycle integration, written independently of the module's vectorised version."""
    x = y = heading = 0.0
    path = []
    for v, w in commands:
        heading += w
        x += v * math.cos(heading)
        y += v * math.sin(heading)
        path.append((x, y))
    return np.array(path)


def test_registered_with_long_default_horizon():
    task = get_task("navigation")
    assert "navigation" in TASKS
    assert task.options["length"] == 200 and task.objective == "per-step-mse" and task.input_size == 2


def test_positions_integrate_the_noise_free_commands():
    task = get_task("navigation", length=60, speed_noise=0.0, turn_noise=0.0)
    data = task.generate("train", 5, seed=1)
    assert 0.3 < data.inputs[..., 0].mean() < 3 and 0.3 < data.inputs[..., 1].std() < 3  # commands of order one
    for commands, positions in zip(data.inputs.astype(np.float64) * N.COMMAND_SCALE, data.targets):
        np.testing.assert_allclose(positions, _integrate_by_hand(commands), atol=2e-5)
    # Without noise dead reckoning is exact.
    np.testing.assert_allclose(task.baseline_outputs(data), data.targets, atol=2e-5)
    assert task.baseline_metric < 1e-9


def test_noise_is_on_the_inputs_only():
    rng_args = dict(n=300, length=40)
    commands, measured, positions = N.simulate(np.random.default_rng(0), speed_noise=0.01, turn_noise=0.03, **rng_args)
    clean_commands, _, clean_positions = N.simulate(np.random.default_rng(0), speed_noise=0.0, turn_noise=0.0, **rng_args)
    np.testing.assert_array_equal(commands, clean_commands)
    np.testing.assert_array_equal(positions, clean_positions)
    np.testing.assert_allclose(positions, N.integrate(commands))
    residual = measured - commands
    assert residual[..., 0].std() == pytest.approx(0.01, rel=0.05)
    assert residual[..., 1].std() == pytest.approx(0.03, rel=0.05)
    assert (commands[..., 0] >= 0).all()  # the robot drives forwards


def test_dead_reckoning_error_grows_with_the_horizon():
    task = get_task("navigation", length=200)
    data = task.generate("valid", 400, seed=0)
    error = ((task.baseline_outputs(data) - data.targets) ** 2).mean((0, 2))
    assert error[:20].mean() < error[90:110].mean() < error[-20:].mean()
    assert task.score(task.baseline_outputs(data), data) == pytest.approx(task.baseline_metric, rel=0.3)
    assert task.baseline_metric < task.zero_metric / 10  # far better than predicting the origin


def test_plot_predictions(tmp_path):
    task = get_task("navigation", length=30)
    data = task.generate("test", 8, seed=0)
    assert task.plot_predictions(data.targets * 0.9, data, tmp_path / "nav.png").stat().st_size > 0


@pytest.mark.parametrize("options, message", [({"length": 0}, "length must be an integer >= 1"),
                                              ({"turn_noise": -1.0}, "turn_noise must be a non-negative")])
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        get_task("navigation", **options)
