"""The ``recurrax`` command line: train, eval, generate, ngram, gradients.

Every error caused by the user's input (an unknown cell, a missing file, a run directory that is
not one, ...) prints one clear message and exits with status 2; nothing is overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from . import _checks
from .cells import CELLS
from .data.tasks import TASKS

TASK_CHOICES = ("text",) + tuple(TASKS)

# Defaults that depend on the task: the language-modelling main job, and the synthetic tasks.
# The main job (measured on 2 CPU cores: 2.6 minutes of training at 90k characters/s on a quiet machine,
# up to about 7.5 minutes on a busy one; see the README).
TEXT_DEFAULTS = dict(cell="lstm", hidden=256, layers=1, embed=64, dropout=0.3, steps=2200, batch=64, chunk=100,
                     lr=3e-2, schedule="cosine", warmup=100, eval_every=550, log_every=50, bptt="truncated")
TASK_DEFAULTS = dict(cell="lstm", hidden=64, layers=1, embed=None, dropout=0.0, steps=2000, batch=32, chunk=None,
                     lr=1e-3, schedule="constant", warmup=0, eval_every=200, log_every=100, bptt="full")


def _defaults(key: str) -> str:
    """The defaults of an option as its help shows them: [text / tasks], or [both] when equal."""
    text, task = TEXT_DEFAULTS[key], TASK_DEFAULTS[key]
    if task is None:
        task = "hidden" if key == "embed" else task
    return f"[{text}]" if text == task else f"[{text} / {task}]"


TEXT_ONLY = ("data", "level", "min_count", "tie_weights", "ngram_order", "sample_length", "prompt", "temperature",
             "dynamic_lr", "memory")
"""Options of ``train`` that only language models read."""


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit status 2."""


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    for convert in (int, float):
        try:
            return key.replace("-", "_"), convert(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def _number(kind, text: str):
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"must be {expected}, got {text}") from None


def _positive(kind):
    """An argparse type: a positive (finite) number of ``kind``."""
    def parse(text: str):
        value = _number(kind, text)
        if not 0 < value < math.inf:
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
        return value

    return parse


def _non_negative(kind):
    """An argparse type: zero or a positive (finite) number of ``kind``."""
    def parse(text: str):
        value = _number(kind, text)
        if not 0 <= value < math.inf:
            raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
        return value

    return parse


def _learning_rate_or_auto(text: str):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text}")
    return value


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except on on/off flags, options without one, and where the
    help already gives it in [brackets]."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or (action.help or "").rstrip().endswith("]"):
            return action.help
        return super()._get_help_string(action)


