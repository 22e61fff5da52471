"""Forecasting real series: chronological splits, windows, training-only normalisation, baselines, MASE."""

import numpy as np
import pytest

pytest.importorskip("statsmodels")

from recurrax.data import series as S  # noqa: E402
from recurrax.data.tasks import SPLITS, TASKS, get_task  # noqa: E402


def test_forecast_tasks_are_registered():
    assert {"sunspots", "co2", "elnino"} <= set(TASKS)


@pytest.mark.parametrize("name, length, season", [("sunspots", 309, 11), ("co2", 2284, 52), ("elnino", 732, 12)])
def test_series_load_whole_and_finite(name, length, season):
    s = S.load_series(name)
    assert len(s) == length and s.season == season
    assert np.isfinite(s.values).all()
    assert (np.diff(s.times) > 0).all()


def test_co2_gaps_are_filled_by_linear_interpolation():
    s = S.load_series("co2")
    assert s.filled.sum() == 59
    raw = s.values.copy()
    raw[s.filled] = np.nan
    filled, mask = S.fill_gaps(raw)
    np.testing.assert_array_equal(mask, s.filled)
    np.testing.assert_allclose(filled, s.values)
    # Every filled week lies on the straight line between the observed weeks around its gap.
    for i in np.flatnonzero(s.filled)[:10]:
        lo = i - 1
        while s.filled[lo]:
            lo -= 1
        hi = i + 1
        while s.filled[hi]:
            hi += 1
        expected = s.values[lo] + (s.values[hi] - s.values[lo]) * (i - lo) / (hi - lo)
        assert s.values[i] == pytest.approx(expected)


def test_fill_gaps_refuses_open_ends():
    with pytest.raises(ValueError, match="starts or ends"):
        S.fill_gaps(np.array([np.nan, 1.0, 2.0]))
    np.testing.assert_allclose(S.fill_gaps(np.array([1.0, np.nan, np.nan, 4.0]))[0], [1, 2, 3, 4])


def test_splits_are_chronological_disjoint_and_cover_the_targets():
    n, W, h = 100, 7, 3
    bounds = S.split_bounds(n)
    assert bounds == (70, 85)
    seen = []
    for split in SPLITS:
        lo, hi = S.segment(n, bounds, split)
        origins = S.window_origins(n, bounds, split, W, h)
        targets = origins[:, None] + np.arange(1, h + 1)
        assert targets.min() >= lo and targets.max() < hi  # the targets lie in the split
        assert (origins - W + 1 >= 0).all()  # the inputs lie in the series
        if split == "train":
            assert (origins - W + 1).min() == 0 and origins.max() + h == hi - 1  # inputs inside training too
        seen.append(np.unique(targets))
    assert seen[0].max() < seen[1].min() and seen[1].max() < seen[2].min()  # chronological, disjoint


def test_windows_line_up_with_the_raw_series():
    task = get_task("sunspots", length=12, horizon=4)
    raw = S.load_series("sunspots").values
    for split in SPLITS:
        inputs, targets, origins = task.windows(split)
        for x, y, t in zip(inputs, targets, origins):
            np.testing.assert_array_equal(x, raw[t - 11 : t + 1])
            np.testing.assert_array_equal(y, raw[t + 1 : t + 5])
        data = task.generate(split, 10**6, seed=0)
        assert data.inputs.shape == (len(origins), 12, 1) and data.targets.shape == (len(origins), 4)
        # The network's data are the windows normalised with the training statistics.
        np.testing.assert_allclose(data.inputs[..., 0] * task.normaliser.scale + task.normaliser.mean, inputs, atol=1e-4)
        np.testing.assert_allclose(task.forecasts(data.targets, split), targets, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("relative", [False, True])
def test_normalisation_uses_training_statistics_only(relative):
    task = get_task("sunspots", relative=relative)
    train = task.series.values[: task.bounds[0]]
    assert task.normaliser.mean == pytest.approx(train.mean())
    assert task.normaliser.scale == pytest.approx(train.std())
    # Changing everything after the training part leaves the normaliser unchanged.
    changed = task.series.values.copy()
    changed[task.bounds[0] :] *= 10
    assert S.Normaliser.fit(changed[: task.bounds[0]], relative) == task.normaliser
    data = task.generate("train", 10**6, seed=0)
    if relative:
        np.testing.assert_array_equal(data.inputs[:, -1, 0], 0.0)
    else:
        all_train = np.concatenate([data.inputs[0, :, 0], data.inputs[1:, -1, 0], data.targets[-1]])
        assert abs(all_train.mean()) < 1e-5 and all_train.std() == pytest.approx(1.0, abs=1e-5)


def test_relative_given_as_a_word_from_the_command_line():
    for word, value in (("false", False), ("True", True), ("yes", True), ("no", False)):
        assert get_task("sunspots", relative=word).normaliser == get_task("sunspots", relative=value).normaliser
    with pytest.raises(ValueError, match="relative must be true or false"):
        get_task("sunspots", relative="maybe")


def test_baselines_against_hand_computation():
    x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])  # one window, W = 6
    np.testing.assert_array_equal(S.naive_forecast(x, 3), [[6, 6, 6]])
    # Season 4: x̂_{t+1} = x_{t-3} = 3, x̂_{t+2} = 4, x̂_{t+3} = 5, x̂_{t+4} = 6, x̂_{t+5} = x_{t-3} again.
    np.testing.assert_array_equal(S.seasonal_naive_forecast(x, 5, 4), [[3, 4, 5, 6, 3]])
    np.testing.assert_array_equal(S.seasonal_naive_forecast(x, 2, 1), [[6, 6]])
    with pytest.raises(ValueError, match="at least one season"):
        S.seasonal_naive_forecast(x, 2, 7)


