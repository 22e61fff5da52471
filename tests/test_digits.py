"""Digits read as sequences: layouts, the fixed stratified split, the baseline, the plot, a missing package."""

import numpy as np
import pytest

pytest.importorskip("sklearn")

from recurrax.data import digits as D  # noqa: E402
from recurrax.data.tasks import SPLITS, TASKS, get_task  # noqa: E402


def test_registered():
    assert {"digits-rows", "digits-pixels"} <= set(TASKS)


def test_split_is_stratified_disjoint_complete_and_fixed():
    images, labels = D.load_digits()
    assert images.shape == (1797, 8, 8) and images.min() == 0 and images.max() == 1
    index = D.stratified_split(labels)
    together = np.concatenate([index[s] for s in SPLITS])
    assert len(together) == len(labels) == len(np.unique(together))
    for split, fraction in zip(SPLITS, D.SPLIT_FRACTIONS):
        counts = np.bincount(labels[index[split]], minlength=10)
        expected = fraction * np.bincount(labels, minlength=10)
        assert np.all(np.abs(counts - expected) <= 1)  # every class in proportion
    again = D.stratified_split(labels)
    for split in SPLITS:
        np.testing.assert_array_equal(index[split], again[split])


@pytest.mark.parametrize("name, length, features", [("digits-rows", 8, 8), ("digits-pixels", 64, 1)])
def test_sequences_read_the_image_in_order(name, length, features):
    task = get_task(name)
    images, labels = D.load_digits()
    index = D.stratified_split(labels)
    assert (task.input_size, task.output_size, task.objective, task.metric) == (features, 10, "last-xent", "accuracy")
    for split in SPLITS:
        data = task.generate(split, 10**6, seed=3)
        assert data.inputs.shape == (len(index[split]), length, features) and data.inputs.dtype == np.float32
        np.testing.assert_array_equal(data.targets, labels[index[split]])
        assert data.loss_mask[:, -1].all() and data.loss_mask.sum() == len(data)
        image = images[index[split][0]]
        if name == "digits-rows":
            np.testing.assert_array_equal(data.inputs[0, 2], image[2])  # step 2 is row 2
        else:
            assert data.inputs[0, 8 * 3 + 5, 0] == image[3, 5]  # step 29 is row 3, column 5


def test_baseline_is_the_majority_class():
    task = get_task("digits-rows")
    data = task.generate("test", 10**6, seed=0)
    train = task.generate("train", 10**6, seed=0)
    majority = np.bincount(train.targets).argmax()
    assert task.baseline_metric == pytest.approx(np.mean(data.targets == majority))
    assert task.score(task.baseline_outputs(data), data) == task.baseline_metric
    assert task.score(np.eye(10)[data.targets], data) == 1.0


def test_plot_predictions(tmp_path):
    task = get_task("digits-rows")
    data = task.generate("test", 40, seed=0)
    logits = np.eye(10)[(data.targets + (np.arange(40) % 5 == 0)) % 10]
    path = task.plot_predictions(logits, data, tmp_path / "digits.png")
    assert path.stat().st_size > 0


def test_missing_scikit_learn_names_the_extra(monkeypatch):
    import sys

    from recurrax.data.series import MissingExtraError

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    D.load_digits.cache_clear()
    try:
        with pytest.raises(MissingExtraError, match=r"scikit-learn.*recurrax\[data\]"):
            get_task("digits-pixels")
    finally:
        D.load_digits.cache_clear()
