"""The language-modelling job: corpus → vocabulary → n-gram baselines → RNN LM → bits per token (static,
dynamic, with a nearest-neighbour memory) → sample.

Used by ``recurrax train`` (task ``text``), ``recurrax eval`` and ``recurrax generate``; every
function takes plain options so the job also runs from Python.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from ..data.corpus import Corpus, builtin_corpus, load_text_file
from ..train import run_dir as runs
from ..train.trainer import TrainConfig, fit
from . import memory as nn_memory
from .batches import ContiguousBatches, evaluate_text, text_scores, token_nll
from .dynamic import DEFAULT_SEGMENT, LEARNING_RATES, token_nll_dynamic, tune_learning_rate
from .generate import check_sampling, generate
from .model import LanguageModel
from .ngram import SMOOTHINGS, best_row, ngram_report
from .text import Vocabulary, build_vocabulary

VOCABULARY = "vocabulary.json"
RESULTS = "results.json"


@dataclass
class TextData:
    """A corpus cut into splits, its vocabulary, and each split as token ids."""

    corpus: Corpus
    vocab: Vocabulary
    ids: dict[str, np.ndarray]


def load_text_data(data: str | None = None, *, level: str = "char", min_count: int = 1,
                   vocab: Vocabulary | None = None) -> TextData:
    """The built-in corpus (``data=None``) or a user's text file, split 90/5/5, and its ids.

    Character level: the vocabulary is every character of the corpus (a closed vocabulary, so
    held-out text has no unknown characters). Word level: words of the training split seen at
    least ``min_count`` times; the rest become ``<unk>``.
    """
    corpus = builtin_corpus() if data is None else load_text_file(data)
    if vocab is None:
        source = corpus.train + corpus.valid + corpus.test if level == "char" else corpus.train
        vocab = build_vocabulary(source, level, min_count)
    ids = {split: vocab.encode(getattr(corpus, split)) for split in ("train", "valid", "test")}
    return TextData(corpus, vocab, ids)


def ngram_baselines(data: TextData, max_order: int) -> list[dict[str, Any]]:
    """Perplexity and bits per token of n-gram orders 1..max_order with every smoothing, each
    model fitted once on the training split and scored on the validation and test splits (one
    row per split, named by ``split``)."""
    return ngram_report(data.ids["train"], {"valid": data.ids["valid"], "test": data.ids["test"]}, len(data.vocab),
                        max_order, SMOOTHINGS)


def build_model(options: dict, vocab_size: int) -> LanguageModel:
    """The RNN language model described by the run options (``cell``, ``hidden``, ``layers``, ...)."""
    return LanguageModel(
        options["cell"], vocab_size, options["hidden"], embed_size=options["embed"], num_layers=options["layers"],
        dropout=options["dropout"], tie_weights=options["tie_weights"], scan=options["scan"],
        key=jax.random.key(options["seed"]),
    )


def train_config(options: dict) -> TrainConfig:
    """Truncated BPTT over contiguous windows of ``chunk`` tokens (the state carried between batches)."""
    return TrainConfig(
        steps=options["steps"], batch_size=options["batch"], learning_rate=options["lr"],
        optimizer=options["optimizer"], schedule=options["schedule"], warmup=options["warmup"],
        clip=options["clip"] or None, weight_decay=options["weight_decay"], bptt="full", reduce="mean",
        eval_every=options["eval_every"], patience=options["patience"], log_every=options["log_every"],
        seed=options["seed"],
    )


def train_language_model(options: dict, run_dir: Path, *, resume: bool = False, progress: bool = True,
                         out: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) an RNN LM on the options' corpus, compare with n-grams, save, and sample.

    Returns the results written to ``RUN_DIR/results.json``.
    """
    started = time.perf_counter()
    vocab = Vocabulary.load(run_dir / VOCABULARY) if resume else None
    data = load_text_data(options["data"], level=options["level"], min_count=options["min_count"], vocab=vocab)
    unit = "character" if data.vocab.level == "char" else "word"
    out(f"corpus {data.corpus.name}: {', '.join(f'{k} {len(v):,}' for k, v in data.ids.items())} {unit}s, "
        f"vocabulary {len(data.vocab)}")
    prompt = options["prompt"] if options["prompt"] is not None else default_prompt(data.vocab, data.corpus.valid)
    if len(data.vocab.encode(prompt, eos=False)) == 0:  # an unknown character or no token fails now, not after training
        raise ValueError("the prompt is empty: give at least one character or word (--prompt)")

    config = train_config(options)
    model = build_model(options, len(data.vocab))
    source = ContiguousBatches(data.ids["train"], config.batch_size, options["chunk"], config.seed)
    if not resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        data.vocab.save(run_dir / VOCABULARY)

    baselines = []
    if options["ngram_order"]:
        t0 = time.perf_counter()
        baselines = ngram_baselines(data, options["ngram_order"])
        best = {s: best_row([r for r in baselines if r["split"] == s]) for s in ("valid", "test")}
        out(f"n-gram baselines (orders 1..{options['ngram_order']}, {time.perf_counter() - t0:.1f}s): best on test "
            f"{best['test']['order']}-gram {best['test']['smoothing']} {best['test']['bits_per_token']:.4f} bits/{unit}")

    n_params = sum(x.size for x in jax.tree_util.tree_leaves(model))
    out(f"model: {options['cell']} x{options['layers']}, hidden {options['hidden']}, {n_params:,} parameters; "
        f"{config.steps} steps of {config.batch_size}x{options['chunk']} {unit}s")
    t_train = time.perf_counter()
    result = fit(
        model, source, objective="per-step-xent", config=config,
        evaluate=lambda m: evaluate_text(m, data.ids["valid"]), run_dir=run_dir, resume=resume,
        run_config={"task": "text", "options": options}, progress=progress,
    )
    train_seconds = time.perf_counter() - t_train
    best_model = result.best_model
    static_nll = {split: token_nll(best_model, data.ids[split]) for split in ("valid", "test")}
    valid, test = (text_scores(static_nll[split]) for split in ("valid", "test"))
    tokens_trained = (result.step - result.start_step) * config.batch_size * options["chunk"]
    # runs saved before dynamic evaluation and the memory existed get them too
    dynamic_lr = options.get("dynamic_lr", "auto")
    dynamic = memory = None
    evaluated = {"static": static_nll}
    if dynamic_lr != 0:
        out("dynamic evaluation" + (f" (learning rate chosen on validation among {', '.join(map(str, LEARNING_RATES))})"
                                    if dynamic_lr == "auto" else "") + " ...")
        dynamic, evaluated["dynamic"] = dynamic_evaluation(best_model, data, dynamic_lr)
    if options.get("memory", True):
        memory = memory_evaluation(best_model, data, evaluated, out)
    results = {
        "valid_bits": valid["bits_per_token"], "test_bits": test["bits_per_token"],
        "valid_perplexity": valid["perplexity"], "test_perplexity": test["perplexity"],
        "dynamic": dynamic, "memory": memory,
        "unit": unit, "steps": result.step, "stopped_early": result.stopped_early,
        "train_seconds": train_seconds, "tokens_per_second": tokens_trained / train_seconds,
        "total_seconds": time.perf_counter() - started, "ngram": baselines, "prompt": prompt,
    }
    _report(results, baselines, unit, out)
    runs.write_json(run_dir / RESULTS, results)
    if options["sample_length"]:
        out("\nsample:")
        text = sample_text(best_model, data.vocab, prompt, options["sample_length"],
                           temperature=options["temperature"], seed=options["seed"])
        out(text)
    return results


