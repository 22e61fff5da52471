r"""The model × task comparison: every cell trained on every task with the same budget and seeds.

:func:`compare` trains each (task, cell) pair for ``steps`` Adam updates of ``batch`` sequences,
at the same hidden size, learning rate and schedule, once per seed (the seed sets the data draw of
synthetic tasks, the initialisation and the batch order; every pair sees the same seeds). The
model of the best validation loss (evaluated four times during training) is scored on the test
split. Per task the headline metric is

* the task's own metric (MSE or accuracy) for the synthetic tasks and the digits,
* MASE in the original units for forecasting (with MAE and RMSE beside it), against the best of
  the naive, seasonal-naive and linear-autoregressive baselines,
* exact-match accuracy of greedy decoding for ``numbers``, trained as an encoder–decoder
  (:class:`recurrax.seq2seq.Seq2Seq`) with teacher forcing; beam search beside it.

Each row of the result holds the metric's mean and standard deviation over seeds, the baseline
on the same test data, the number of parameters and the wall time per run (data, compilation,
training and evaluation). Generated tasks draw ``train_size`` training and ``valid_size``
validation and test sequences; fixed data sets (forecasting, digits) use their whole splits.
:func:`write_report` writes ``comparison.csv``, ``comparison.md``,
``comparison.png``, ``forecasts.csv`` (the forecasting models beside the baselines) and a plot of
predictions per pair in ``predictions/``.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import equinox as eqx
import jax
import numpy as np

from . import _checks
from .cells import CELLS
from .data.tasks import SPLITS, TASKS, SequenceData, Task, get_task
from .models import SequenceModel
from .train.losses import is_last_step
from .train.trainer import ShuffledBatches, TrainConfig, fit

MIN_STEPS = 10
"""A budget below this many updates is refused: too small to train anything."""

MARGIN = 0.05
"""A model "beats" the baseline when it is better by more than this fraction of the baseline's score."""

EVALUATIONS = 4
"""Validation evaluations per run (the best one is kept)."""

DEFAULT_TASKS = ("adding", "copy", "moving-ball", "navigation", "sunspots", "digits-rows", "numbers")
DEFAULT_CELLS = ("elman", "gru", "lstm")


@dataclass(frozen=True)
class Budget:
    """What every pair gets: updates, batch, hidden size, data sizes, optimiser settings."""

    steps: int = 500
    batch: int = 32
    hidden: int = 64
    learning_rate: float = 3e-3
    train_size: int = 5000
    valid_size: int = 500
    beam_width: int = 4
    clip: float = 1.0


@dataclass
class Run:
    """One trained model: the headline metric and extras on the test split."""

    value: float
    baseline: float
    baseline_name: str
    parameters: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class Row:
    """One (task, cell) pair over all seeds."""

    task: str
    cell: str
    metric: str
    higher_is_better: bool
    values: list[float]
    baseline: float
    baseline_name: str
    parameters: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    @property
    def beats_baseline(self) -> bool:
        """Better than the baseline by more than ``MARGIN`` of it (a tie within noise is not a win)."""
        margin = MARGIN * abs(self.baseline)
        if self.higher_is_better:
            return self.mean > self.baseline + max(margin, 1e-12)
        return self.mean < self.baseline - max(margin, 1e-12)


def parse_task_option(text: str) -> tuple[str, str, Any]:
    """``"adding.length=50"`` → ``("adding", "length", 50)`` (values become int, float or stay text)."""
    import argparse

    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected TASK.KEY=VALUE (e.g. adding.length=50), got {text!r}")
    name, value = text.split("=", 1)
    task, key = name.split(".", 1)
    for convert in (int, float):
        try:
            return task, key.replace("-", "_"), convert(value)
        except ValueError:
            pass
    return task, key.replace("-", "_"), value


def _is_forecast(task: Task) -> bool:
    return hasattr(task, "forecast_report")


def _is_translation(task: Task) -> bool:
    return hasattr(task, "exact_match")


def build_tasks(names: Sequence[str], options: dict[str, dict[str, Any]] | None = None) -> dict[str, Task]:
    """The tasks by name, built (and their data loaded) up front, so bad input fails before training."""
    names = _checks.names("task", names, tuple(TASKS))
    options = options or {}
    for name in options:
        if name not in names:
            raise ValueError(f"an option is given for task {name!r}, which is not compared")
    return {name: get_task(name, **options.get(name, {})) for name in names}


