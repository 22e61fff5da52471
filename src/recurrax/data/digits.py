r"""Handwritten digits read as sequences: scikit-learn's bundled 8×8 digits, row by row or pixel by pixel.

The data set is ``sklearn.datasets.load_digits`` (1,797 images of 8×8 pixels with intensities 0..16,
from the UCI "Optical Recognition of Handwritten Digits" data; installed with the ``data`` extra,
``pip install 'recurrax[data]'``, nothing is downloaded). Intensities are divided by 16 (to [0, 1]).

* ``digits-rows``: the image read top to bottom, one row per step: T = 8 steps of 8 features.
* ``digits-pixels``: the image read pixel by pixel in raster order: T = 64 steps of 1 feature
  (the small-scale version of "pixel MNIST", a long-range memory test: the class depends on
  pixels read up to 64 steps before the decision).

The label is read at the last step: objective ``"last-xent"`` over 10 classes, metric accuracy.

**Split**: a fixed stratified split, 60 % training, 20 % validation, 20 % test *of every class*,
shuffled with the fixed seed ``SPLIT_SEED`` (it does not change with a run's seed, so every run
is scored on the same test images). Baseline: the majority class of the training split (≈ 10 %
accuracy: the classes are balanced).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from .tasks import SPLITS, TASKS, SequenceData

# .series is imported inside the functions: this module is imported by .tasks, as .series is.

SPLIT_SEED = 0
SPLIT_FRACTIONS = (0.6, 0.2, 0.2)
READINGS = ("rows", "pixels")


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)``: (1797, 8, 8) float32 intensities in [0, 1] and (1797,) int32 labels."""
    from .series import require

    datasets = require("sklearn.datasets", "scikit-learn", "the digits tasks")
    bunch = datasets.load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int32)


def stratified_split(labels: np.ndarray, fractions=SPLIT_FRACTIONS, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Indices of each split: every class is shuffled (fixed ``seed``) and cut by ``fractions``.

    The indices of each split are sorted; the three splits are disjoint and cover every example.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train = int(round(fractions[0] * len(members)))
        n_valid = int(round(fractions[1] * len(members)))
        parts["train"].append(members[:n_train])
        parts["valid"].append(members[n_train : n_train + n_valid])
        parts["test"].append(members[n_train + n_valid :])
    return {split: np.sort(np.concatenate(chunks)) for split, chunks in parts.items()}


def as_sequences(images: np.ndarray, reading: str) -> np.ndarray:
    """Images (N, 8, 8) as sequences: rows (N, 8, 8) or pixels in raster order (N, 64, 1)."""
    if reading == "rows":
        return images.reshape(len(images), 8, 8)
    if reading == "pixels":
        return images.reshape(len(images), 64, 1)
    raise ValueError(f"unknown reading {reading!r}; expected one of: {', '.join(READINGS)}")


def plot_predictions(task, outputs: Any, data: SequenceData, path: str | Path, *, split: str = "test",
                     title: str = "", count: int = 24) -> Path:
    """A grid of ``data``'s images with the predicted labels (mistakes first, in red)."""
    from matplotlib.figure import Figure

    predicted = np.argmax(np.asarray(outputs), -1)
    images = data.inputs.reshape(len(data), 8, 8)
    wrong = np.flatnonzero(predicted != data.targets)
    # Show the mistakes first (up to half the grid), then correct ones.
    shown = list(wrong[: count // 2]) + [i for i in range(len(data)) if predicted[i] == data.targets[i]]
    shown = shown[:count]
    cols = 8
    rows = -(-len(shown) // cols)
    fig = Figure(figsize=(cols * 1.2, rows * 1.45 + 0.4), constrained_layout=True)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown):
        ax.imshow(images[i], cmap="gray_r", vmin=0, vmax=1)
        ok = predicted[i] == data.targets[i]
        ax.set_title(f"{predicted[i]} (true {data.targets[i]})", fontsize=8, color="black" if ok else "red")
    accuracy = float(np.mean(predicted == data.targets))
    fig.suptitle((title + ": " if title else "") + f"{split} accuracy {accuracy:.3f}; mistakes in red")
    fig.savefig(path, dpi=100)
    return Path(path)


def digits_task(reading: str):
    """The digits task read by ``"rows"`` or ``"pixels"`` (a :class:`~recurrax.data.series.DatasetTask`)."""
    from .series import DatasetTask, bootstrap_sampler

    images, labels = load_digits()
    sequences = as_sequences(images, reading)
    index = stratified_split(labels)

    @functools.cache
    def splits(split: str) -> SequenceData:
        chosen = index[split]
        x, y = sequences[chosen], labels[chosen]
        n, length = x.shape[:2]
        loss_mask = np.zeros((n, length), bool)
        loss_mask[:, -1] = True
        return SequenceData(x, y, np.ones((n, length), bool), loss_mask)

    majority = int(np.bincount(splits("train").targets, minlength=10).argmax())

    def baseline(data: SequenceData) -> np.ndarray:
        logits = np.zeros((len(data), 10), np.float32)
        logits[:, majority] = 1.0
        return logits

    length, features = sequences.shape[1:]
    return DatasetTask(
        name=f"digits-{reading}",
        input_size=features,
        output_size=10,
        input_kind="vectors",
        objective="last-xent",
        metric="accuracy",
        description=f"classify 8x8 handwritten digits read {'row by row' if reading == 'rows' else 'pixel by pixel'} "
        f"({length} steps of {features} feature{'s' if features > 1 else ''}; scikit-learn's load_digits)",
        baseline_metric=float(np.mean(splits("test").targets == majority)),
        options={},
        sampler=bootstrap_sampler(splits),
        baseline_outputs=baseline,
        splits=splits,
        plotter=plot_predictions,
    )


def digits_rows():
    """Digits read row by row: 8 steps of 8 pixels."""
    return digits_task("rows")


def digits_pixels():
    """Digits read pixel by pixel: 64 steps of 1 pixel."""
    return digits_task("pixels")


TASKS.update({"digits-rows": digits_rows, "digits-pixels": digits_pixels})
