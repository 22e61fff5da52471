r"""Forecasting real time series shipped inside statsmodels: sunspots, CO₂, El Niño.

The series come with ``statsmodels.datasets`` (installed with the ``data`` extra,
``pip install 'recurrax[data]'``), so nothing is downloaded at run time:

* ``sunspots``: yearly mean sunspot numbers, 1700–2008 (309 values); season 11 years (the solar cycle).
* ``co2``: weekly atmospheric CO₂ at Mauna Loa, March 1958 – December 2001 (2,284 weeks, in ppm);
  season 52 weeks. 59 weeks are missing (22 gaps, the longest 18 weeks); they are **filled by linear
  interpolation in time** between the nearest observed weeks on either side (``Series.filled``
  marks them). No gap touches either end of the record.
* ``elnino``: monthly sea-surface temperatures of the El Niño region, 1950–2010 (732 months, in °C);
  season 12 months.

**Splits** are chronological: the first 70 % of the series is training, the next 15 % validation
and the last 15 % test (:func:`split_bounds`). A forecast from *origin* t reads the window of W
values :math:`x_{t-W+1..t}` (the task's ``length``) and predicts the next h values
:math:`x_{t+1..t+h}` (``horizon``: a multi-step, "direct" forecast, all h at once). Every forecast
origin whose h targets lie inside a split belongs to that split (stride 1, a rolling origin): the
targets of the three splits are disjoint and in time order. A training window lies entirely
inside the training part; a validation or test window's *inputs* may reach back into the part
before it, which is known at forecast time (:func:`window_origins`).

**Normalisation** is fitted on the training part only (:class:`Normaliser`): with the mean μ and
standard deviation s of the training values, the network reads :math:`(x - μ)/s` and predicts
:math:`(y - μ)/s` (``relative=False``), or reads and predicts values relative to the window's last
value, :math:`(x - x_t)/s` and :math:`(y - x_t)/s` (``relative=True``, the default for the trending
CO₂ series, whose test values lie above every training value). The model is a
:class:`~recurrax.SequenceModel` with a last-step head of h outputs (objective ``"last-mse"``,
targets (N, h)); :meth:`ForecastTask.forecasts` maps its outputs back to the original units.

**Baselines** (all from the input window; :meth:`ForecastTask.baseline_forecasts`):

* naive: the last value, :math:`\hat x_{t+k} = x_t`;
* seasonal naive: the value one season m earlier, :math:`\hat x_{t+k} = x_{t+k-m\lceil k/m\rceil}`
  (needs W ≥ m);
* linear autoregressive: :math:`\hat x_{t+k} = b_k + \sum_{i<W} a_{k,i} x_{t-i}`, one least-squares
  fit per horizon step on the training windows (:class:`LinearAR`).

**Metrics** in the original units, averaged over all forecasts and horizon steps
(:func:`forecast_metrics`): MAE, RMSE and MASE, the mean absolute scaled error of Hyndman &
Koehler (2006, "Another look at measures of forecast accuracy", *International Journal of
Forecasting* 22(4)), which divides the MAE by the in-sample MAE of the one-step naive forecast on
the training part, :math:`\frac{1}{n-1}\sum_{i=2}^{n} |x_i - x_{i-1}|` (:func:`mase_scale`).
MASE < 1: better than the one-step naive forecast was in-sample.
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import _checks
from .tasks import SPLITS, TASKS, SequenceData, Task

SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
"""Training, validation and test fractions of a series, in time order."""

DATA_EXTRA = "data"


class MissingExtraError(ImportError, ValueError):
    """An optional package a data set needs is not installed (install the named extra)."""


def require(module: str, package: str, purpose: str) -> Any:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``package`` and the ``data`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingExtraError(
            f"{purpose} needs the package {package}, which is not installed; install the {DATA_EXTRA!r} extra: "
            f"pip install 'recurrax[{DATA_EXTRA}]' (or pip install {package})"
        ) from error


# ---------------------------------------------------------------------------------------------
# Tasks over a fixed data set (shared with the digits task)


@dataclass(frozen=True)
class DatasetTask(Task):
    """A task over a fixed data set: its splits are fixed arrays, not draws from a generator.

    (Modules imported by :mod:`recurrax.data.tasks` must not import this module at their top: build
    a ``DatasetTask`` inside a function, passing ``plotter(task, outputs, data, path, **options)``.)

    ``generate(split, n, seed)`` returns the split's examples in their stored order, the first
    ``n`` of them when ``n`` is smaller than the split (``n`` caps the count; pass a large ``n``
    for the whole split, :meth:`size` tells how many there are). The data do not depend on
    ``seed`` (it only varies initialisation and batch order of a training run).
    """

    splits: Callable[[str], SequenceData] | None = field(default=None, repr=False, compare=False)
    plotter: Callable[..., Path] | None = field(default=None, repr=False, compare=False)

    def plot_predictions(self, outputs: Any, data: SequenceData, path: str | Path, **options: Any) -> Path | None:
        """Plot a model's ``outputs`` on ``data`` to ``path`` with the task's ``plotter`` (None without one)."""
        return None if self.plotter is None else self.plotter(self, outputs, data, path, **options)

    def generate(self, split: str, n: int, seed: int) -> SequenceData:
        _checks.choice("split", split, SPLITS)
        n = _checks.positive_int("n", n)
        _checks.seed(seed)
        data = self.splits(split)
        if n >= len(data):
            return data
        return SequenceData(data.inputs[:n], data.targets[:n], data.mask[:n], data.loss_mask[:n])

    def size(self, split: str) -> int:
        """Number of examples in ``split``."""
        return len(self.splits(_checks.choice("split", split, SPLITS)))


def bootstrap_sampler(splits: Callable[[str], SequenceData]) -> Callable[[np.random.Generator, int], SequenceData]:
    """A ``Task.sampler`` for a fixed data set: ``n`` training examples drawn with replacement."""

    def sample(rng: np.random.Generator, n: int) -> SequenceData:
        data = splits("train")
        chosen = rng.integers(0, len(data), n)
        return SequenceData(data.inputs[chosen], data.targets[chosen], data.mask[chosen], data.loss_mask[chosen])

    return sample


# ---------------------------------------------------------------------------------------------
# The series


@dataclass(frozen=True)
class Series:
    """A univariate series: ``values`` (float64) at ``times`` (decimal years), with its season length."""

    name: str
    values: np.ndarray
    times: np.ndarray
    season: int
    unit: str
    description: str
    filled: np.ndarray | None = None  # bool, values filled in for missing observations

    def __len__(self) -> int:
        return len(self.values)


def fill_gaps(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Missing values (NaN) replaced by linear interpolation between the nearest observed neighbours.

    Returns the filled copy and the mask of filled positions. Leading or trailing gaps (with no
    observed neighbour on one side) raise ``ValueError``: there is nothing to interpolate between.
    """
    values = np.asarray(values, np.float64)
    missing = np.isnan(values)
    if missing.all():
        raise ValueError("the series has no observed values")
    if missing[0] or missing[-1]:
        raise ValueError("the series starts or ends with missing values, which interpolation cannot fill")
    index = np.arange(len(values))
    filled = values.copy()
    filled[missing] = np.interp(index[missing], index[~missing], values[~missing])
    return filled, missing


