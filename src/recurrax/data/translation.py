r"""A generated translation-like task: English number words to digits.

``"three hundred and twelve" → "312"``, ``"two thousand and five" → "2005"`` (British usage, with
"and" before the last two digits; :func:`number_to_words`). The source is a sequence of word tokens
and the target a sequence of digit tokens ending with ``<eos>``: a sequence-to-sequence problem
whose output length differs from the input length and whose output order is not the input order
("five thousand and seven" needs the two zeros that no word names).

**Numbers and splits.** The numbers below 100 are the vocabulary of the language (each is one
or two words that must be seen to be learnt): every split may contain them. The numbers from 100
up are partitioned by a fixed hash (80 % training, 10 % validation, 10 % test; :func:`split_of`).
Training draws the number of digits d uniformly in 1..``max_digits``, then a number uniformly
among the d-digit numbers of its part; validation and test draw d uniformly in 3..``max_digits``
only, so **every validation and test number is one the model never saw in training**: scoring
measures compositional generalisation, not recall. (With ``max_digits`` < 3 there are no held-out
numbers: all splits then draw from the numbers below 100, a setting for quick tests only.)

**Tokens**: one vocabulary (:data:`VOCABULARY`): ``<pad>`` = 0, ``<go>`` = 1, ``<eos>`` = 2,
the digits "0".."9" = 3..12, then the words. The output classes are the first 13 tokens
(``output_size = 13``), so a target id is its token id.

**Layout** of one example, a single token sequence of length T = S + U (``packed``): the source
words right-padded with ``<pad>`` to S (the longest source), then the decoder's teacher-forced
inputs ``<go> d_1 … d_k <pad>…`` (U = ``max_digits`` + 1 steps). The targets are
``d_1 … d_k <eos> <pad>…`` at the decoder steps, scored there (``loss_mask``) up to ``<eos>``;
objective ``"per-step-xent"``. This layout serves two models:

* :class:`recurrax.seq2seq.Seq2Seq`, an encoder–decoder that splits the sequence at S (what
  ``recurrax compare`` trains, scored by the exact match of greedy and beam-search decoding);
* any :class:`~recurrax.SequenceModel` read left to right (a single recurrent network that reads
  the source and then continues with the answer: ``recurrax train --task numbers``), scored by
  its teacher-forced per-token accuracy.

Baseline: the most frequent target token at every decoder step (per-token accuracy); its exact
match is 0.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import _checks
from .tasks import SPLITS, TASKS, SequenceData, Task, _int_option

PAD, GO, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<go>", "<eos>")
DIGITS = tuple("0123456789")
ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
WORDS = ONES + TENS[2:] + ("hundred", "thousand", "and")
VOCABULARY = SPECIALS + DIGITS + WORDS
TOKEN_ID = {token: i for i, token in enumerate(VOCABULARY)}
OUTPUT_SIZE = len(SPECIALS) + len(DIGITS)
MAX_DIGITS = 6
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def _below_thousand(n: int) -> list[str]:
    hundreds, rest = divmod(n, 100)
    words = [ONES[hundreds], "hundred"] if hundreds else []
    if rest:
        if hundreds:
            words.append("and")
        if rest < 20:
            words.append(ONES[rest])
        else:
            words.append(TENS[rest // 10])
            if rest % 10:
                words.append(ONES[rest % 10])
    return words


def number_to_words(n: int) -> list[str]:
    """English words of 0 ≤ n < 10⁶, e.g. 1205 → ["one", "thousand", "two", "hundred", "and", "five"]."""
    if not 0 <= n < 10**MAX_DIGITS:
        raise ValueError(f"numbers must be in [0, {10**MAX_DIGITS}), got {n}")
    if n == 0:
        return ["zero"]
    thousands, rest = divmod(n, 1000)
    words = _below_thousand(thousands) + ["thousand"] if thousands else []
    if thousands and 0 < rest < 100:
        words.append("and")
    return words + _below_thousand(rest)


HELD_OUT_FROM = 100
"""Numbers from here up are split between training, validation and test; smaller ones are shared."""


def split_of(numbers: np.ndarray) -> np.ndarray:
    """The part (0 train, 1 valid, 2 test) of each number ≥ ``HELD_OUT_FROM``, by a fixed multiplicative hash."""
    numbers = np.asarray(numbers, np.uint64)
    hashed = ((numbers + np.uint64(1)) * np.uint64(2654435761)) % np.uint64(2**32)
    fraction = hashed.astype(np.float64) / 2**32
    return np.searchsorted(np.cumsum(SPLIT_FRACTIONS)[:-1], fraction, side="right")


@functools.cache
def _pools(max_digits: int) -> dict[str, list[np.ndarray]]:
    """For each split, the lists of numbers it draws from, one list per digit count (drawn uniformly)."""
    pools: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for d in range(1, max_digits + 1):
        numbers = np.arange(0 if d == 1 else 10 ** (d - 1), 10**d)
        which = split_of(numbers)
        for i, split in enumerate(SPLITS):
            if numbers[0] < HELD_OUT_FROM:
                if split == "train" or max_digits < 3:
                    pools[split].append(numbers)  # shared vocabulary: in training, and held-out sets of tiny tasks
            else:
                pools[split].append(numbers[which == i])
    return pools


def source_length(max_digits: int) -> int:
    """The most words a number of at most ``max_digits`` digits takes (S)."""
    if max_digits <= 3:
        return max(len(number_to_words(n)) for n in range(10**max_digits))
    thousands = max(len(number_to_words(n)) for n in range(10 ** (max_digits - 3)))
    return thousands + 1 + max(len(number_to_words(n)) for n in range(1000))  # + "thousand", + the rest


def encode_words(words: list[str]) -> list[int]:
    return [TOKEN_ID[w] for w in words]


def digits_of(ids: Any) -> str:
    """Target or decoded ids → the digit string, up to the first ``<eos>`` (other specials dropped)."""
    out = []
    for i in np.asarray(ids).tolist():
        if i == EOS:
            break
        if 3 <= i < OUTPUT_SIZE:
            out.append(DIGITS[i - 3])
    return "".join(out)


def words_of(ids: Any) -> str:
    """Source ids → the words, padding dropped."""
    return " ".join(VOCABULARY[i] for i in np.asarray(ids).tolist() if i >= OUTPUT_SIZE)


@dataclass(frozen=True)
class TranslationTask(Task):
    """The number-words task with its layout sizes and helpers for exact-match scoring."""

    source_length: int = 0  # S
    target_length: int = 0  # U: decoder steps (max_digits + 1, room for <eos>)
    split_sampler: Callable[[str, np.random.Generator, int], SequenceData] | None = field(
        default=None, repr=False, compare=False
    )

    def generate(self, split: str, n: int, seed: int) -> SequenceData:
        """``n`` examples of ``split``, drawn from the split's own numbers with ``default_rng((seed, split index))``."""
        _checks.choice("split", split, SPLITS)
        n = _checks.positive_int("n", n)
        _checks.seed(seed)
        return self.split_sampler(split, np.random.default_rng((int(seed), SPLITS.index(split))), n)

    def source(self, data: SequenceData) -> np.ndarray:
        """The source tokens (N, S), right-padded with ``<pad>``."""
        return data.inputs[:, : self.source_length]

    def target_ids(self, data: SequenceData) -> np.ndarray:
        """The target tokens (N, U): digits, ``<eos>``, then ``<pad>``."""
        return data.targets[:, self.source_length :]

    def exact_match(self, predicted: Any, data: SequenceData) -> float:
        """The fraction of sequences whose decoded tokens (N, U) (``<pad>`` after ``<eos>``) equal the target."""
        predicted = np.asarray(predicted)
        target = self.target_ids(data)
        if predicted.shape != target.shape:
            raise ValueError(f"decoded tokens must have shape {target.shape}, got {predicted.shape}")
        return float(np.mean(np.all(predicted == target, axis=1)))

    def examples(self, predicted: Any, data: SequenceData, count: int = 10) -> list[str]:
        """Lines ``words → decoded (truth)`` for the first ``count`` sequences, ✗ marking mistakes."""
        lines = []
        for src, pred, tgt in zip(self.source(data)[:count], np.asarray(predicted)[:count], self.target_ids(data)):
            mark = "" if np.array_equal(pred, tgt) else "  ✗"
            lines.append(f"{words_of(src)} → {digits_of(pred)} ({digits_of(tgt)}){mark}")
        return lines


