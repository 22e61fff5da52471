"""The trainer: ``fit`` runs a BPTT strategy with an Optax optimiser, evaluates, stops early,
logs, checkpoints and resumes.

The order of batches, dropout keys and curriculum stages is a pure function of ``(seed, step)``,
and the checkpoint holds the model, the optimiser state, the carried recurrent state and the
early-stopping state, so a resumed run repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import _checks
from . import checkpoint, run_dir as runs
from .bptt import BPTT, batch_loss, batched_initial_state, make_update
from .losses import REDUCTIONS, is_last_step
from .progress import Progress

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")
METRICS = ("mse", "accuracy")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``steps`` counts updates; a truncated-BPTT batch is one step however many chunks it has.

    ``batch_size`` is the number of sequences in a batch: the batch source makes the batches (the
    jobs build theirs from it), and :func:`fit` refuses a source whose batches have another size,
    so that the configuration a run records is the one it ran with.
    ``clip`` is the global-norm bound on the gradient (the remedy for exploding gradients; ``None``
    turns it off). ``patience`` stops training after that many evaluations without a better
    validation loss (``None``: never).
    """

    steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "constant"
    warmup: int = 0
    clip: float | None = 1.0
    weight_decay: float = 0.0
    bptt: str = "full"
    chunk: int | None = None
    stride: int = 1
    reduce: str = "mean"
    eval_every: int = 200
    patience: int | None = None
    log_every: int = 50
    seed: int = 0

    def __post_init__(self):
        _checks.positive_int("steps", self.steps)
        _checks.positive_int("batch_size", self.batch_size)
        _checks.positive_int("eval_every", self.eval_every)
        _checks.positive_int("log_every", self.log_every)
        _checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        _checks.choice("schedule", self.schedule, SCHEDULES)
        _checks.choice("reduce", self.reduce, REDUCTIONS)
        for name in ("learning_rate", "weight_decay", "clip"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
                raise TypeError(f"{name} must be a number, got {value!r}")
        if not 0 < self.learning_rate < math.inf:
            raise ValueError(f"learning_rate must be positive and finite, got {self.learning_rate}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay must be >= 0 and finite, got {self.weight_decay}")
        if self.weight_decay and self.optimizer != "adamw":
            raise ValueError(
                f"weight_decay is AdamW's (optimizer='adamw'); optimizer {self.optimizer!r} would ignore it"
            )
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, (int, np.integer)):
            raise TypeError(f"warmup must be an integer number of steps, got {self.warmup!r}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be positive (or None to turn clipping off), got {self.clip}")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise ValueError(f"warmup must be in [0, steps), got {self.warmup}")
        if self.patience is not None:
            _checks.positive_int("patience", self.patience)
        self.strategy  # validates bptt/chunk/stride

    @property
    def strategy(self) -> BPTT:
        return BPTT(self.bptt, self.chunk, self.stride)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_optimizer(config: TrainConfig, updates_per_step: int = 1) -> optax.GradientTransformation:
    """Global-norm clipping, then Adam/AdamW/SGD with a constant or cosine schedule and linear warmup.

    AdamW's decoupled weight decay acts on every parameter, biases and embeddings included.

    The schedule runs over ``config.steps`` steps of ``updates_per_step`` optimiser updates each
    (truncated BPTT updates once per chunk: :meth:`~recurrax.train.bptt.BPTT.updates_per_step`).
    """
    updates_per_step = _checks.positive_int("updates_per_step", updates_per_step)
    if config.schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup, config.steps, 0.0)
    elif config.warmup:
        lr = optax.join_schedules(
            [optax.linear_schedule(0.0, config.learning_rate, config.warmup), optax.constant_schedule(config.learning_rate)],
            [config.warmup],
        )
    else:
        lr = config.learning_rate
    if callable(lr) and updates_per_step > 1:
        per_step = lr
        lr = lambda count: per_step(count // updates_per_step)  # noqa: E731
    base = {
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr, weight_decay=config.weight_decay),
        "sgd": lambda: optax.sgd(lr, momentum=0.9),
    }[config.optimizer]()
    return base if config.clip is None else optax.chain(optax.clip_by_global_norm(config.clip), base)


UPDATE_CACHE_SIZE = 16
"""How many compiled updates :func:`shared_update` keeps (one per model structure and optimiser)."""