def test_linear_ar_recovers_an_exact_autoregression():
    rng = np.random.default_rng(0)
    values = [1.0, 0.5]
    for _ in range(300):
        values.append(0.6 * values[-1] - 0.3 * values[-2] + 0.2 + 0.1 * rng.standard_normal())
    values = np.array(values)
    origins = np.arange(1, len(values) - 1)
    inputs, targets = S.make_windows(values, origins, 2, 1)
    ar = S.LinearAR.fit(inputs, targets)
    np.testing.assert_allclose(ar.coef[:, 0], [-0.3, 0.6, 0.2], atol=0.06)  # oldest first, then intercept
    # The least-squares fit equals the normal-equations solution.
    design = np.column_stack([inputs, np.ones(len(inputs))])
    np.testing.assert_allclose(ar.coef, np.linalg.solve(design.T @ design, design.T @ targets), rtol=1e-8)
    np.testing.assert_allclose(ar.predict(inputs), design @ ar.coef)


def test_mase_definition():
    train = np.array([1.0, 3.0, 2.0, 6.0])  # one-step naive in-sample errors: 2, 1, 4 → scale 7/3
    assert S.mase_scale(train) == pytest.approx(7 / 3)
    truth = np.array([[5.0, 7.0], [6.0, 6.0]])
    forecasts = np.array([[4.0, 7.0], [8.0, 6.0]])  # errors 1, 0, 2, 0
    metrics = S.forecast_metrics(forecasts, truth, S.mase_scale(train))
    assert metrics["mae"] == pytest.approx(0.75)
    assert metrics["rmse"] == pytest.approx(np.sqrt(5 / 4))
    assert metrics["mase"] == pytest.approx(0.75 / (7 / 3))
    with pytest.raises(ValueError, match="two distinct values"):
        S.mase_scale(np.array([2.0, 2.0]))


def test_forecast_report_scores_baselines_in_original_units():
    task = get_task("sunspots")
    inputs, targets, _ = task.windows("test")
    report = task.forecast_report()
    assert list(report) == list(S.BASELINES)
    naive_mae = np.mean(np.abs(inputs[:, -1:] - targets))
    assert report["naive"]["mae"] == pytest.approx(naive_mae)
    assert report["naive"]["mase"] == pytest.approx(naive_mae / np.mean(np.abs(np.diff(task.train_values))))
    # A perfect model (normalised targets as outputs) scores zero; the task's baseline is the naive forecast.
    data = task.generate("test", 10**6, seed=0)
    assert task.forecast_report(data.targets)["model"]["mae"] == pytest.approx(0.0, abs=1e-3)
    assert task.score(task.baseline_outputs(data), data) == pytest.approx(task.baseline_metric)
    np.testing.assert_allclose(task.forecasts(task.baseline_outputs(data), "test"), S.naive_forecast(inputs, 5), rtol=1e-5)


def test_fixed_data_ignore_the_seed_and_cap_the_count():
    task = get_task("elnino")
    a, b = task.generate("valid", 10**6, seed=0), task.generate("valid", 10**6, seed=5)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert len(a) == task.size("valid")
    np.testing.assert_array_equal(task.generate("valid", 3, seed=0).targets, a.targets[:3])


@pytest.mark.parametrize(
    "options, message",
    [({"length": 5}, "at least one season"), ({"horizon": 0}, "horizon must be an integer >= 1"),
     ({"relative": 2}, "relative must be true or false"), ({"length": 250}, "too short")],
)
def test_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        get_task("sunspots", **options)


def test_missing_statsmodels_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "statsmodels", None)  # import statsmodels now raises ImportError
    S.load_series.cache_clear()
    try:
        with pytest.raises(S.MissingExtraError, match=r"statsmodels.*pip install 'recurrax\[data\]'"):
            get_task("sunspots")
    finally:
        S.load_series.cache_clear()
