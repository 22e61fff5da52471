r"""Count-based n-gram language models over integer token ids.

An order-``N`` model makes the Markov assumption

    P(w_i | w_1 .. w_{i-1})  ≈  P(w_i | h),   h = w_{i-N+1} .. w_{i-1},

and estimates the conditional from counts ``c(.)`` in the training ids, where
``c(h •) = Σ_w c(h w)`` is the number of times ``h`` is followed by a token and
``V`` is the vocabulary size.  Three estimators (``smoothing``):

``"mle"`` — maximum likelihood, ``P(w | h) = c(h w) / c(h •)``; a bigram is
    ``count(w1, w2) / count(w1 •)``.  An event never seen after a seen context
    has probability 0, so the perplexity of text containing one is ``inf``.
    When ``c(h •) = 0`` the estimate is undefined and the longest suffix of
    ``h`` with ``c(h' •) > 0`` is used instead (the empty context always
    qualifies), so every conditional is still a distribution.

``"add-k"`` — additive (Lidstone) smoothing, ``P(w | h) = (c(h w) + k) /
    (c(h •) + k V)`` with ``k > 0`` (default ``k = 1``, i.e. Laplace); an
    unseen context gives the uniform ``1 / V``.

``"kneser-ney"`` — interpolated *modified* Kneser-Ney (Chen & Goodman, 1998)
    with three discounts per order estimated from count-of-counts::

        P_m(w | h) = (a_m(h w) - D_m(a_m(h w))) / A_m(h) + γ_m(h) P_{m-1}(w | h⁻)
        γ_m(h)     = Σ_w D_m(a_m(h w)) / A_m(h),      A_m(h) = Σ_w a_m(h w)
        P_0(w)     = 1 / V

    for ``m = 1 .. N`` where ``|h| = m - 1`` and ``h⁻`` drops the first token of
    ``h``.  If ``A_m(h) = 0`` then ``P_m(w | h) = P_{m-1}(w | h⁻)``.  The top
    order uses raw counts, ``a_N = c``; lower orders use continuation counts
    ``a_m(h w) = N1+(• h w) = |{x : c(x h w) > 0}|``.  ``D_m(0) = 0``,
    ``D_m(1) = D1``, ``D_m(2) = D2`` and ``D_m(a ≥ 3) = D3+``, with
    ``Y = n1 / (n1 + 2 n2)``, ``D1 = 1 - 2Y n2/n1``, ``D2 = 2 - 3Y n3/n2``,
    ``D3+ = 3 - 4Y n4/n3`` where ``n_k`` is the number of distinct m-grams with
    ``a_m = k``.  If some ``n_k`` (k ≤ 4) is zero or an estimate is not
    positive, all three discounts of that order fall back to 0.75 (plain
    KN).  The unigram level interpolates with the uniform distribution, so
    tokens never seen in training get non-zero probability.

Every token of an evaluated id array is scored; token ``t`` is conditioned on
the ``min(t, N-1)`` tokens before it *in that array*.  The first ``N-1`` tokens
thus use shorter contexts: MLE and add-k use the order-``(t+1)`` estimate from
raw counts, Kneser-Ney starts its recursion at order ``t+1`` (the same
continuation-count distribution the full model backs off to), exactly as if
the missing longer contexts had never been seen.

Counting is vectorised: the m-grams of every order are keyed as
``rank(prefix (m-1)-gram) * V + last token`` (an int64 that never overflows
because there are at most ``len(ids)`` distinct prefixes), collected with
``np.unique``, and looked up with ``np.searchsorted``.  Keys of one order are
sorted by context, so the m-grams sharing a context form a contiguous run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Smoothing = Literal["mle", "add-k", "kneser-ney"]
SMOOTHINGS: tuple[str, ...] = ("mle", "add-k", "kneser-ney")
KN_FALLBACK_DISCOUNT = 0.75


def _as_ids(ids: Sequence[int] | np.ndarray, vocab_size: int, what: str) -> np.ndarray:
    """Validate a 1-D integer id array against ``vocab_size`` and return it as int64."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{what} out of range: found ids in [{lo}, {hi}] but vocab_size={vocab_size} "
            f"(vocabulary size mismatch?)"
        )
    return arr.astype(np.int64)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _kn_discounts(a: np.ndarray) -> tuple[float, float, float]:
    """Modified Kneser-Ney discounts (D1, D2, D3+) from the count-of-counts of ``a``."""
    n1, n2, n3, n4 = (int(np.count_nonzero(a == j)) for j in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) > 0:
        y = n1 / (n1 + 2 * n2)
        d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
        if all(x > 0 for x in d):
            return d
    return (KN_FALLBACK_DISCOUNT,) * 3