def numbers(*, max_digits: int = 4) -> TranslationTask:
    """Number words → digits for numbers of 1..``max_digits`` digits (see the module docstring)."""
    max_digits = _int_option("max_digits", max_digits, 1)
    if max_digits > MAX_DIGITS:
        raise ValueError(f"max_digits must be at most {MAX_DIGITS}, got {max_digits}")
    src_len = source_length(max_digits)
    tgt_len = max_digits + 1
    length = src_len + tgt_len
    pools = _pools(max_digits)

    def sample(split: str, rng: np.random.Generator, n: int) -> SequenceData:
        available = pools[split]
        which = rng.integers(0, len(available), n)
        chosen = np.array([available[k][rng.integers(0, len(available[k]))] for k in which])
        inputs = np.full((n, length), PAD, np.int32)
        targets = np.full((n, length), PAD, np.int32)
        loss_mask = np.zeros((n, length), bool)
        for i, value in enumerate(chosen.tolist()):
            words = encode_words(number_to_words(value))
            digits = [TOKEN_ID[c] for c in str(value)]
            inputs[i, : len(words)] = words
            inputs[i, src_len] = GO
            inputs[i, src_len + 1 : src_len + 1 + len(digits)] = digits  # teacher forcing: y_{j-1} at step j
            targets[i, src_len : src_len + len(digits)] = digits
            targets[i, src_len + len(digits)] = EOS
            loss_mask[i, src_len : src_len + len(digits) + 1] = True
        return SequenceData(inputs, targets, np.ones((n, length), bool), loss_mask)

    reference = sample("train", np.random.default_rng((0, len(SPLITS))), 4096)
    scored = reference.targets[reference.loss_mask]
    frequent = int(np.bincount(scored, minlength=OUTPUT_SIZE).argmax())

    def baseline(data: SequenceData) -> np.ndarray:
        logits = np.zeros(data.targets.shape + (OUTPUT_SIZE,), np.float32)
        logits[..., frequent] = 1.0
        return logits

    return TranslationTask(
        name="numbers",
        input_size=len(VOCABULARY),
        output_size=OUTPUT_SIZE,
        input_kind="tokens",
        objective="per-step-xent",
        metric="accuracy",
        description=f"translate English number words (up to {max_digits} digits, {src_len} words) into digits",
        baseline_metric=float(np.mean(scored == frequent)),
        options={"max_digits": max_digits},
        sampler=lambda rng, n: sample("train", rng, n),
        baseline_outputs=baseline,
        source_length=src_len,
        target_length=tgt_len,
        split_sampler=sample,
    )


TASKS["numbers"] = numbers