def _statsmodels_dataset(name: str):
    require("statsmodels", "statsmodels", f"the {name!r} series")
    return importlib.import_module(f"statsmodels.datasets.{name}").load_pandas().data


def _load_sunspots() -> Series:
    frame = _statsmodels_dataset("sunspots")
    return Series(
        "sunspots", frame["SUNACTIVITY"].to_numpy(np.float64), frame["YEAR"].to_numpy(np.float64), 11,
        "sunspot number", "yearly mean sunspot numbers 1700-2008 (statsmodels.datasets.sunspots)",
    )


def _load_co2() -> Series:
    frame = _statsmodels_dataset("co2")
    values, filled = fill_gaps(frame["co2"].to_numpy(np.float64))
    index = frame.index
    times = (index.year + (index.day_of_year - 1) / 365.25).to_numpy(np.float64)
    return Series(
        "co2", values, times, 52, "ppm",
        f"weekly CO2 at Mauna Loa 1958-2001 (statsmodels.datasets.co2); {int(filled.sum())} missing weeks "
        "filled by linear interpolation",
        filled,
    )


def _load_elnino() -> Series:
    frame = _statsmodels_dataset("elnino")
    years = frame["YEAR"].to_numpy(np.float64)
    months = frame.drop(columns="YEAR").to_numpy(np.float64)  # (years, 12), January first
    times = (years[:, None] + np.arange(12)[None, :] / 12.0).ravel()
    return Series(
        "elnino", months.ravel(), times, 12, "°C",
        "monthly sea-surface temperature of the El Nino region 1950-2010 (statsmodels.datasets.elnino)",
    )