def check_budget(budget: Budget, tasks: dict[str, Task]) -> None:
    """Refuse budgets too small to train: few updates, or training sets smaller than one batch."""
    if budget.steps < MIN_STEPS:
        raise ValueError(f"a budget of {budget.steps} steps is too small to train; give at least {MIN_STEPS}")
    for name, value in (("batch", budget.batch), ("hidden", budget.hidden), ("train_size", budget.train_size),
                        ("valid_size", budget.valid_size), ("beam_width", budget.beam_width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not budget.learning_rate > 0:
        raise ValueError(f"the learning rate must be positive, got {budget.learning_rate}")
    for name, task in tasks.items():
        size = split_size(task, "train", budget)
        if size < budget.batch:
            raise ValueError(f"task {name!r} would train on {size} sequences, fewer than one batch of {budget.batch}; "
                             "lower --batch or raise --train-size")


def count_parameters(model) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))))


def build_model(task: Task, cell: str, hidden: int, seed: int):
    """The model for ``task``: an encoder–decoder for translation, else a SequenceModel shaped for it."""
    key = jax.random.key(seed)
    if _is_translation(task):
        from .seq2seq import Seq2Seq

        return Seq2Seq(cell, task.input_size, task.output_size, hidden, source_length=task.source_length, key=key)
    return SequenceModel(
        cell, task.input_size, hidden, task.output_size, input_kind=task.input_kind,
        readout="last" if is_last_step(task.objective) else "every", key=key,
    )


@eqx.filter_jit
def _forward(model, inputs, mask):
    return jax.vmap(lambda x, m: model(x, mask=m))(inputs, mask)


def predict(model, data: SequenceData, batch_size: int = 256) -> np.ndarray:
    """The model's outputs on every sequence of ``data`` (batches padded to one shape: one compilation)."""
    n = len(data)
    size = min(batch_size, n)
    outputs = []
    for lo in range(0, n, size):
        inputs, mask = data.inputs[lo : lo + size], data.mask[lo : lo + size]
        short = size - len(inputs)
        if short:
            inputs = np.concatenate([inputs, np.repeat(inputs[-1:], short, 0)])
            mask = np.concatenate([mask, np.repeat(mask[-1:], short, 0)])
        outputs.append(np.asarray(_forward(model, inputs, mask))[: size - short])
    return np.concatenate(outputs)


def mean_loss(objective: str, outputs: np.ndarray, data: SequenceData) -> float:
    """The training objective's mean loss (``reduce="mean"``) computed from outputs, in NumPy."""
    outputs = np.asarray(outputs, np.float64)
    if objective.endswith("xent"):
        logp = outputs - outputs.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        per_item = -np.take_along_axis(logp, data.targets[..., None].astype(np.int64), -1)[..., 0]
    else:
        per_item = ((outputs - data.targets) ** 2).sum(-1)
    if objective.startswith("last"):
        return float(per_item.mean())
    weights = data.loss_mask.astype(np.float64)
    return float(np.mean((per_item * weights).sum(1) / np.maximum(weights.sum(1), 1.0)))


def _as_batch(data: SequenceData) -> dict[str, np.ndarray]:
    return {"inputs": data.inputs, "targets": data.targets, "mask": data.mask, "loss_mask": data.loss_mask}


def _metric_name(task: Task) -> str:
    if _is_forecast(task):
        return "MASE"
    if _is_translation(task):
        return "exact match"
    return task.metric


def _higher_is_better(task: Task) -> bool:
    if _is_forecast(task):
        return False
    return True if _is_translation(task) else task.higher_is_better


def split_size(task: Task, split: str, budget: Budget) -> int:
    """Sequences drawn for ``split``: the budget's sizes for generated tasks, the whole split of a fixed data set."""
    if hasattr(task, "size"):
        return task.size(split)
    return budget.train_size if split == "train" else budget.valid_size


