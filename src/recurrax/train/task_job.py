"""Training a sequence model on a registered task (adding, copy, moving ball, ...).

Used by ``recurrax train --task NAME``: builds the task's data and a matching model, trains with
the chosen BPTT strategy, evaluates the best model on the test split and compares it with the
task's trivial baseline.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax

from ..data.tasks import Task, get_task
from ..models import SequenceModel
from . import run_dir as runs
from .losses import is_last_step
from .trainer import ShuffledBatches, TrainConfig, evaluate_sequences, fit

RESULTS = "results.json"


def build_task(options: dict) -> Task:
    return get_task(options["task"], **options["task_options"])


def build_model(task: Task, options: dict) -> SequenceModel:
    """A model shaped for ``task``: token or vector inputs, per-step or last-step readout."""
    return SequenceModel(
        options["cell"], task.input_size, options["hidden"], task.output_size, num_layers=options["layers"],
        bidirectional=options["bidirectional"], input_kind=task.input_kind, embed_size=options["embed"],
        readout="last" if is_last_step(task.objective) else "every", dropout=options["dropout"],
        scan=options["scan"], key=jax.random.key(options["seed"]),
    )


def train_config(options: dict) -> TrainConfig:
    return TrainConfig(
        steps=options["steps"], batch_size=options["batch"], learning_rate=options["lr"],
        optimizer=options["optimizer"], schedule=options["schedule"], warmup=options["warmup"],
        clip=options["clip"] or None, weight_decay=options["weight_decay"], bptt=options["bptt"],
        chunk=options["chunk"], stride=options["stride"], reduce="mean", eval_every=options["eval_every"],
        patience=options["patience"], log_every=options["log_every"], seed=options["seed"],
    )


def as_batch(data) -> dict:
    return {field.name: getattr(data, field.name) for field in dataclasses.fields(data)}


def train_task(options: dict, run_dir: Path | None, *, resume: bool = False, progress: bool = True,
               out: Callable[[str], None] = print) -> dict[str, Any]:
    """Train on ``options["task"]``; returns (and writes to ``RUN_DIR/results.json``) the test scores."""
    task = build_task(options)
    config = train_config(options)
    if options["bidirectional"] and config.bptt == "truncated":
        raise ValueError("truncated BPTT carries the state forward in time; a bidirectional model cannot use it")
    seed = options["seed"]
    train = as_batch(task.generate("train", options["train_size"], seed))
    valid = as_batch(task.generate("valid", options["valid_size"], seed))
    test_data = task.generate("test", options["valid_size"], seed)
    test = as_batch(test_data)
    # The trivial predictor scored on the very sequences the model is scored on (a fixed data set
    # cut to its first --valid-size examples, or one generated sample), not the task's reference figure.
    baseline = task.score(task.baseline_outputs(test_data), test_data)
    model = build_model(task, options)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(model) if hasattr(x, "size"))
    out(f"task {task.name}: {task.description}; baseline {task.metric} {baseline:.4g} on the test split")
    out(f"model: {options['cell']} x{options['layers']}{' bidirectional' if options['bidirectional'] else ''}, "
        f"hidden {options['hidden']}, {n_params:,} parameters; {config.bptt} BPTT, {config.steps} steps")

    def evaluate(m, data=valid):
        return evaluate_sequences(m, data, objective=task.objective, metric=task.metric, reduce=config.reduce)

    started = time.perf_counter()
    result = fit(
        model, ShuffledBatches(train, config.batch_size, seed), objective=task.objective, config=config,
        evaluate=evaluate, run_dir=run_dir, resume=resume, run_config={"task": task.name, "options": options},
        progress=progress,
    )
    scores = evaluate(result.best_model, test)
    results = {
        "task": task.name, "cell": options["cell"], "metric": task.metric,
        "test_metric": scores[f"valid_{task.metric}"], "test_loss": scores["valid_loss"],
        "best_valid_loss": result.best_valid_loss, "baseline_metric": baseline,
        "steps": result.step, "stopped_early": result.stopped_early, "seconds": time.perf_counter() - started,
        "parameters": n_params,
    }
    out(f"test {task.metric} {results['test_metric']:.4g} (baseline {baseline:.4g}) after {result.step} steps")
    if run_dir is not None:
        runs.write_json(Path(run_dir) / RESULTS, results)
    return results