def _optimizer_settings(config: TrainConfig) -> TrainConfig:
    """``config`` with the fields that leave the update's computation unchanged (the seed, the
    evaluation and logging intervals, the patience) set to fixed values: runs that differ only in
    them share one update."""
    return dataclasses.replace(config, seed=0, eval_every=1, log_every=1, patience=None)


@functools.lru_cache(maxsize=UPDATE_CACHE_SIZE)
def _cached_update(static, settings: TrainConfig, updates_per_step: int, objective: str) -> Callable:
    optimizer = make_optimizer(settings, updates_per_step)
    return make_update(static, optimizer, objective, settings.reduce, settings.strategy)


def shared_update(static, config: TrainConfig, updates_per_step: int, objective: str) -> Callable:
    """The jitted update of :func:`~recurrax.train.bptt.make_update` for ``config``'s optimiser and BPTT
    strategy, shared by every call with an equal model structure ``static`` and equal optimiser
    settings, so that runs which differ only in their seed (``recurrax compare --seeds N``) compile
    it once, not once each (an LSTM's update took 0.9 s to compile at hidden size 64).

    A model whose static part cannot be hashed (a list, an integer array) gets an update of its own.
    """
    settings = _optimizer_settings(config)
    try:
        hash((static, settings))
    except TypeError:
        return _cached_update.__wrapped__(static, settings, updates_per_step, objective)
    return _cached_update(static, settings, updates_per_step, objective)


class BatchSource(Protocol):
    """Where training batches come from: ``batch(epoch, index)`` for ``index < batches_per_epoch``.

    ``carries_state``: consecutive batches of an epoch continue the same streams (a language
    model's contiguous text), so the final state of one batch starts the next.
    """

    batches_per_epoch: int
    carries_state: bool

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]: ...