def run_one(task: Task, cell: str, seed: int, budget: Budget, *, plot_path: Path | None = None) -> Run:
    """Train ``cell`` on ``task`` with ``seed`` under ``budget`` and score the best model on the test split."""
    started = time.perf_counter()
    train, valid, test = (task.generate(split, split_size(task, split, budget), seed) for split in SPLITS)
    model = build_model(task, cell, budget.hidden, seed)
    config = TrainConfig(
        steps=budget.steps, batch_size=budget.batch, learning_rate=budget.learning_rate, schedule="cosine",
        warmup=budget.steps // 20, clip=budget.clip, eval_every=max(1, budget.steps // EVALUATIONS),
        log_every=budget.steps, seed=seed,
    )

    def evaluate(m) -> dict[str, float]:
        return {"valid_loss": mean_loss(task.objective, predict(m, valid), valid)}

    result = fit(model, ShuffledBatches(_as_batch(train), budget.batch, seed), objective=task.objective,
                 config=config, evaluate=evaluate, progress=False)
    best = result.best_model
    outputs = predict(best, test)
    extra: dict[str, float] = {"valid_loss": result.best_valid_loss}
    if _is_forecast(task):
        report = task.forecast_report(outputs, "test")
        extra.update({k: v for k, v in report["model"].items() if k != "mase"})
        baselines = {name: r["mase"] for name, r in report.items() if name != "model"}
        baseline_name = min(baselines, key=baselines.get)
        value, baseline = report["model"]["mase"], baselines[baseline_name]
        extra.update({f"{name} {k}": v for name, r in report.items() if name != "model" for k, v in r.items()})
    elif _is_translation(task):
        from .seq2seq import decode

        sources = task.source(test)
        greedy = np.asarray(decode(best, sources, task.target_length))
        beam = np.asarray(decode(best, sources, task.target_length, beam_width=budget.beam_width))
        value = task.exact_match(greedy, test)
        extra["beam exact match"] = task.exact_match(beam, test)
        extra["token accuracy"] = task.score(outputs, test)
        extra["examples"] = task.examples(greedy, test, count=12)  # type: ignore[assignment]
        baseline, baseline_name = 0.0, "constant"
    else:
        value = task.score(outputs, test)
        baseline, baseline_name = task.score(task.baseline_outputs(test), test), _baseline_name(task)
    if plot_path is not None:
        plot_predictions(task, outputs, test, plot_path, title=f"{task.name} × {cell}",
                         decoded=greedy if _is_translation(task) else None)
    return Run(value, baseline, baseline_name, count_parameters(model), time.perf_counter() - started, extra)


def _baseline_name(task: Task) -> str:
    return {"adding": "predict 1", "copy": "constant symbol", "moving-ball": "last position",
            "navigation": "dead reckoning"}.get(task.name, "majority class" if task.metric == "accuracy" else "trivial")


def compare(
    tasks: Sequence[str],
    cells: Sequence[str],
    *,
    budget: Budget = Budget(),
    seeds: int | Sequence[int] = 1,
    task_options: dict[str, dict[str, Any]] | None = None,
    out: str | Path | None = None,
    log: Callable[[str], None] | None = print,
) -> list[Row]:
    """Train every (task, cell) pair with the same ``budget`` and ``seeds``; one :class:`Row` per pair.

    ``seeds`` is a count (seeds 0..n-1) or a list. With ``out`` the report is written there
    (:func:`write_report`) and a plot of the first seed's predictions per pair goes to
    ``out/predictions``. ``log`` receives one progress line per pair.
    """
    cells = _checks.names("cell", cells, tuple(CELLS))
    built = build_tasks(tasks, task_options)
    check_budget(budget, built)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seed_list or any(s < 0 for s in seed_list):
        raise ValueError(f"seeds must be a positive count or a list of non-negative seeds, got {seeds!r}")
    out = None if out is None else Path(out)
    if out is not None:
        (out / "predictions").mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    total, started = len(built) * len(cells), time.perf_counter()
    if log is not None:
        log(f"comparing {len(cells)} cell(s) on {len(built)} task(s): {budget.steps} steps of {budget.batch}, "
            f"hidden {budget.hidden}, seed(s) {', '.join(map(str, seed_list))}"
            + (f"; results in {out}" if out is not None else ""))
    for task in built.values():
        for cell in cells:
            runs = []
            for i, seed in enumerate(seed_list):
                plot = out / "predictions" / f"{task.name}-{cell}.png" if out is not None and i == 0 else None
                runs.append(run_one(task, cell, seed, budget, plot_path=plot))
            row = _aggregate(task, cell, runs)
            rows.append(row)
            if log is not None:
                elapsed = time.perf_counter() - started
                log(f"[{len(rows)}/{total}] {task.name} × {cell}: {row.metric} {_format_value(row)} "
                    f"(baseline {row.baseline:.4g}, {row.baseline_name}) {row.parameters:,} parameters, "
                    f"{row.seconds:.1f} s per run; {elapsed:.0f} s so far")
    if out is not None:
        write_report(rows, out)
    return rows