@dataclass(frozen=True)
class _Level:
    """Statistics of one order ``m``.

    ``keys``: sorted distinct keys ``ctx_rank * V + w`` of the m-grams, where
    ``ctx_rank`` indexes the (m-1)-gram table.  ``counts``: the counts ``a`` the
    estimator uses for each key.  ``ctx_total``: ``A(h) = Σ_w a(h w)`` indexed
    by ``ctx_rank``.  ``ctx_backoff``: ``Σ_w D(a(h w))`` (Kneser-Ney only).
    ``discount``: ``D(a)`` looked up as ``discount[min(a, 3)]``.
    """

    keys: np.ndarray
    counts: np.ndarray
    ctx_total: np.ndarray
    ctx_backoff: np.ndarray
    discount: np.ndarray


@dataclass(frozen=True)
class NGramCounts:
    """The m-gram counts of one training text, ``m = 1 .. max_order`` (:func:`count_ngrams`):
    everything a model of any order up to ``max_order`` is built from.

    Per order m (index m - 1): ``keys``, the sorted distinct keys ``rank(prefix) * V + last token``;
    ``raw``, each m-gram's count; ``continuation``, for each m-gram g the number of distinct
    (m+1)-grams ending in g, ``N1+(• g)`` (Kneser-Ney's lower orders; zeros at ``max_order``).
    """

    vocab_size: int
    keys: list[np.ndarray]
    raw: list[np.ndarray]
    continuation: list[np.ndarray]

    @property
    def max_order(self) -> int:
        return len(self.keys)


def count_ngrams(ids: Sequence[int] | np.ndarray, max_order: int, vocab_size: int) -> NGramCounts:
    """Count every m-gram of ``ids``, ``m = 1 .. max_order`` (one ``np.unique`` per order).

    Raises ``ValueError`` for ``max_order < 1``, ``vocab_size < 1``, empty ``ids`` or ids outside
    ``[0, vocab_size)``.
    """
    max_order = _positive_int(max_order, "order")
    vocab_size = _positive_int(vocab_size, "vocab_size")
    arr = _as_ids(ids, vocab_size, "training ids")
    n = arr.size
    if n == 0:
        raise ValueError("training ids are empty")
    if (n + 1) * vocab_size >= 2**63:
        raise ValueError(f"{n} tokens x vocab_size {vocab_size} overflows int64 n-gram keys")
    keys_by_order: list[np.ndarray] = []
    raw_by_order: list[np.ndarray] = []
    continuation: list[np.ndarray] = []
    inv_prev = np.zeros(n + 1, dtype=np.int64)  # rank of the empty 0-gram at every position
    for m in range(1, max_order + 1):
        n_pos = n - m + 1
        if n_pos <= 0:
            keys = inv = counts = np.zeros(0, dtype=np.int64)
        else:
            pos_keys = inv_prev[:n_pos] * vocab_size + arr[m - 1 :]
            keys, inv, counts = np.unique(pos_keys, return_inverse=True, return_counts=True)
            inv = inv.reshape(-1)
        if m > 1:
            # N1+(• g) for each (m-1)-gram g: distinct m-grams whose suffix is g.
            suffix = np.zeros(keys.size, dtype=np.int64)
            suffix[inv] = inv_prev[1 : 1 + inv.size]
            continuation.append(np.bincount(suffix, minlength=keys_by_order[-1].size))
        keys_by_order.append(keys)
        raw_by_order.append(counts)
        inv_prev = inv
    continuation.append(np.zeros(keys_by_order[-1].size, dtype=np.int64))
    return NGramCounts(vocab_size, keys_by_order, raw_by_order, continuation)


