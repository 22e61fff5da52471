"""Synthetic tasks: determinism, layouts, targets recomputed independently, baselines, errors."""

import numpy as np
import pytest

from recurrax.data.tasks import SPLITS, SequenceData, Task, get_task

SMALL = {"adding": {"length": 12}, "copy": {"n_symbols": 3, "alphabet": 5, "delay": 4}, "moving-ball": {"length": 9}}


@pytest.fixture(params=sorted(SMALL))
def task(request) -> Task:
    return get_task(request.param, **SMALL[request.param])


def test_same_seed_same_data(task):
    a, b = task.generate("train", 6, seed=3), task.generate("train", 6, seed=3)
    for field in ("inputs", "targets", "mask", "loss_mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_splits_and_seeds_give_different_data(task):
    data = [task.generate(split, 6, seed=3).inputs for split in SPLITS] + [task.generate("train", 6, seed=4).inputs]
    for i in range(len(data)):
        for j in range(i):
            assert not np.array_equal(data[i], data[j])


def test_shapes_and_dtypes(task):
    n = 7
    data = task.generate("valid", n, seed=0)
    assert isinstance(data, SequenceData) and len(data) == n
    T = data.length
    if task.input_kind == "tokens":
        assert data.inputs.shape == (n, T) and data.inputs.dtype == np.int32
        assert data.inputs.min() >= 0 and data.inputs.max() < task.input_size
    else:
        assert data.inputs.shape == (n, T, task.input_size) and data.inputs.dtype == np.float32
    expected_targets = {
        "per-step-mse": ((n, T, task.output_size), np.float32),
        "last-mse": ((n, task.output_size), np.float32),
        "per-step-xent": ((n, T), np.int32),
        "last-xent": ((n,), np.int32),
    }[task.objective]
    assert (data.targets.shape, data.targets.dtype) == expected_targets
    assert data.mask.shape == data.loss_mask.shape == (n, T)
    assert data.mask.dtype == data.loss_mask.dtype == np.bool_
    assert data.mask.all()
    assert not (data.loss_mask & ~data.mask).any()


def test_adding_markers_and_target():
    T = 15
    data = get_task("adding", length=T).generate("train", 200, seed=1)
    values, markers = data.inputs[..., 0], data.inputs[..., 1]
    assert ((values >= 0) & (values <= 1)).all()
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers[:, : T // 2].sum(1) == 1).all() and (markers[:, T // 2 :].sum(1) == 1).all()
    for x, y in zip(data.inputs, data.targets):
        marked = [v for v, m in x if m == 1.0]
        assert y.shape == (1,) and y[0] == pytest.approx(sum(marked), abs=1e-6)
    assert (data.loss_mask[:, -1]).all() and data.loss_mask.sum() == len(data)


def test_adding_shortest_sequence():
    data = get_task("adding", length=2).generate("train", 10, seed=0)
    np.testing.assert_array_equal(data.inputs[..., 1], 1.0)


def test_copy_targets_are_the_input_symbols():
    K, A, D = 4, 6, 7
    task = get_task("copy", n_symbols=K, alphabet=A, delay=D)
    data = task.generate("test", 50, seed=2)
    T = 2 * K + D + 1
    assert data.length == T and task.input_size == A + 2 and task.output_size == A
    blank, go = A, A + 1
    for x, y, scored in zip(data.inputs, data.targets, data.loss_mask):
        assert (x[:K] < A).all()
        np.testing.assert_array_equal(x[K : K + D], blank)
        assert x[K + D] == go
        np.testing.assert_array_equal(x[K + D + 1 :], blank)
        np.testing.assert_array_equal(np.flatnonzero(scored), np.arange(T - K, T))
        np.testing.assert_array_equal(y[scored], x[:K])


def test_copy_scores_perfect_recall_as_one():
    task = get_task("copy", n_symbols=3, alphabet=4, delay=2)
    data = task.generate("train", 20, seed=0)
    logits = np.eye(4)[data.targets]
    assert task.score(logits, data) == 1.0


@pytest.mark.parametrize("gravity", [0.0, 0.004])
def test_moving_ball_stays_in_box_and_targets_are_next_positions(gravity):
    T = 120
    data = get_task("moving-ball", length=T, noise=0.0, gravity=gravity).generate("train", 64, seed=5)
    assert ((data.targets >= 0) & (data.targets <= 1)).all()
    assert ((data.inputs >= 0) & (data.inputs <= 1)).all()
    np.testing.assert_array_equal(data.inputs[:, 1:], data.targets[:, :-1])
    steps = np.linalg.norm(np.diff(data.targets, axis=1), axis=-1)
    assert steps.max() < 0.5  # one step moves the ball a little, even across a wall
    if gravity == 0.0:
        # Away from the walls the motion is uniform: the second difference vanishes.
        accel = np.diff(data.targets, 2, axis=1)
        inside = ((data.targets[:, 1:-1] > 0.1) & (data.targets[:, 1:-1] < 0.9)).all(-1)
        inside &= ((data.targets[:, :-2] > 0.1) & (data.targets[:, :-2] < 0.9)).all(-1)
        inside &= ((data.targets[:, 2:] > 0.1) & (data.targets[:, 2:] < 0.9)).all(-1)
        assert inside.mean() > 0.3
        np.testing.assert_allclose(accel[inside], 0.0, atol=1e-5)


def test_moving_ball_noise_is_gaussian_with_the_given_scale():
    clean = get_task("moving-ball", length=30, noise=0.0).generate("train", 400, seed=0)
    noisy = get_task("moving-ball", length=30, noise=0.05).generate("train", 400, seed=0)
    np.testing.assert_array_equal(clean.targets, noisy.targets)
    residual = noisy.inputs[:, 1:] - noisy.targets[:, :-1]
    assert residual.std() == pytest.approx(0.05, rel=0.02)
    assert abs(residual.mean()) < 1e-3


@pytest.mark.parametrize(
    ("name", "options", "expected", "rel"),
    [
        ("adding", {"length": 40}, 1 / 6, 0.03),
        ("copy", {"n_symbols": 10, "alphabet": 8, "delay": 5}, 1 / 8, 0.03),
        ("moving-ball", {"length": 50}, 0.0014 + 0.01**2, 0.05),
    ],
)
def test_trivial_baselines_match_documented_values(name, options, expected, rel):
    task = get_task(name, **options)
    data = task.generate("test", 20_000 if name != "moving-ball" else 2_000, seed=11)
    assert task.score(task.baseline_outputs(data), data) == pytest.approx(expected, rel=rel)
    assert task.baseline_metric == pytest.approx(expected, rel=rel)


def test_adding_baseline_is_beaten_by_the_exact_answer():
    task = get_task("adding", length=10)
    data = task.generate("train", 100, seed=0)
    assert task.score(data.targets, data) == 0.0 < task.baseline_metric
    assert not task.higher_is_better and get_task("copy").higher_is_better


def test_unknown_task_lists_names():
    with pytest.raises(ValueError, match="unknown task 'add'.*adding, copy, moving-ball"):
        get_task("add")


def test_unknown_option_lists_options():
    with pytest.raises(ValueError, match="task 'copy' has no option 'lenght'.*n_symbols, alphabet, delay"):
        get_task("copy", lenght=3)


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("adding", {"length": 1}, "length must be an integer >= 2, got 1"),
        ("adding", {"length": 2.5}, "length must be an integer >= 2"),
        ("moving-ball", {"length": 1}, "length must be an integer >= 2"),
        ("copy", {"n_symbols": 0}, "n_symbols must be an integer >= 1"),
        ("copy", {"alphabet": 1}, "alphabet must be an integer >= 2"),
        ("copy", {"delay": -1}, "delay must be an integer >= 0"),
        ("moving-ball", {"noise": -0.1}, "noise must be a non-negative finite number"),
        ("moving-ball", {"gravity": float("nan")}, "gravity must be a non-negative finite number"),
    ],
)
def test_bad_options(name, options, message):
    with pytest.raises(ValueError, match=message):
        get_task(name, **options)


def test_bad_generate_arguments():
    task = get_task("adding", length=4)
    with pytest.raises(ValueError, match="unknown split 'training'; expected one of: train, valid, test"):
        task.generate("training", 3, seed=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        task.generate("train", 0, seed=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        task.generate("train", 3, seed=-1)


def test_score_checks_output_shape():
    task = get_task("copy", n_symbols=2, alphabet=3, delay=0)
    data = task.generate("train", 4, seed=0)
    with pytest.raises(ValueError, match=r"copy outputs must have shape \(4, 5, 3\)"):
        task.score(np.zeros((4, 5)), data)