def _aggregate(task: Task, cell: str, runs: list[Run]) -> Row:
    extra: dict[str, Any] = {}
    for key, value in runs[0].extra.items():
        if isinstance(value, (int, float)):
            extra[key] = float(np.mean([r.extra[key] for r in runs]))
        else:
            extra[key] = value
    return Row(
        task=task.name, cell=cell, metric=_metric_name(task), higher_is_better=_higher_is_better(task),
        values=[r.value for r in runs], baseline=float(np.mean([r.baseline for r in runs])),
        baseline_name=runs[0].baseline_name, parameters=runs[0].parameters,
        seconds=float(np.mean([r.seconds for r in runs])), extra=extra,
    )


def _format_value(row: Row) -> str:
    text = f"{row.mean:.4g}"
    text += f" ± {row.std:.2g}" if len(row.values) > 1 else ""
    beam = row.extra.get("beam exact match")
    return text + (f" (beam {beam:.3g})" if beam is not None else "")


# ---------------------------------------------------------------------------------------------
# Report


def format_table(rows: Sequence[Row], *, markdown: bool = False) -> str:
    """The comparison as an aligned text table (or a Markdown table)."""
    header = ["task", "cell", "metric", "value", "baseline", "beats", "parameters", "seconds"]
    body = []
    for r in rows:
        arrow = "↑" if r.higher_is_better else "↓"
        body.append([r.task, r.cell, f"{r.metric} {arrow}", _format_value(r), f"{r.baseline:.4g} ({r.baseline_name})",
                     "yes" if r.beats_baseline else "no", f"{r.parameters:,}", f"{r.seconds:.1f}"])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(lines)


def forecast_rows(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """MAE, RMSE and MASE of the baselines and of every cell, per forecasting task (test split)."""
    table = []
    for task in dict.fromkeys(r.task for r in rows if r.metric == "MASE"):
        task_rows = [r for r in rows if r.task == task]
        first = task_rows[0].extra
        from .data.series import BASELINES

        for name in BASELINES:
            table.append({"task": task, "predictor": name, "mae": first[f"{name} mae"],
                          "rmse": first[f"{name} rmse"], "mase": first[f"{name} mase"]})
        for r in task_rows:
            table.append({"task": task, "predictor": r.cell, "mae": r.extra["mae"], "rmse": r.extra["rmse"],
                          "mase": r.mean})
    return table


def format_forecasts(table: Sequence[dict[str, Any]], *, markdown: bool = False) -> str:
    header = ["task", "predictor", "MAE", "RMSE", "MASE"]
    body = [[t["task"], t["predictor"], f"{t['mae']:.4g}", f"{t['rmse']:.4g}", f"{t['mase']:.3f}"] for t in table]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *body)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body])


def write_csv(rows: Sequence[Row], path: str | Path) -> Path:
    extras = list(dict.fromkeys(k for r in rows for k, v in r.extra.items() if isinstance(v, float)))
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "cell", "metric", "higher_is_better", "mean", "std", "seeds", "values",
                         "baseline", "baseline_name", "beats_baseline", "parameters", "seconds"] + extras)
        for r in rows:
            writer.writerow([r.task, r.cell, r.metric, r.higher_is_better, f"{r.mean:.6g}", f"{r.std:.6g}",
                             len(r.values), ";".join(f"{v:.6g}" for v in r.values), f"{r.baseline:.6g}",
                             r.baseline_name, r.beats_baseline, r.parameters, f"{r.seconds:.2f}"]
                            + [f"{r.extra[k]:.6g}" if k in r.extra else "" for k in extras])
    return Path(path)


def read_csv(path: str | Path) -> list[Row]:
    """The rows of a ``comparison.csv`` (to redraw or reformat a report without training again)."""
    fixed = {"task", "cell", "metric", "higher_is_better", "mean", "std", "seeds", "values", "baseline",
             "baseline_name", "beats_baseline", "parameters", "seconds"}
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows.append(Row(
                task=r["task"], cell=r["cell"], metric=r["metric"], higher_is_better=r["higher_is_better"] == "True",
                values=[float(v) for v in r["values"].split(";")], baseline=float(r["baseline"]),
                baseline_name=r["baseline_name"], parameters=int(r["parameters"]), seconds=float(r["seconds"]),
                extra={k: float(v) for k, v in r.items() if k not in fixed and v not in ("", None)},
            ))
    return rows