SERIES: dict[str, Callable[[], Series]] = {"sunspots": _load_sunspots, "co2": _load_co2, "elnino": _load_elnino}


@functools.cache
def load_series(name: str) -> Series:
    """The series registered as ``name`` (``"sunspots"``, ``"co2"`` or ``"elnino"``), loaded once."""
    return SERIES[_checks.choice("series", name, tuple(SERIES))]()


# ---------------------------------------------------------------------------------------------
# Splits, windows, normalisation


def split_bounds(length: int, fractions: tuple[float, float, float] = SPLIT_FRACTIONS) -> tuple[int, int]:
    """``(train_end, valid_end)``: training is ``[0, train_end)``, validation ``[train_end, valid_end)``,
    test ``[valid_end, length)``, in time order."""
    if len(fractions) != 3 or min(fractions) <= 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    train_end = int(round(fractions[0] * length))
    valid_end = int(round((fractions[0] + fractions[1]) * length))
    return train_end, valid_end


def segment(length: int, bounds: tuple[int, int], split: str) -> tuple[int, int]:
    """``[lo, hi)``: the time indices of ``split``."""
    train_end, valid_end = bounds
    return {"train": (0, train_end), "valid": (train_end, valid_end), "test": (valid_end, length)}[
        _checks.choice("split", split, SPLITS)
    ]


def window_origins(length: int, bounds: tuple[int, int], split: str, window: int, horizon: int) -> np.ndarray:
    """Forecast origins t of ``split``: its targets t+1..t+h lie in the split, its inputs t-W+1..t in the series.

    Training origins start at t = W - 1 (the whole window inside the training part); validation
    and test origins at the step before their part begins.
    """
    lo, hi = segment(length, bounds, split)
    first = max(lo - 1, window - 1)
    last = hi - 1 - horizon
    return np.arange(first, last + 1)