def _find(keys: np.ndarray, vocab_size: int, ctx: np.ndarray, words: np.ndarray) -> np.ndarray:
    """Index of the key ``(ctx, word)`` in the sorted ``keys``, -1 where absent or ``ctx < 0``."""
    out = np.full(np.broadcast(ctx, words).shape, -1, dtype=np.int64)
    if keys.size == 0:
        return out
    key = ctx * vocab_size + words
    idx = np.minimum(np.searchsorted(keys, key), keys.size - 1)
    found = (ctx >= 0) & (keys[idx] == key)
    out[found] = idx[found]
    return out


def _text_lookup(keys: list[np.ndarray], vocab_size: int, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Where the m-grams of a scored text sit in the count tables ``keys`` (orders 1 .. len(keys)).

    Returns ``(contexts, grams)``: ``contexts[m-1][t]``, the rank of the (m-1)-gram ending just
    before position t in the order-(m-1) table (the empty context has rank 0; -1 where that context
    is unseen or starts before ``ids``), and ``grams[m-1][t]``, the index of the m-gram ending at t
    in the order-m table (-1 where unseen). The context of order m + 1 is the m-gram one step back.
    """
    ctx = np.zeros(ids.size, dtype=np.int64)
    contexts, grams = [], []
    for level_keys in keys:
        gram = _find(level_keys, vocab_size, ctx, ids)
        contexts.append(ctx)
        grams.append(gram)
        ctx = np.concatenate((np.full(1, -1, dtype=np.int64), gram[:-1]))[: ids.size]
    return contexts, grams


def _mean(log_probs: np.ndarray) -> float:
    """The mean negative log-probability of a scored text."""
    if log_probs.size == 0:
        raise ValueError("cannot evaluate empty ids")
    return float(-log_probs.mean())


def _check_estimator(smoothing: str, k: float) -> None:
    if smoothing not in SMOOTHINGS:
        raise ValueError(f"smoothing must be one of {SMOOTHINGS}, got {smoothing!r}")
    if smoothing == "add-k" and not (math.isfinite(k) and k > 0):
        raise ValueError(f"add-k smoothing needs a finite k > 0, got {k!r}")


class NGramModel:
    """An order-``N`` n-gram model over ids ``0 .. vocab_size-1``; build it with :meth:`fit`."""

    def __init__(
        self, order: int, vocab_size: int, smoothing: str, k: float, levels: list[_Level]
    ) -> None:
        self.order = order
        self.vocab_size = vocab_size
        self.smoothing = smoothing
        self.k = k
        self._levels = levels

    @classmethod
    def fit(
        cls,
        ids: Sequence[int] | np.ndarray,
        order: int,
        vocab_size: int,
        smoothing: Smoothing = "kneser-ney",
        k: float = 1.0,
    ) -> NGramModel:
        """Count all m-grams, ``m = 1 .. order``, of ``ids`` and prepare the estimator.

        ``k`` is used by ``"add-k"`` only.  Raises ``ValueError`` for
        ``order < 1``, ``vocab_size < 1``, empty ``ids``, ids outside
        ``[0, vocab_size)``, an unknown smoothing or ``k <= 0``.
        """
        _check_estimator(smoothing, k)
        return cls.from_counts(count_ngrams(ids, order, vocab_size), order, smoothing, k)

    @classmethod
    def from_counts(cls, counts: NGramCounts, order: int, smoothing: Smoothing = "kneser-ney",
                    k: float = 1.0) -> NGramModel:
        """The order-``order`` model of the text that ``counts`` counted (``order`` at most
        ``counts.max_order``): models of several orders and smoothings share one counting."""
        order = _positive_int(order, "order")
        if order > counts.max_order:
            raise ValueError(f"order {order} needs counts up to order {order}, these go up to {counts.max_order}")
        _check_estimator(smoothing, k)
        vocab_size = counts.vocab_size
        levels = []
        for m in range(1, order + 1):
            keys = counts.keys[m - 1]
            if smoothing == "kneser-ney" and m < order:
                a = counts.continuation[m - 1]
            else:
                a = counts.raw[m - 1]
            n_ctx = 1 if m == 1 else counts.keys[m - 2].size
            ctx = keys // vocab_size
            total = np.bincount(ctx, weights=a, minlength=n_ctx)
            if smoothing == "kneser-ney":
                discount = np.array((0.0, *_kn_discounts(a)))
                backoff = np.bincount(ctx, weights=discount[np.minimum(a, 3)], minlength=n_ctx)
            else:
                discount = np.zeros(4)
                backoff = np.zeros(n_ctx)
            levels.append(_Level(keys, a.astype(np.float64), total, backoff, discount))
        return cls(order, vocab_size, smoothing, float(k), levels)

    @property
    def num_ngrams(self) -> tuple[int, ...]:
        """Number of distinct m-grams in the training ids, for ``m = 1 .. order``."""
        return tuple(level.keys.size for level in self._levels)

    @property
    def discounts(self) -> tuple[tuple[float, float, float], ...]:
        """Kneser-Ney ``(D1, D2, D3+)`` per order ``1 .. order`` (zeros for other smoothings)."""
        return tuple(
            (float(lv.discount[1]), float(lv.discount[2]), float(lv.discount[3])) for lv in self._levels
        )

    def _lookup(self, ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """:func:`_text_lookup` of ``ids`` in this model's tables."""
        return _text_lookup([level.keys for level in self._levels], self.vocab_size, ids)

    def _probs(
        self, contexts: list[np.ndarray], words: np.ndarray, history: np.ndarray,
        grams: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Probabilities of ``words`` given per-order context ranks.

        ``contexts[m-1]`` is the rank of the (m-1)-token context in the
        order-(m-1) table (-1 if unseen or unavailable), ``history`` the number
        of context tokens available; all broadcast against ``words``.
        ``grams[m-1]``, where given, is the index of each (context, word)
        m-gram in the order-m table (-1 if unseen), as :func:`_text_lookup`
        finds it; otherwise it is looked up here.
        """
        shape = np.broadcast_shapes(np.shape(words), np.shape(history), *(np.shape(c) for c in contexts))
        p = np.full(shape, 1.0 / self.vocab_size)
        for m, (level, ctx) in enumerate(zip(self._levels, contexts), start=1):
            ctx = np.broadcast_to(ctx, shape)
            seen_ctx = ctx >= 0
            total = np.zeros(shape)
            total[seen_ctx] = level.ctx_total[ctx[seen_ctx]]
            gram = _find(level.keys, self.vocab_size, ctx, words) if grams is None else grams[m - 1]
            a = np.zeros(shape)
            a[gram >= 0] = level.counts[gram[gram >= 0]]
            if self.smoothing == "add-k":
                kv = self.k * self.vocab_size
                p = np.where(history >= m - 1, (a + self.k) / (total + kv), p)
                continue
            seen = total > 0
            denom = np.where(seen, total, 1.0)
            if self.smoothing == "mle":
                p = np.where(seen, a / denom, p)
            else:
                backoff = np.zeros(shape)
                backoff[seen] = level.ctx_backoff[ctx[seen]]
                disc = level.discount[np.minimum(a, 3).astype(np.int64)]
                p = np.where(seen, (a - disc + backoff * p) / denom, p)
        return p

    def log_prob(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Natural-log probability of each token of ``ids`` given those before it (``-inf`` if 0)."""
        arr = _as_ids(ids, self.vocab_size, "ids")
        return self._log_prob(arr, *self._lookup(arr))

    def _log_prob(self, arr: np.ndarray, contexts: list[np.ndarray], grams: list[np.ndarray]) -> np.ndarray:
        """:meth:`log_prob` of ``arr`` from its lookup (:func:`_text_lookup`, at least this model's
        order deep: a deeper one, made once for models of several orders, serves them all)."""
        p = self._probs(contexts[: self.order], arr, np.arange(arr.size), grams[: self.order])
        with np.errstate(divide="ignore"):
            return np.log(p)

    def _mean_nll(self, ids: Sequence[int] | np.ndarray) -> float:
        return _mean(self.log_prob(ids))

    def perplexity(self, ids: Sequence[int] | np.ndarray) -> float:
        """``exp(-mean log P)`` over the tokens of ``ids``; ``inf`` if any has probability 0."""
        return _perplexity(self._mean_nll(ids))

    def bits_per_token(self, ids: Sequence[int] | np.ndarray) -> float:
        """``-mean log2 P`` over the tokens of ``ids`` (bits per character for char-level ids)."""
        return self._mean_nll(ids) / math.log(2)

    def prob_next(self, context_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Distribution of the next token over the whole vocabulary (sums to 1).

        Only the last ``order - 1`` ids of ``context_ids`` matter; a shorter
        context is handled as at the start of an evaluated text.
        """
        ctx_ids = _as_ids(context_ids, self.vocab_size, "context ids")
        ctx_ids = ctx_ids[max(0, ctx_ids.size - self.order + 1) :] if self.order > 1 else ctx_ids[:0]
        # The context of a virtual token appended after ctx_ids.
        probe = np.append(ctx_ids, 0)
        contexts = [ranks[-1:] for ranks in self._lookup(probe)[0]]
        return self._probs(contexts, np.arange(self.vocab_size), np.array(ctx_ids.size))

    def sample(
        self,
        rng: np.random.Generator,
        length: int,
        prompt_ids: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw ``length`` new ids (int32, prompt not included), each from :meth:`prob_next`."""
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        keep = self.order - 1
        history = []
        if prompt_ids is not None:
            history = _as_ids(prompt_ids, self.vocab_size, "prompt ids").tolist()
        out = np.empty(length, dtype=np.int32)
        for i in range(length):
            history = history[-keep:] if keep else []
            cdf = np.cumsum(self.prob_next(np.asarray(history, dtype=np.int64)))
            token = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
            token = min(token, self.vocab_size - 1)
            out[i] = token
            history.append(token)
        return out


def ngram_report(
    train_ids: Sequence[int] | np.ndarray,
    eval_ids: Sequence[int] | np.ndarray | Mapping[str, Sequence[int] | np.ndarray],
    vocab_size: int,
    max_order: int,
    smoothings: Sequence[str] = SMOOTHINGS,
    k: float = 1.0,
) -> list[dict[str, Any]]:
    """Fit every order ``1 .. max_order`` with every smoothing and evaluate on ``eval_ids``.

    Returns one row per model: ``order``, ``smoothing``, ``perplexity``,
    ``bits_per_token`` and ``seconds`` (wall time to build it from the counts
    and evaluate it; the m-grams are counted, and looked up in each text,
    once for all models).
    ``eval_ids`` may name several texts (``{"valid": ..., "test": ...}``): each
    model is fitted once and scored on each, one row per text with its name
    as ``split``.
    """
    max_order = _positive_int(max_order, "max_order")
    named = isinstance(eval_ids, Mapping)
    texts = {name: _as_ids(ids, vocab_size, f"eval ids {name!r}" if named else "eval ids")
             for name, ids in (eval_ids.items() if named else [(None, eval_ids)])}
    for name, arr in texts.items():
        if arr.size == 0:
            raise ValueError(f"eval ids {name!r} are empty" if named else "eval ids are empty")
    for smoothing in smoothings:
        _check_estimator(smoothing, k)
    counts = count_ngrams(train_ids, max_order, vocab_size)
    lookups = {name: _text_lookup(counts.keys, vocab_size, arr) for name, arr in texts.items()}
    rows = []
    for order in range(1, max_order + 1):
        for smoothing in smoothings:
            start = time.perf_counter()
            model = NGramModel.from_counts(counts, order, smoothing, k)  # type: ignore[arg-type]
            for name, arr in texts.items():
                nll = _mean(model._log_prob(arr, *lookups[name]))
                rows.append(
                    {
                        **({"split": name} if named else {}),
                        "order": order,
                        "smoothing": smoothing,
                        "perplexity": _perplexity(nll),
                        "bits_per_token": nll / math.log(2),
                        "seconds": time.perf_counter() - start,
                    }
                )
    return rows


def _perplexity(mean_nll: float) -> float:
    try:
        return math.exp(mean_nll)
    except OverflowError:
        return math.inf


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Render rows (dicts with the same keys) as an aligned text table.

    Columns follow the key order of the first row; floats get 4 decimals
    (``inf`` stays ``inf``); numbers are right-aligned, text left-aligned.
    """
    if not rows:
        raise ValueError("no rows to format")
    columns = list(rows[0])
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    numeric = [all(isinstance(row[c], (int, float)) for row in rows) for c in columns]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:.4f}"
    return str(value)


def best_row(rows: Sequence[Mapping[str, Any]], key: str = "bits_per_token") -> Mapping[str, Any]:
    """The row with the smallest ``key`` (the first one on ties)."""
    if not rows:
        raise ValueError("no rows to choose from")
    return min(rows, key=lambda row: row[key])