def dynamic_evaluation(model: LanguageModel, data: TextData, learning_rate: float | str
                       ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Validation and test bits under dynamic evaluation (:mod:`recurrax.lm.dynamic`), and the
    negative log-likelihood of every token of each split.

    ``learning_rate="auto"`` picks it on the validation text (the test text is never used to choose).
    """
    t0 = time.perf_counter()
    if learning_rate == "auto":
        learning_rate, tried = tune_learning_rate(model, data.ids["valid"])
        valid = next(r for r in tried if r["learning_rate"] == learning_rate)["token_nll"]
    else:
        valid = token_nll_dynamic(model, data.ids["valid"], learning_rate=float(learning_rate))
    nll = {"valid": valid, "test": token_nll_dynamic(model, data.ids["test"], learning_rate=float(learning_rate))}
    bits = {split: text_scores(nll[split])["bits_per_token"] for split in nll}
    return {"learning_rate": float(learning_rate), "segment": DEFAULT_SEGMENT, "valid_bits": bits["valid"],
            "test_bits": bits["test"], "seconds": time.perf_counter() - t0}, nll


# The memory's keys take len(train) x hidden x 4 bytes; beyond this the job leaves the memory out.
MEMORY_LIMIT_BYTES = 2 * 2**30


def memory_evaluation(model: LanguageModel, data: TextData, evaluated: dict[str, dict[str, np.ndarray]],
                      out: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Validation and test bits with the nearest-neighbour memory of the training text
    (:mod:`recurrax.lm.memory`) mixed into each of the ``evaluated`` predictions (name → split →
    negative log-likelihood of every token), its weight and temperature chosen on validation.

    ``None`` (and a message) when the training text is too long for the memory to fit in
    ``MEMORY_LIMIT_BYTES``.
    """
    t0 = time.perf_counter()
    size = (len(data.ids["train"]) - 1) * model.stack.output_size * 4
    if size > MEMORY_LIMIT_BYTES:
        out(f"nearest-neighbour memory left out: the training text's keys would take {size / 2**30:.1f} GiB "
            f"(more than {MEMORY_LIMIT_BYTES / 2**30:g}); --no-memory skips it silently")
        return None
    out(f"nearest-neighbour memory of the {len(data.ids['train']) - 1:,} training positions ...")
    memory = nn_memory.build_memory(model, data.ids["train"])
    found = {split: nn_memory.text_neighbours(model, memory, data.ids[split]) for split in ("valid", "test")}
    targets = {split: data.ids[split][1:] for split in found}
    results: dict[str, Any] = {"neighbours": nn_memory.DEFAULT_NEIGHBOURS}
    for name, nll in evaluated.items():
        weight, temperature = nn_memory.tune(nll["valid"], *found["valid"], targets["valid"])
        bits = {}
        for split, (distances, values) in found.items():
            p = nn_memory.memory_probability(distances, values, targets[split], temperature)
            bits[split] = text_scores(nn_memory.mixed_nll(nll[split], p, weight))["bits_per_token"]
        results[name] = {"weight": weight, "temperature": temperature, "valid_bits": bits["valid"],
                         "test_bits": bits["test"]}
    results["seconds"] = time.perf_counter() - t0
    return results


def _report(results: dict, baselines: list[dict], unit: str, out: Callable[[str], None]) -> None:
    out(f"\nRNN LM: valid {results['valid_bits']:.4f}, test {results['test_bits']:.4f} bits/{unit} "
        f"({results['tokens_per_second']:,.0f} {unit}s/s in training)")
    dynamic = results.get("dynamic")
    if dynamic:
        out(f"RNN LM, dynamic evaluation (learning rate {dynamic['learning_rate']:g}, segments of {dynamic['segment']}): "
            f"valid {dynamic['valid_bits']:.4f}, test {dynamic['test_bits']:.4f} bits/{unit}")
    memory = results.get("memory")
    for name, label in (("static", "RNN LM"), ("dynamic", "RNN LM, dynamic evaluation")):
        if memory and name in memory:
            m = memory[name]
            out(f"{label} + memory (weight {m['weight']:g}, temperature {m['temperature']:g}): "
                f"valid {m['valid_bits']:.4f}, test {m['test_bits']:.4f} bits/{unit}")
    for split in ("valid", "test"):
        rows = [r for r in baselines if r["split"] == split]
        if rows:
            best = best_row(rows)
            out(f"best n-gram on {split}: {best['order']}-gram {best['smoothing']} {best['bits_per_token']:.4f} bits/{unit}")


def default_prompt(vocab: Vocabulary, text: str | None = None) -> str:
    """The prompt of a run's sample when none is given: "The " where the vocabulary has it (the
    word, or its characters), else the first token of ``text`` (the validation text) that the
    vocabulary has, else the vocabulary's first ordinary token."""
    if ("The" in vocab) if vocab.level == "word" else all(t in vocab for t in "The "):
        return "The "
    pieces = (text or "").split() if vocab.level == "word" else list(text or "")
    known = [t for t in pieces if t in vocab]
    if known:
        return known[0]
    return next(t for t in vocab.tokens if t not in (vocab.unk, vocab.eos))


def sample_text(model: LanguageModel, vocab: Vocabulary, prompt: str, length: int, *, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                stream: Callable[[str], None] | None = None) -> str:
    """The prompt followed by ``length`` sampled tokens, decoded.

    ``stream`` gets the prompt, then each new piece as soon as it is sampled; the pieces add up to
    the text returned. At word level the text is :meth:`Vocabulary.decode` of the prompt's and the
    sample's tokens together: the prompt as the model reads it (unknown words as the unknown token),
    words joined by spaces, the end-of-line token a newline.
    """
    check_sampling(length, temperature=temperature, top_k=top_k, top_p=top_p)  # before the prompt is shown
    prompt_ids = vocab.encode(prompt, eos=False)
    if len(prompt_ids) == 0:
        raise ValueError("the prompt is empty: give at least one character or word")
    head = prompt if vocab.level == "char" else vocab.decode(prompt_ids)
    previous = [int(prompt_ids[-1])]

    def piece(token: int) -> str:
        """What ``token`` adds to the decoded text: decoding is prefix-stable, so it is read off the
        last two tokens (constant time, however long the sample)."""
        added = vocab.decode([previous[0], token])[len(vocab.decode(previous)):]
        previous[0] = token
        return added

    if stream is not None:
        stream(head)
    sampled = generate(model, prompt_ids, length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                       on_token=None if stream is None else lambda token: stream(piece(token)))
    return head + vocab.decode(sampled) if vocab.level == "char" else vocab.decode(list(prompt_ids) + sampled)