def plot_comparison(rows: Sequence[Row], path: str | Path) -> Path:
    """One panel per task: the metric of every cell (mean ± std over seeds) and the baseline (dashed)."""
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r.task for r in rows))
    cols = min(3, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * nrows), constrained_layout=True)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.remove()
    for ax, task in zip(axes, tasks):
        task_rows = [r for r in rows if r.task == task]
        x = np.arange(len(task_rows))
        colours = ["C2" if r.beats_baseline else "C3" for r in task_rows]
        ax.bar(x, [r.mean for r in task_rows], yerr=[r.std for r in task_rows], color=colours, capsize=3)
        ax.axhline(task_rows[0].baseline, color="black", ls="--", lw=1, label=f"baseline: {task_rows[0].baseline_name}")
        ax.set_xticks(x, [r.cell for r in task_rows], rotation=45, ha="right", fontsize=8)
        first = task_rows[0]
        ax.set_title(f"{task}: {first.metric} ({'higher' if first.higher_is_better else 'lower'} is better)", fontsize=9)
        if first.metric == "mse" and all(r.mean > 0 for r in task_rows) and first.baseline > 0:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.suptitle("recurrax compare: green beats the baseline, red does not")
    fig.savefig(path, dpi=100)
    return Path(path)


def plot_predictions(task: Task, outputs: np.ndarray, data: SequenceData, path: str | Path, *, title: str = "",
                     decoded: np.ndarray | None = None) -> Path:
    """The task's own prediction plot when it has one, else a generic plot for its objective."""
    from matplotlib.figure import Figure

    own = getattr(task, "plot_predictions", None)
    if own is not None and own(outputs, data, path, title=title) is not None:
        return Path(path)
    fig = Figure(figsize=(8, 4.5), constrained_layout=True)
    ax = fig.add_subplot()
    if decoded is not None:  # translation: a few examples as text
        ax.axis("off")
        lines = task.examples(decoded, data, count=16)
        ax.text(0.0, 1.0, "greedy decoding on test numbers  (✗: wrong)\n\n" + "\n".join(lines), va="top",
                family="monospace", fontsize=8)
    elif task.objective == "last-mse":
        ax.scatter(data.targets.ravel(), np.asarray(outputs).ravel(), s=4, alpha=0.5)
        lo, hi = float(data.targets.min()), float(data.targets.max())
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        ax.set_xlabel("target")
        ax.set_ylabel("prediction")
    elif task.objective == "per-step-mse":
        steps = np.arange(data.length)
        for k in range(min(2, task.output_size)):
            ax.plot(steps, data.targets[0, :, k], color=f"C{k}", lw=1.5, label=f"target {k}")
            ax.plot(steps, np.asarray(outputs)[0, :, k], color=f"C{k}", ls="--", label=f"prediction {k}")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    else:  # per-step classification: accuracy at each scored step
        hits = (np.argmax(outputs, -1) == data.targets) & data.loss_mask
        counts = data.loss_mask.sum(0)
        steps = np.flatnonzero(counts)
        ax.bar(steps, hits.sum(0)[steps] / counts[steps])
        ax.set_xlabel("step")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.savefig(path, dpi=100)
    return Path(path)


def write_report(rows: Sequence[Row], out: str | Path) -> dict[str, Path]:
    """``comparison.csv``, ``comparison.md`` (table and forecasts), ``comparison.png``, ``forecasts.csv``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(rows, out / "comparison.csv"), "png": plot_comparison(rows, out / "comparison.png")}
    markdown = [format_table(rows, markdown=True)]
    forecasts = forecast_rows(rows)
    if forecasts:
        with open(out / "forecasts.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["task", "predictor", "mae", "rmse", "mase"])
            writer.writeheader()
            writer.writerows(forecasts)
        paths["forecasts"] = out / "forecasts.csv"
        markdown += ["", "Forecasting (test split, original units):", "", format_forecasts(forecasts, markdown=True)]
    examples = [(r, r.extra["examples"]) for r in rows if "examples" in r.extra]
    if examples:
        text = []
        for r, lines in examples:
            text += [f"{r.task} × {r.cell} (greedy; exact match {r.mean:.3f}, beam {r.extra['beam exact match']:.3f}):"]
            text += ["  " + line for line in lines] + [""]
        (out / "translations.txt").write_text("\n".join(text))
        paths["translations"] = out / "translations.txt"
    (out / "comparison.md").write_text("\n".join(markdown) + "\n")
    paths["md"] = out / "comparison.md"
    return paths