def _train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (default: a character-level LSTM language model on the built-in corpus)",
        description="Train a recurrent model. With no arguments: a character-level LSTM language model on the "
        "built-in corpus (CPython's documentation text), compared with n-gram baselines. With --task: a synthetic "
        "sequence task. Task-dependent defaults are shown as 'text / tasks'.",
        formatter_class=_HelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--task", choices=TASK_CHOICES, default="text", help="what to learn: 'text' is language modelling")
    g.add_argument("--data", metavar="FILE", help="text file for --task text (split 90/5/5); default: built-in corpus")
    g.add_argument("--level", choices=("char", "word"), default="char", help="token level for --task text")
    g.add_argument("--min-count", type=_positive(int), default=1, help="word level: rarer words become <unk>")
    g.add_argument("--length", type=_positive(int), help="sequence length of a synthetic task (task default if unset)")
    g.add_argument("--option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="a task option, e.g. --option delay=50 for copy (repeatable)")
    g.add_argument("--train-size", type=_positive(int), default=10000,
                   help="tasks: training sequences, drawn for a generated task; a fixed data set (sunspots, "
                   "digits, ...) trains on its first N (all of it by default)")
    g.add_argument("--valid-size", type=_positive(int), default=1000,
                   help="tasks: validation and test sequences (a fixed data set's first N of each split; the "
                   "baseline is scored on the same test sequences)")
    g = p.add_argument_group("model")
    g.add_argument("--cell", choices=tuple(CELLS), help=f"recurrent cell {_defaults('cell')}")
    g.add_argument("--hidden", type=_positive(int), help=f"hidden size per layer (text / tasks) {_defaults('hidden')}")
    g.add_argument("--layers", type=_positive(int), help=f"number of stacked layers {_defaults('layers')}")
    g.add_argument("--embed", type=_positive(int), help=f"embedding size (token inputs) {_defaults('embed')}")
    g.add_argument("--bidirectional", action="store_true", help="deep bidirectional layers (tasks only)")
    g.add_argument("--dropout", type=float,
                   help="dropout on the embeddings, between layers and on the top layer's outputs (not on raw "
                   f"input vectors) {_defaults('dropout')}")
    g.add_argument("--tie-weights", action="store_true", help="language model: output matrix = embedding")
    g.add_argument("--scan", choices=("auto", "sequential", "associative", "chunked"), default="auto",
                   help="how the recurrence runs over a sequence")
    g = p.add_argument_group("training")
    g.add_argument("--bptt", choices=("full", "truncated", "curriculum"),
                   help=f"backpropagation through time strategy {_defaults('bptt')}")
    g.add_argument("--chunk", type=_positive(int), help="truncated BPTT: steps per chunk (text: window) [100 for text]")
    g.add_argument("--stride", type=_positive(int), default=1, help="curriculum BPTT: prefix length step")
    g.add_argument("--steps", type=_positive(int), help=f"optimiser steps {_defaults('steps')}")
    g.add_argument("--batch", type=_positive(int), help=f"sequences per batch {_defaults('batch')}")
    g.add_argument("--lr", type=_positive(float), help=f"learning rate {_defaults('lr')}")
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam", help="Optax optimiser")
    g.add_argument("--schedule", choices=("constant", "cosine"), help=f"learning-rate schedule {_defaults('schedule')}")
    g.add_argument("--warmup", type=int,
                   help=f"linear warmup steps {_defaults('warmup')}, at most a tenth of --steps unless given")
    g.add_argument("--weight-decay", type=_non_negative(float), default=0.0,
                   help="AdamW weight decay (--optimizer adamw)")
    g.add_argument("--clip", type=_non_negative(float), default=1.0, help="clip gradients to this global norm (0: off)")
    g.add_argument("--eval-every", type=_positive(int), help=f"evaluate and checkpoint every N steps {_defaults('eval_every')}")
    g.add_argument("--patience", type=_positive(int), help="stop after N evaluations without improvement")
    g.add_argument("--log-every", type=_positive(int),
                   help=f"progress line every N steps when not on a terminal {_defaults('log_every')}")
    g.add_argument("--seed", type=int, default=0, help="random seed (data order, initialisation, dropout)")
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", type=Path, help="where to save the run [runs/TASK-CELL-TIME]")
    g.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue an interrupted run with its own options (no others may be given)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    g = p.add_argument_group("language model")
    g.add_argument("--ngram-order", type=int, default=24,
                   help="n-gram baselines up to this order (0: none); on the built-in corpus Kneser-Ney is best "
                   "around order 24")
    g.add_argument("--sample-length", type=_non_negative(int), default=400,
                   help="tokens to generate at the end (0: none)")
    g.add_argument("--prompt", help="prompt of the final sample ['The ' if the vocabulary has it, else the "
                   "validation text's first known token]")
    g.add_argument("--temperature", type=_positive(float), default=0.8, help="sampling temperature of the sample")
    g.add_argument("--dynamic-lr", type=_learning_rate_or_auto, default="auto",
                   help="also report dynamic evaluation (the model keeps learning from the text it scores) with this "
                   "SGD learning rate; 'auto' picks it on the validation split, 0 turns it off [auto]")
    g.add_argument("--no-memory", dest="memory", action="store_false",
                   help="do not report the model with a nearest-neighbour memory of the training text (kNN-LM "
                   "with a cache of the scored text) mixed in")


def _options(args: argparse.Namespace) -> dict:
    """Resolved training options: the user's values over the task's defaults."""
    defaults = TEXT_DEFAULTS if args.task == "text" else TASK_DEFAULTS
    options = {key: value for key, value in vars(args).items() if key not in ("func", "resume", "run_dir", "quiet", "option")}
    for key, value in defaults.items():
        if options.get(key) is None:
            options[key] = value
    if args.warmup is None:  # the default warm-up never takes more than a tenth of a short run
        options["warmup"] = min(options["warmup"], options["steps"] // 10)
    task_options = dict(args.option)
    if args.length is not None:
        if "length" in task_options:
            raise UsageError(f"the length is given twice (--length {args.length}, --option length="
                             f"{task_options['length']}); give one")
        task_options["length"] = args.length
    options["task_options"] = task_options
    if options.get("data") is not None:  # so that eval, generate and --resume find it from any directory
        options["data"] = os.path.abspath(options["data"])
    if args.task == "text":
        if task_options:
            raise UsageError("--length and --option apply to synthetic tasks; text uses --chunk for its window")
        if options["bptt"] != "truncated":
            raise UsageError("a language model trains with truncated BPTT over contiguous text (--bptt truncated)")
        if args.bidirectional:
            raise UsageError("a language model predicts the next token and cannot read the future (--bidirectional)")
    else:
        if args.chunk is not None and options["bptt"] != "truncated":
            raise UsageError("--chunk is the chunk of truncated BPTT (--bptt truncated); the strategy is "
                             f"{options['bptt']}")
        given = [key for key in _changed_options(args) if key in TEXT_ONLY]
        if given:
            names = ", ".join("--" + ("no-memory" if key == "memory" else key.replace("_", "-")) for key in given)
            raise UsageError(f"{names}: for --task text; task {args.task!r} generates its own data")
    if options["weight_decay"] and options["optimizer"] != "adamw":
        raise UsageError(f"--weight-decay is AdamW's; the optimiser is {options['optimizer']} (--optimizer adamw)")
    return options


def _changed_options(args: argparse.Namespace) -> list[str]:
    """The names of the ``train`` options of ``args`` that differ from their defaults."""
    defaults = vars(build_parser().parse_args(["train"]))
    return [key for key, value in vars(args).items()
            if key not in ("func", "resume", "quiet") and value != defaults.get(key)]


def _options_given(args: argparse.Namespace) -> list[str]:
    """The training options of ``args`` that differ from their defaults, as ``name=value``."""
    return [f"{key}={getattr(args, key)}" for key in _changed_options(args)]


def _cmd_train(args: argparse.Namespace) -> None:
    from .lm.job import train_language_model
    from .train import run_dir as runs
    from .train.task_job import train_task

    if args.resume is not None:
        given = _options_given(args)
        if given:
            raise UsageError("--resume continues a run with the options it was started with; other options were "
                             f"given ({', '.join(given)}): drop them, or start a new run")
        stored = runs.read_config(args.resume)
        if "options" not in stored:
            raise UsageError(f"{args.resume} was not made by `recurrax train`")
        options, run_dir, resume = stored["options"], args.resume, True
    else:
        options = _options(args)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = args.run_dir or Path("runs") / f"{options['task']}-{options['cell']}-{stamp}"
        if (run_dir / runs.CONFIG).exists():
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --run-dir")
        resume = False
    print(f"run directory: {run_dir}", flush=True)
    job = train_language_model if options["task"] == "text" else train_task
    try:
        job(options, Path(run_dir), resume=resume, progress=not args.quiet)
    except FloatingPointError as error:  # diverged: resuming would repeat it
        raise UsageError(f"{error}; start a new run for that (another --run-dir)") from error


def _load_run(run_dir: Path):
    from .lm.job import VOCABULARY, build_model
    from .lm.text import Vocabulary
    from .train import checkpoint, run_dir as runs

    config = runs.read_config(run_dir)
    if config.get("task") != "text":
        raise UsageError(f"{run_dir} is a {config.get('task')!r} run, not a language model")
    if not isinstance(config.get("options"), dict):
        raise UsageError(f"{run_dir}/config.json has no training options: it was not made by `recurrax train`")
    vocab = Vocabulary.load(run_dir / VOCABULARY)
    skeleton = build_model(config["options"], len(vocab))
    import equinox as eqx

    params, static = eqx.partition(skeleton, eqx.is_inexact_array)
    if not checkpoint.exists(run_dir / runs.BEST):
        raise UsageError(f"{run_dir} has no trained model yet (no {runs.BEST})")
    params = checkpoint.load_latest(run_dir / runs.BEST, params)[0]
    return eqx.combine(params, static), vocab, config


def _cmd_generate(args: argparse.Namespace) -> None:
    from .lm.job import RESULTS, default_prompt, sample_text

    model, vocab, _ = _load_run(args.run_dir)
    prompt = args.prompt
    if prompt is None:  # the prompt of the run's own sample
        results = args.run_dir / RESULTS
        prompt = json.loads(results.read_text()).get("prompt") if results.is_file() else None
        prompt = prompt if prompt is not None else default_prompt(vocab)

    def stream(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    sample_text(model, vocab, prompt, args.length, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, seed=args.seed, stream=stream)
    sys.stdout.write("\n")


def _cmd_eval(args: argparse.Namespace) -> None:
    from .data.corpus import read_text
    from .lm.batches import text_scores, token_nll
    from .lm.text import tokenize

    model, vocab, config = _load_run(args.run_dir)
    text = read_text(args.data)
    ids = vocab.encode(text)
    if len(ids) < 2:
        raise UsageError(f"{args.data} has fewer than two tokens")
    unit = "character" if vocab.level == "char" else "word"

    def report(label: str, nll) -> None:
        scores = text_scores(nll)
        print(f"{label}{scores['bits_per_token']:.4f} bits/{unit}, perplexity {scores['perplexity']:.3f}")

    nll = token_nll(model, ids)
    unknown = sum(token not in vocab for token in tokenize(text, vocab.level)) if vocab.unk is not None else 0
    note = f" ({unknown:,} not in the vocabulary, scored as {vocab.unk})" if unknown else ""
    report(f"{args.data}: {len(ids):,} {unit}s{note}, ", nll)
    if args.dynamic_lr:
        from .lm.dynamic import DEFAULT_SEGMENT, token_nll_dynamic

        nll = token_nll_dynamic(model, ids, learning_rate=args.dynamic_lr)
        report(f"dynamic evaluation (learning rate {args.dynamic_lr:g}, segments of {DEFAULT_SEGMENT}): ", nll)
    if args.memory:
        from .lm import memory as nn_memory
        from .lm.job import RESULTS, load_text_data

        kind = "dynamic" if args.dynamic_lr else "static"
        results = args.run_dir / RESULTS
        settings = (json.loads(results.read_text()).get("memory") or {}).get(kind) if results.exists() else None
        if not settings:
            raise UsageError(f"{args.run_dir} has no memory settings tuned for {kind} evaluation in {RESULTS} "
                             f"(the run finished without its memory evaluation)")
        options = config["options"]
        train = load_text_data(options["data"], level=options["level"], min_count=options["min_count"],
                               vocab=vocab).ids["train"]
        memory = nn_memory.build_memory(model, train)
        distances, values = nn_memory.text_neighbours(model, memory, ids)
        p = nn_memory.memory_probability(distances, values, ids[1:], settings["temperature"])
        report(f"with the memory of {len(memory):,} training positions (weight {settings['weight']:g}, "
               f"temperature {settings['temperature']:g}): ", nn_memory.mixed_nll(nll, p, settings["weight"]))


def _cmd_ngram(args: argparse.Namespace) -> None:
    from .lm.job import load_text_data
    from .lm.ngram import format_table, ngram_report

    data = load_text_data(args.data, level=args.level, min_count=args.min_count)
    rows = ngram_report(data.ids["train"], data.ids[args.split], len(data.vocab), args.order)
    unit = "character" if args.level == "char" else "word"
    print(f"{data.corpus.name}: n-gram models on the {args.split} split ({len(data.ids[args.split]):,} {unit}s), "
          f"trained on {len(data.ids['train']):,}; bits_per_token = bits per {unit}")
    print(format_table(rows))


def _cmd_gradients(args: argparse.Namespace) -> None:
    from .diagnostics.gradient_flow import format_table, gradient_flow, write_report

    cells = _checks.names("cell", args.cells.split(","), tuple(CELLS))
    _output_directory(args.out)  # before the work, not after it
    curves = gradient_flow(cells, args.length, hidden_size=args.hidden, input_size=args.input,
                           seeds=tuple(range(args.seeds)), batch=args.batch)
    paths = write_report(curves, args.out)
    print(format_table(curves))
    print("written: " + ", ".join(str(p) for p in paths.values()))


def _cmd_compare(args: argparse.Namespace) -> None:
    from .compare import Budget, compare, format_forecasts, format_table, forecast_rows

    tasks = _checks.names("task", args.tasks.split(","), tuple(TASKS))
    cells = _checks.names("cell", args.cells.split(","), tuple(CELLS))
    options: dict[str, dict] = {}
    for task, key, value in args.option:
        options.setdefault(task, {})[key] = value
    budget = Budget(steps=args.steps, batch=args.batch, hidden=args.hidden, learning_rate=args.lr,
                    train_size=args.train_size, valid_size=args.valid_size, beam_width=args.beam)
    rows = compare(tasks, cells, budget=budget, seeds=args.seeds, task_options=options, out=args.out,
                   log=None if args.quiet else lambda line: print(line, flush=True))
    print(format_table(rows))
    forecasts = forecast_rows(rows)
    if forecasts:
        print("\nforecasting, test split in original units (baselines beside the models):")
        print(format_forecasts(forecasts))
    written = sorted(p.name + ("/" if p.is_dir() else "") for p in args.out.iterdir())
    print(f"written to {args.out}: " + ", ".join(written))


def _output_directory(path: Path) -> None:
    """Create the output directory ``path``, or a clear error when that is not possible."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recurrax", description="Recurrent sequence models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _train_parser(sub)
    sub.choices["train"].set_defaults(func=_cmd_train)

    p = sub.add_parser("generate", help="generate text from a trained language model",
                       formatter_class=_HelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a language-model run made by `recurrax train`")
    p.add_argument("--prompt", help="text the model is primed with [the prompt of the run's own sample]")
    p.add_argument("--length", type=_non_negative(int), default=400, help="tokens to generate")
    p.add_argument("--temperature", type=_positive(float), default=0.8,
                   help="divides the logits: below 1 sharper, above 1 more varied")
    p.add_argument("--top-k", type=_positive(int), help="sample among the k most probable tokens")
    p.add_argument("--top-p", type=_positive(float), help="nucleus sampling: smallest set with probability >= p")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser("eval", help="bits per token of a trained language model on a text file",
                       formatter_class=_HelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a language-model run made by `recurrax train`")
    p.add_argument("--data", type=Path, required=True, metavar="FILE", help="the text to score (UTF-8)")
    p.add_argument("--dynamic-lr", type=_non_negative(float), default=0.0,
                   help="also report dynamic evaluation with this SGD learning rate, 0: not (results.json of a run "
                   "gives the one tuned on its validation split)")
    p.add_argument("--memory", action="store_true",
                   help="also report the model with the nearest-neighbour memory of its training text mixed in, "
                   "with the weight and temperature the run tuned on its validation split")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("ngram", help="n-gram language models: perplexity for each order and smoothing",
                       formatter_class=_HelpFormatter)
    p.add_argument("--order", type=_positive(int), default=5, help="largest n")
    p.add_argument("--data", metavar="FILE", help="text file (split 90/5/5); default: built-in corpus")
    p.add_argument("--level", choices=("char", "word"), default="char", help="tokens: characters or words")
    p.add_argument("--min-count", type=_positive(int), default=1, help="word level: rarer words become <unk>")
    p.add_argument("--split", choices=("valid", "test"), default="valid", help="held-out split to score")
    p.set_defaults(func=_cmd_ngram)

    p = sub.add_parser("gradients", help="gradient flow through time: ||dL_T/dh_t|| for several cells",
                       formatter_class=_HelpFormatter)
    p.add_argument("--cells", default="elman,lstm,gru,mgu", help="comma-separated cells")
    p.add_argument("--length", type=_positive(int), default=200, help="sequence length T")
    p.add_argument("--hidden", type=_positive(int), default=64, help="hidden size of every cell")
    p.add_argument("--input", type=_positive(int), default=8, help="input size")
    p.add_argument("--seeds", type=_positive(int), default=5, help="initialisations averaged over")
    p.add_argument("--batch", type=_positive(int), default=16, help="random input sequences per seed")
    p.add_argument("--out", type=Path, default=Path("runs/gradients"),
                   help="directory for gradient_flow.csv (column t = T - t, 0 the last step), .png and .txt")
    p.set_defaults(func=_cmd_gradients)

    from .compare import DEFAULT_CELLS, DEFAULT_TASKS, parse_task_option

    p = sub.add_parser("compare", help="train every cell on every task with one budget; table, CSV and plot",
                       description="Train every (task, cell) pair with the same budget, hidden size and seeds; print "
                       "a table (metric, baseline, parameters, wall time) and write it as CSV, Markdown and a plot, "
                       "with a plot of each pair's test predictions. Forecasting tasks report MAE/RMSE/MASE beside "
                       "naive, seasonal-naive and linear AR baselines; 'numbers' trains an encoder-decoder and "
                       "reports greedy and beam-search exact match.",
                       formatter_class=_HelpFormatter)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help=f"comma-separated tasks from: {', '.join(TASKS)}")
    p.add_argument("--cells", default=",".join(DEFAULT_CELLS), help=f"comma-separated cells from: {', '.join(CELLS)}")
    p.add_argument("--steps", type=_positive(int), default=500, help="optimiser steps per run (the budget; at least 10)")
    p.add_argument("--seeds", type=_positive(int), default=1, help="runs per pair, seeds 0..N-1")
    p.add_argument("--hidden", type=_positive(int), default=64, help="hidden size of every cell")
    p.add_argument("--batch", type=_positive(int), default=32, help="sequences per batch")
    p.add_argument("--lr", type=_positive(float), default=3e-3, help="peak learning rate (Adam, cosine schedule)")
    p.add_argument("--train-size", type=_positive(int), default=5000, help="training sequences of generated tasks")
    p.add_argument("--valid-size", type=_positive(int), default=500, help="validation/test sequences of generated tasks")
    p.add_argument("--beam", type=_positive(int), default=4, help="beam width for the translation task")
    p.add_argument("--option", action="append", type=parse_task_option, default=[], metavar="TASK.KEY=VALUE",
                   help="a task option, e.g. --option adding.length=50 (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="directory for the table, CSV and plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command; the exit status."""
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; the exit status (2: bad input, with one message on stderr)."""
    from .data.corpus import CorpusError
    from .lm.text import UnknownTokenError
    from .train.checkpoint import CheckpointError
    from .train.run_dir import RunDirError

    try:
        args.func(args)
    except (UsageError, CorpusError, RunDirError, CheckpointError, UnknownTokenError, OSError,
            ValueError, TypeError) as error:
        print(f"recurrax {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def keeps_freed_memory(args: argparse.Namespace) -> bool:
    """Whether the command's process keeps the memory it frees
    (:func:`recurrax.allocator.retain_freed_memory`): the language-model job only.

    Its training steps allocate blocks that glibc would hand back to the kernel at every call; kept,
    the main job trains at 84,000 instead of 63,000 characters per second (300 steps, side by
    side). Where the blocks are small the single heap only adds contention between threads:
    ``recurrax compare`` took 26.4 instead of 19.8 s, ``recurrax train --task adding`` 8.1
    instead of 7.3 s.
    """
    return args.command == "train" and args.task == "text"


def console_main() -> None:
    """The ``recurrax`` command: :func:`main`, in a process that keeps the memory it frees where
    that pays (:func:`keeps_freed_memory`); decided before JAX's first computation."""
    from .allocator import retain_freed_memory

    args = build_parser().parse_args()
    if keeps_freed_memory(args):
        retain_freed_memory()
    sys.exit(run(args))


if __name__ == "__main__":
    console_main()