class ShuffledBatches:
    """Independent sequences (N, T, ...), reshuffled every epoch with a generator seeded by (seed, epoch).

    An epoch is N // batch_size whole batches: the N mod batch_size sequences left over by each
    epoch's shuffle sit that epoch out (a different few each time)."""

    carries_state = False

    def __init__(self, data: Mapping[str, np.ndarray], batch_size: int, seed: int = 0):
        batch_size = _checks.positive_int("batch_size", batch_size)
        _checks.seed(seed)
        self.data = {k: np.asarray(v) for k, v in data.items() if v is not None}
        self.size = len(self.data["inputs"])
        sizes = {k: len(v) for k, v in self.data.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the data's arrays must hold one entry per sequence; their lengths differ: {sizes}")
        if self.size < batch_size:
            raise ValueError(f"the training set has {self.size} sequences, fewer than one batch of {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = self.size // batch_size

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        return {k: v[chosen] for k, v in self.data.items()}


def evaluate_sequences(model, data: Mapping[str, np.ndarray], *, objective: str, metric: str, reduce: str = "mean",
                       batch_size: int = 256) -> dict[str, float]:
    """Mean loss and ``metric`` (``"mse"`` per scored step and feature, or ``"accuracy"``) over a data set."""
    _checks.choice("metric", metric, METRICS)
    batch_size = _checks.positive_int("batch_size", batch_size)
    data = {k: np.asarray(v) for k, v in data.items() if v is not None}
    n = len(data["inputs"])
    total_loss = total_metric = count = 0.0
    for lo in range(0, n, batch_size):
        batch = {k: v[lo : lo + batch_size] for k, v in data.items()}
        loss_sum, metric_sum, weight = jax.device_get(_batch_stats(model, batch, objective, reduce, metric))
        total_loss += float(loss_sum)
        total_metric += float(metric_sum)
        count += float(weight)
    return {"valid_loss": total_loss / n, f"valid_{metric}": total_metric / max(count, 1.0)}


@eqx.filter_jit
def _batch_stats(model, batch, objective: str, reduce: str, metric: str):
    """The batch's summed loss, summed ``metric`` and the number of scored entries it is summed over.

    Compiled once per model structure, objective and batch shape (defined here, not inside
    :func:`evaluate_sequences`, so that every evaluation of a training run reuses it: a function
    jitted anew at each call was compiled anew at each evaluation, 0.24 s each for the adding task).
    """
    params, static = eqx.partition(model, eqx.is_inexact_array)
    loss, _ = batch_loss(params, static, batch, objective=objective, reduce=reduce)
    outputs = jax.vmap(lambda x, mk, st: model(x, mask=mk, starts=st))(batch["inputs"], batch["mask"],
                                                                         batch.get("starts"))
    targets = batch["targets"]
    weights = None if is_last_step(objective) else batch.get("loss_mask", batch["mask"])
    if metric == "accuracy":
        hits = (jnp.argmax(outputs, -1) == targets).astype(jnp.float32)
    else:
        hits = jnp.mean((outputs - targets) ** 2, axis=-1)
    if weights is None:
        return loss * len(targets), jnp.sum(hits), jnp.asarray(hits.size, jnp.float32)
    return loss * len(targets), jnp.sum(jnp.where(weights, hits, 0.0)), jnp.sum(weights.astype(jnp.float32))


@dataclass
class FitResult:
    """What ``fit`` returns: the final and best models, the last step run, and every metrics record."""

    model: Any
    best_model: Any
    step: int
    best_valid_loss: float
    stopped_early: bool
    records: list[dict]
    start_step: int = 0


def _curriculum_unit(config: TrainConfig, source: BatchSource, step: int, length: int, first_scored: int
                     ) -> tuple[int, int, int]:
    """(epoch, batch index, prefix length) of update number ``step``."""
    stages = config.strategy.stages(length, first_scored)
    per_epoch = len(stages) * source.batches_per_epoch
    epoch, within = divmod(step, per_epoch)
    stage, index = divmod(within, source.batches_per_epoch)
    return epoch, index, stages[stage]


def fit(
    model,
    source: BatchSource,
    *,
    objective: str,
    config: TrainConfig,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    run_config: dict | None = None,
    progress: bool = True,
) -> FitResult:
    """Train ``model`` on batches from ``source`` under ``objective`` (see :mod:`recurrax.train.losses`).

    ``evaluate(model) -> {"valid_loss": ..., ...}`` runs every ``config.eval_every`` steps and at
    the end; early stopping and the best model follow ``valid_loss`` (without ``evaluate`` the best
    model is the final one). A loss that is not finite, in training or validation, raises
    :class:`FloatingPointError`. With ``run_dir`` the run is
    logged and checkpointed there (``run_config`` is written as ``config.json`` beside the training
    configuration); ``resume=True`` continues from the checkpoint in ``run_dir``. Fits of models
    with an equal structure under equal optimiser settings share one compiled update
    (:func:`shared_update`).
    """
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue")
    first = source.batch(0, 0)
    batch_size, length = first["mask"].shape
    if batch_size != config.batch_size:
        raise ValueError(
            f"the source's batches have {batch_size} sequences but config.batch_size is {config.batch_size}; "
            "make them agree (the source makes the batches, the configuration records their size)"
        )
    updates_per_step = config.strategy.updates_per_step(length, is_last_step(objective))
    optimizer = make_optimizer(config, updates_per_step)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    update = shared_update(static, config, updates_per_step, objective)
    opt_state = optimizer.init(params)
    scored_steps = np.flatnonzero(np.any(np.asarray(first.get("loss_mask", first["mask"])), axis=0))
    first_scored = int(scored_steps[0]) if len(scored_steps) else 0  # curriculum: shorter prefixes score nothing
    carry = batched_initial_state(model, batch_size) if source.carries_state else None
    start, best_loss, best_step, bad_evals = 0, math.inf, -1, 0
    best_params = params
    log = None

    evaluation_due = False  # the evaluation and checkpoint at ``step`` have yet to run
    if run_dir is not None:
        run_dir = Path(run_dir)
        log = runs.MetricsLog(run_dir)
        ckpt_path = run_dir / runs.CHECKPOINT
        if resume and checkpoint.exists(ckpt_path):
            state, meta, read, problems = checkpoint.load_latest(ckpt_path, (params, opt_state, carry))
            params, opt_state, carry = state
            for problem in problems:
                print(f"warning: {problem}; resuming from {read} (step {meta['step']})", flush=True)
            start, best_loss, best_step, bad_evals = meta["step"], meta["best_valid_loss"], meta["best_step"], meta["bad_evals"]
            evaluation_due = meta.get("evaluation_due", False)
            best_params = params
            if checkpoint.exists(run_dir / runs.BEST):
                best_params = checkpoint.load_latest(run_dir / runs.BEST, params)[0]
            log.truncate_after(start)
        else:
            if resume:
                print(f"{run_dir} has no checkpoint yet: its run starts again from step 0", flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            log.path.unlink(missing_ok=True)
            runs.write_config(run_dir, {**(run_config or {}), "train": config.to_dict()})

    def save_checkpoint(step, early_stopping, due=False):
        if run_dir is not None:
            loss, at, bad = early_stopping
            meta = {"step": step, "best_valid_loss": loss, "best_step": at, "bad_evals": bad, "evaluation_due": due}
            checkpoint.save(ckpt_path, (params, opt_state, carry), meta)

    bar = Progress(config.steps, start=start, every=config.log_every, enabled=progress)
    key = jax.random.key(config.seed)
    pending: list[dict] = []  # records not yet written to the log
    history: list[dict] = log.read() if log is not None else []

    def close_interval(step) -> bool:
        """Evaluate, checkpoint and log at the end of an interval; whether to stop early.

        The early-stopping state changes only once the checkpoint holding its new value is written:
        an interrupt before then saves the old one with the evaluation still due, and the resumed
        run repeats it."""
        nonlocal best_loss, best_step, bad_evals, best_params, pending, evaluation_due
        new_best = (best_loss, best_step, bad_evals, params)  # without evaluations the best model is the latest
        if evaluate is not None:
            result = evaluate(eqx.combine(params, static))
            if not math.isfinite(result["valid_loss"]):
                raise FloatingPointError(
                    f"the validation loss became {result['valid_loss']} at step {step}; lower the learning rate or "
                    "clip gradients"
                )
            pending.append({"step": step, **result})
            history.append(pending[-1])
            bar.message(f"step {step}: " + " ".join(f"{k} {v:.4g}" for k, v in result.items()))
            if result["valid_loss"] < best_loss:
                new_best = (result["valid_loss"], step, 0, params)
                if run_dir is not None:
                    checkpoint.save(run_dir / runs.BEST, params, {"step": step, "valid_loss": result["valid_loss"]})
            else:
                new_best = (best_loss, best_step, bad_evals + 1, best_params)
        save_checkpoint(step, new_best[:3])
        best_loss, best_step, bad_evals, best_params, evaluation_due = (*new_best, False)
        if log is not None:
            log.append(pending)
        pending = []
        if config.patience is not None and bad_evals >= config.patience:
            bar.message(f"early stop at step {step}: no better validation loss in {bad_evals} evaluations "
                        f"(best {best_loss:.4g} at step {best_step})")
            return True
        return False

    stopped_early = False
    step = start
    try:
        if evaluation_due:  # the run was interrupted during this step's evaluation
            stopped_early = close_interval(step)
        while step < config.steps and not stopped_early:
            if config.bptt == "curriculum":
                epoch, index, stage = _curriculum_unit(config, source, step, length, first_scored)
            else:
                (epoch, index), stage = divmod(step, source.batches_per_epoch), length
            batch = source.batch(epoch, index)
            if source.carries_state and index == 0:
                carry = batched_initial_state(eqx.combine(params, static), batch_size)
            new_params, new_opt_state, new_carry, metrics = update(
                params, opt_state, carry, batch, jax.random.fold_in(key, step), stage
            )
            record = {"step": step + 1, **{k: float(v) for k, v in metrics.items()}}  # waits for the step
            if config.bptt == "curriculum":
                record["prefix"] = int(stage)
            if not math.isfinite(record["loss"]):
                raise FloatingPointError(
                    f"the training loss became {record['loss']} at step {step + 1}; lower the learning rate or clip "
                    "gradients"
                )
            pending.append(record)
            history.append(record)
            # one assignment: an interrupt sees the state before this step or after it, never half of it
            params, opt_state, carry, step, evaluation_due = (
                new_params, new_opt_state, new_carry if source.carries_state else carry, step + 1,
                (step + 1) % config.eval_every == 0 or step + 1 == config.steps,
            )
            bar.update(step, {"loss": record["loss"]})
            if evaluation_due:
                stopped_early = close_interval(step)
    except KeyboardInterrupt:
        if run_dir is not None:
            pending = [r for r in pending if r["step"] <= step and not (evaluation_due and "valid_loss" in r)]
            save_checkpoint(step, (best_loss, best_step, bad_evals), due=evaluation_due)
            log.append(pending)
            print(f"\ninterrupted at step {step}, saved; continue with: recurrax train --resume {run_dir}", flush=True)
        raise
    finally:
        bar.close()
        if run_dir is not None and history:
            runs.plot_losses(run_dir, history)
    return FitResult(
        model=eqx.combine(params, static),
        best_model=eqx.combine(best_params, static),
        step=step,
        best_valid_loss=best_loss,
        stopped_early=stopped_early,
        records=history,
        start_step=start,
    )