def make_windows(values: np.ndarray, origins: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y)``: ``X[i] = values[t-W+1 .. t]`` (N, W) and ``Y[i] = values[t+1 .. t+h]`` (N, h) for t = origins[i]."""
    origins = np.asarray(origins)
    inputs = values[origins[:, None] + np.arange(-window + 1, 1)[None, :]]
    targets = values[origins[:, None] + np.arange(1, horizon + 1)[None, :]]
    return inputs, targets


@dataclass(frozen=True)
class Normaliser:
    """Standardisation with the training part's mean and standard deviation (see module docstring)."""

    mean: float
    scale: float
    relative: bool = False

    @classmethod
    def fit(cls, train_values: np.ndarray, relative: bool = False) -> "Normaliser":
        train_values = np.asarray(train_values, np.float64)
        scale = float(train_values.std())
        return cls(float(train_values.mean()), scale if scale > 0 else 1.0, bool(relative))

    def reference(self, inputs: np.ndarray) -> np.ndarray:
        """The value subtracted before scaling: μ, or each window's last value (N, 1)."""
        inputs = np.asarray(inputs, np.float64)
        return inputs[:, -1:] if self.relative else np.full((len(inputs), 1), self.mean)

    def inputs(self, inputs: np.ndarray) -> np.ndarray:
        return (np.asarray(inputs, np.float64) - self.reference(inputs)) / self.scale

    def targets(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        return (np.asarray(targets, np.float64) - self.reference(inputs)) / self.scale

    def invert(self, inputs: np.ndarray, normalised: np.ndarray) -> np.ndarray:
        """Normalised forecasts (N, h) back in the original units."""
        return np.asarray(normalised, np.float64) * self.scale + self.reference(inputs)


# ---------------------------------------------------------------------------------------------
# Baselines and metrics


def naive_forecast(inputs: np.ndarray, horizon: int) -> np.ndarray:
    """The last value of each window, repeated for every horizon step: (N, h)."""
    inputs = np.asarray(inputs, np.float64)
    return np.repeat(inputs[:, -1:], horizon, axis=1)


def seasonal_naive_forecast(inputs: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """x̂_{t+k} = x_{t+k-m·ceil(k/m)}: the value one season earlier (the latest observed season), (N, h)."""
    inputs = np.asarray(inputs, np.float64)
    window = inputs.shape[1]
    if season > window:
        raise ValueError(f"the seasonal naive forecast needs a window of at least one season ({season}), got {window}")
    return inputs[:, window - season + np.arange(horizon) % season]


@dataclass(frozen=True)
class LinearAR:
    """Direct multi-step linear autoregression: one least-squares fit per horizon step.

    ``coef`` (W + 1, h): the weights of the window's values (oldest first) and, last, the intercept.
    """

    coef: np.ndarray

    @classmethod
    def fit(cls, inputs: np.ndarray, targets: np.ndarray) -> "LinearAR":
        design = np.column_stack([np.asarray(inputs, np.float64), np.ones(len(inputs))])
        coef, *_ = np.linalg.lstsq(design, np.asarray(targets, np.float64), rcond=None)
        return cls(coef)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        return np.column_stack([np.asarray(inputs, np.float64), np.ones(len(inputs))]) @ self.coef


def mase_scale(train_values: np.ndarray) -> float:
    """The in-sample MAE of the one-step naive forecast on the training part: mean |x_i − x_{i−1}|."""
    diffs = np.abs(np.diff(np.asarray(train_values, np.float64)))
    if len(diffs) == 0 or diffs.mean() == 0:
        raise ValueError("MASE needs a training series of at least two distinct values")
    return float(diffs.mean())


def forecast_metrics(forecasts: np.ndarray, truth: np.ndarray, scale: float) -> dict[str, float]:
    """MAE, RMSE and MASE (MAE / ``scale``, see :func:`mase_scale`) over every forecast and step."""
    forecasts, truth = np.asarray(forecasts, np.float64), np.asarray(truth, np.float64)
    if forecasts.shape != truth.shape:
        raise ValueError(f"forecasts of shape {forecasts.shape} do not match the truth of shape {truth.shape}")
    errors = forecasts - truth
    mae = float(np.mean(np.abs(errors)))
    return {"mae": mae, "rmse": float(np.sqrt(np.mean(errors**2))), "mase": mae / scale}


BASELINES = ("naive", "seasonal naive", "linear AR")


# ---------------------------------------------------------------------------------------------
# The task


@dataclass(frozen=True)
class ForecastTask(DatasetTask):
    """Forecasting the next ``horizon`` values of a real series from a window of ``window`` values.

    The data are normalised windows (see the module docstring); :meth:`forecasts` maps a model's
    outputs back to the original units and :meth:`forecast_report` scores them and the baselines.
    """

    series: Series | None = field(default=None, repr=False, compare=False)
    window: int = 0
    horizon: int = 0
    bounds: tuple[int, int] = (0, 0)
    normaliser: Normaliser | None = None

    def windows(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(X, Y, origins)`` of ``split`` in the original units: X (N, W), Y (N, h), origins (N,)."""
        origins = window_origins(len(self.series), self.bounds, split, self.window, self.horizon)
        inputs, targets = make_windows(self.series.values, origins, self.window, self.horizon)
        return inputs, targets, origins

    @property
    def train_values(self) -> np.ndarray:
        return self.series.values[: self.bounds[0]]

    @property
    def mase_scale(self) -> float:
        return mase_scale(self.train_values)

    def forecasts(self, outputs: Any, split: str) -> np.ndarray:
        """A model's outputs (N, h) (normalised, for the first N windows of ``split``) in the original units."""
        outputs = np.asarray(outputs, np.float64)
        inputs = self.windows(split)[0][: len(outputs)]
        if outputs.shape != (len(inputs), self.horizon):
            raise ValueError(f"{self.name} outputs must have shape (N, {self.horizon}), got {outputs.shape}")
        return self.normaliser.invert(inputs, outputs)

    @functools.cached_property
    def linear_ar(self) -> LinearAR:
        inputs, targets, _ = self.windows("train")
        return LinearAR.fit(inputs, targets)

    def baseline_forecasts(self, split: str) -> dict[str, np.ndarray]:
        """The naive, seasonal-naive and linear-AR forecasts of ``split`` in the original units."""
        inputs = self.windows(split)[0]
        return {
            "naive": naive_forecast(inputs, self.horizon),
            "seasonal naive": seasonal_naive_forecast(inputs, self.horizon, self.series.season),
            "linear AR": self.linear_ar.predict(inputs),
        }

    def forecast_metrics(self, forecasts: np.ndarray, split: str) -> dict[str, float]:
        """MAE, RMSE and MASE of forecasts (N, h) in original units for the first N windows of ``split``."""
        forecasts = np.asarray(forecasts, np.float64)
        truth = self.windows(split)[1][: len(forecasts)]
        return forecast_metrics(forecasts, truth, self.mase_scale)

    def forecast_report(self, outputs: Any | None = None, split: str = "test") -> dict[str, dict[str, float]]:
        """``{predictor: {mae, rmse, mase}}`` for the baselines and, given its ``outputs``, the model."""
        report = {name: self.forecast_metrics(f, split) for name, f in self.baseline_forecasts(split).items()}
        if outputs is not None:
            report = {"model": self.forecast_metrics(self.forecasts(outputs, split), split), **report}
        return report

    def plot_predictions(self, outputs: Any, data: SequenceData, path: str | Path, *, split: str = "test",
                         title: str = "") -> Path:
        """The truth of ``split`` with the model's and the baselines' 1-step and h-step forecasts."""
        from matplotlib.figure import Figure

        del data
        model = self.forecasts(outputs, split)
        baselines = self.baseline_forecasts(split)
        inputs, targets, origins = self.windows(split)
        count = len(model)
        origins, targets = origins[:count], targets[:count]
        times = self.series.times
        steps = sorted({0, self.horizon - 1})
        fig = Figure(figsize=(10, 3.2 * len(steps)), constrained_layout=True)
        axes = fig.subplots(len(steps), 1, squeeze=False)[:, 0]
        lo = max(0, int(origins[0]) - self.window)
        hi = min(len(self.series), int(origins[-1]) + self.horizon + 1)
        for ax, k in zip(axes, steps):
            ax.plot(times[lo:hi], self.series.values[lo:hi], color="black", lw=1.5, label="truth")
            at = times[origins + k + 1]
            ax.plot(at, model[:, k], color="C3", lw=1.5, label="model")
            for (name, forecast), colour in zip(baselines.items(), ("C0", "C2", "C1")):
                ax.plot(at, forecast[:count, k], color=colour, lw=1, ls="--", label=name)
            ax.set_title(f"{k + 1}-step-ahead forecasts ({split} split)")
            ax.set_ylabel(self.series.unit)
            ax.legend(fontsize=8, ncol=5)
        axes[-1].set_xlabel("year")
        if title:
            fig.suptitle(title)
        fig.savefig(path, dpi=100)
        return Path(path)


def forecast_task(name: str, *, length: int, horizon: int, relative: bool | int = False) -> ForecastTask:
    """The forecasting task of series ``name``: windows of ``length`` values → the next ``horizon``."""
    series = load_series(name)
    length = _int_option("length", length, 1)
    horizon = _int_option("horizon", horizon, 1)
    words = {"true": True, "false": False, "yes": True, "no": False}
    if isinstance(relative, str) and relative.lower() in words:  # as given on a command line
        relative = words[relative.lower()]
    if isinstance(relative, (bool, np.bool_)) or relative in (0, 1):
        relative = bool(relative)
    else:
        raise ValueError(f"relative must be true or false (1 or 0), got {relative!r}")
    if series.season > length:
        raise ValueError(
            f"length must be at least one season of the {name} series ({series.season} steps) for the seasonal "
            f"naive baseline, got {length}"
        )
    bounds = split_bounds(len(series))
    for split in SPLITS:
        if len(window_origins(len(series), bounds, split, length, horizon)) < 1:
            raise ValueError(f"the {split} part of the {name} series is too short for length {length} and horizon {horizon}")
    normaliser = Normaliser.fit(series.values[: bounds[0]], relative)

    @functools.cache
    def splits(split: str) -> SequenceData:
        origins = window_origins(len(series), bounds, split, length, horizon)
        inputs, targets = make_windows(series.values, origins, length, horizon)
        x = normaliser.inputs(inputs)[..., None].astype(np.float32)
        y = normaliser.targets(inputs, targets).astype(np.float32)
        n = len(x)
        loss_mask = np.zeros((n, length), bool)
        loss_mask[:, -1] = True
        return SequenceData(x, y, np.ones((n, length), bool), loss_mask)

    def baseline(data: SequenceData) -> np.ndarray:
        """The naive forecast in the network's (normalised) units: the window's last value."""
        last = data.inputs[:, -1, 0].astype(np.float64)
        return np.repeat(last[:, None], horizon, 1).astype(np.float32)  # 0 when relative

    test = splits("test")
    baseline_mse = float(np.mean((baseline(test).astype(np.float64) - test.targets) ** 2))
    return ForecastTask(
        name=name,
        input_size=1,
        output_size=horizon,
        input_kind="vectors",
        objective="last-mse",
        metric="mse",
        description=f"forecast the next {horizon} values of {series.description} from the last {length} "
        f"(normalised{', relative to the last value' if relative else ''}; season {series.season})",
        baseline_metric=baseline_mse,
        options={"length": length, "horizon": horizon, "relative": relative},
        sampler=bootstrap_sampler(splits),
        baseline_outputs=baseline,
        splits=splits,
        series=series,
        window=length,
        horizon=horizon,
        bounds=bounds,
        normaliser=normaliser,
    )


def _int_option(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sunspots(*, length: int = 33, horizon: int = 5, relative: bool = False) -> ForecastTask:
    """Yearly sunspot numbers: from 33 years (three solar cycles) forecast the next 5 (see module docstring)."""
    return forecast_task("sunspots", length=length, horizon=horizon, relative=relative)


def co2(*, length: int = 104, horizon: int = 13, relative: bool = True) -> ForecastTask:
    """Weekly Mauna Loa CO₂: from 104 weeks (two years) forecast the next 13 (a quarter), relative to the last week."""
    return forecast_task("co2", length=length, horizon=horizon, relative=relative)


def elnino(*, length: int = 36, horizon: int = 6, relative: bool = False) -> ForecastTask:
    """Monthly El Niño sea-surface temperatures: from 36 months forecast the next 6."""
    return forecast_task("elnino", length=length, horizon=horizon, relative=relative)


FORECAST_TASKS = {"sunspots": sunspots, "co2": co2, "elnino": elnino}
TASKS.update(FORECAST_TASKS)

__all__ = [
    "BASELINES", "DatasetTask", "ForecastTask", "LinearAR", "MissingExtraError", "Normaliser", "Series",
    "fill_gaps", "forecast_metrics", "load_series", "make_windows", "mase_scale", "naive_forecast",
    "seasonal_naive_forecast", "split_bounds", "window_origins",
]
