"""N-gram language models (recurrax.lm.ngram) against a dictionary-based reference."""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest

from recurrax.lm.ngram import SMOOTHINGS, NGramModel, best_row, count_ngrams, format_table, ngram_report

# ---------------------------------------------------------------------------
# Reference: a second, straightforward implementation with dicts of tuples.
# ---------------------------------------------------------------------------


class Reference:
    """Brute-force MLE, add-k and interpolated modified Kneser-Ney over tuple counts."""

    def __init__(self, seq: list[int], order: int, vocab_size: int, k: float = 1.0) -> None:
        self.order, self.V, self.k = order, vocab_size, k
        self.raw: Counter[tuple[int, ...]] = Counter()
        for m in range(1, order + 1):
            for i in range(len(seq) - m + 1):
                self.raw[tuple(seq[i : i + m])] += 1
        # continuation count of g = number of distinct x with c(x g) > 0
        self.cont: Counter[tuple[int, ...]] = Counter()
        for gram in self.raw:
            if len(gram) >= 2:
                self.cont[gram[1:]] += 1
        self.disc = {}
        for m in range(1, order + 1):
            values = [self.a(g) for g in self.raw if len(g) == m]
            n = [sum(1 for v in values if v == j) for j in (1, 2, 3, 4)]
            d = (0.75, 0.75, 0.75)
            if min(n) > 0:
                y = n[0] / (n[0] + 2 * n[1])
                est = (1 - 2 * y * n[1] / n[0], 2 - 3 * y * n[2] / n[1], 3 - 4 * y * n[3] / n[2])
                if min(est) > 0:
                    d = est
            self.disc[m] = d

    def a(self, gram: tuple[int, ...]) -> int:
        return self.raw[gram] if len(gram) == self.order else self.cont[gram]

    def D(self, m: int, count: int) -> float:
        return 0.0 if count == 0 else self.disc[m][min(count, 3) - 1]

    def mle(self, w: int, hist: tuple[int, ...]) -> float:
        for start in range(len(hist) + 1):
            h = hist[start:]
            total = sum(self.raw[h + (v,)] for v in range(self.V))
            if total > 0:
                return self.raw[h + (w,)] / total
        raise AssertionError("the empty context is always seen")

    def add_k(self, w: int, hist: tuple[int, ...]) -> float:
        total = sum(self.raw[hist + (v,)] for v in range(self.V))
        return (self.raw[hist + (w,)] + self.k) / (total + self.k * self.V)

    def kn(self, w: int, hist: tuple[int, ...]) -> float:
        m = len(hist) + 1
        lower = 1.0 / self.V if m == 1 else self.kn(w, hist[1:])
        counts = [self.a(hist + (v,)) for v in range(self.V)]
        total = sum(counts)
        if total == 0:
            return lower
        gamma = sum(self.D(m, c) for c in counts) / total
        c = self.a(hist + (w,))
        return (c - self.D(m, c)) / total + gamma * lower

    def prob(self, smoothing: str, w: int, hist: tuple[int, ...]) -> float:
        fn = {"mle": self.mle, "add-k": self.add_k, "kneser-ney": self.kn}[smoothing]
        return fn(w, hist)

    def log_probs(self, smoothing: str, seq: list[int]) -> list[float]:
        out = []
        for t, w in enumerate(seq):
            hist = tuple(seq[max(0, t - self.order + 1) : t])
            p = self.prob(smoothing, w, hist)
            out.append(math.log(p) if p > 0 else -math.inf)
        return out


def markov_ids(
    rng: np.random.Generator, n: int, vocab: int, concentration: float = 0.3
) -> np.ndarray:
    """A sequence from a random first-order Markov chain (sequential; keep n small)."""
    trans = rng.dirichlet(np.full(vocab, concentration), size=vocab).cumsum(axis=1)
    out = np.empty(n, dtype=np.int64)
    x = 0
    for i, u in enumerate(rng.random(n)):
        x = min(int(np.searchsorted(trans[x], u)), vocab - 1)
        out[i] = x
    return out


def lexicon_ids(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """About n tokens of Zipf-distributed "words" (fixed random id strings) — vectorised."""
    words = [rng.integers(0, vocab, size=rng.integers(2, 8)) for _ in range(2000)]
    picks = np.minimum(rng.zipf(1.3, size=n // 3), len(words)) - 1
    return np.concatenate([words[i] for i in picks])[:n]


# ---------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_reference(order: int, smoothing: str) -> None:
    rng = np.random.default_rng(order)
    vocab = 7  # id 6 never occurs in training
    train = markov_ids(rng, 400, 6)
    evaluation = np.concatenate([markov_ids(rng, 60, 6), [6, 2, 6, 6], train[:10]])
    k = 0.5
    model = NGramModel.fit(train, order, vocab, smoothing, k=k)  # type: ignore[arg-type]
    ref = Reference(train.tolist(), order, vocab, k=k)
    expected_lp = ref.log_probs(smoothing, evaluation.tolist())
    np.testing.assert_allclose(model.log_prob(evaluation), expected_lp, rtol=1e-10)
    for hist in [(), (0,), (6,), (1, 2), (2, 6), (3, 1, 4), (6, 6, 6), tuple(train[-5:].tolist())]:
        used = hist[max(0, len(hist) - order + 1) :] if order > 1 else ()
        expected = [ref.prob(smoothing, w, used) for w in range(vocab)]
        np.testing.assert_allclose(model.prob_next(list(hist)), expected, rtol=1e-10, atol=1e-15)
    # built from counts made for a higher order (as the report builds every order from one counting)
    shared = NGramModel.from_counts(count_ngrams(train, 6, vocab), order, smoothing, k=k)  # type: ignore[arg-type]
    np.testing.assert_allclose(shared.log_prob(evaluation), expected_lp, rtol=1e-10)


def test_kneser_ney_discounts_are_estimated() -> None:
    rng = np.random.default_rng(0)
    train = markov_ids(rng, 3000, 10)
    model = NGramModel.fit(train, 3, 10, "kneser-ney")
    ref = Reference(train.tolist(), 3, 10)
    for m, d in enumerate(model.discounts, start=1):
        np.testing.assert_allclose(d, ref.disc[m])
    # count-of-counts are rich enough here for the Chen & Goodman estimates at order 3
    assert model.discounts[2] != (0.75, 0.75, 0.75)
    d1, d2, d3 = model.discounts[2]
    assert 0 < d1 < 1 and 0 < d2 < 2 and 0 < d3 < 3
    assert NGramModel.fit(train, 3, 10, "mle").discounts == ((0.0, 0.0, 0.0),) * 3


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_distributions_sum_to_one(smoothing: str) -> None:
    rng = np.random.default_rng(1)
    vocab = 30
    train = markov_ids(rng, 2000, 25)  # ids 25..29 are never seen
    model = NGramModel.fit(train, 4, vocab, smoothing)  # type: ignore[arg-type]
    starts, lengths = rng.integers(0, 1990, 100), rng.integers(0, 6, 100)
    contexts = [train[i : i + L] for i, L in zip(starts, lengths)]
    contexts += [rng.integers(0, vocab, size=L) for L in rng.integers(0, 6, 100)]  # mostly unseen
    contexts += [np.array([29, 28, 27]), np.array([], dtype=np.int64)]
    for ctx in contexts:
        p = model.prob_next(ctx)
        assert p.shape == (vocab,)
        assert np.all(p >= 0)
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        if smoothing != "mle":
            assert np.all(p > 0)  # smoothing leaves no zero, even for never-seen tokens


def test_mle_bigram_is_count_ratio() -> None:
    # a=0 b=1 c=2 ; text: a b a c a b b a
    seq = [0, 1, 0, 2, 0, 1, 1, 0]
    model = NGramModel.fit(seq, 2, 3, "mle")
    # count(a, b) = 2, count(a •) = 3 ; count(b, a) = 2, count(b •) = 3 ; count(c, a) = 1
    p_a = model.prob_next([0])
    np.testing.assert_allclose(p_a, [0.0, 2 / 3, 1 / 3])
    np.testing.assert_allclose(model.prob_next([1]), [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(model.prob_next([2]), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(model.prob_next([]), [4 / 8, 3 / 8, 1 / 8])
    # first token scored by the unigram, the rest by the bigram
    np.testing.assert_allclose(np.exp(model.log_prob([0, 1, 0])), [4 / 8, 2 / 3, 2 / 3])


def test_mle_unseen_event_gives_infinite_perplexity() -> None:
    model = NGramModel.fit([0, 1, 0, 1, 0, 1], 2, 3, "mle")
    lp = model.log_prob([0, 0, 1])  # bigram (0, 0) never seen
    assert lp[1] == -math.inf
    assert model.perplexity([0, 0, 1]) == math.inf
    assert model.bits_per_token([0, 0, 1]) == math.inf
    assert model.perplexity([0, 1, 0]) == pytest.approx(math.exp(-np.mean(np.log([0.5, 1, 1]))))


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_perplexity_and_bits_definitions(smoothing: str) -> None:
    rng = np.random.default_rng(2)
    train = markov_ids(rng, 1000, 8)
    evaluation = markov_ids(rng, 200, 8)
    model = NGramModel.fit(train, 3, 8, smoothing)  # type: ignore[arg-type]
    lp = model.log_prob(evaluation)
    assert lp.shape == evaluation.shape
    assert model.perplexity(evaluation) == pytest.approx(math.exp(-lp.mean()))
    assert model.bits_per_token(evaluation) == pytest.approx(-lp.mean() / math.log(2))


def test_smoothing_ranks_sensibly_on_held_out_data() -> None:
    rng = np.random.default_rng(3)
    data = markov_ids(rng, 6000, 20, concentration=0.2)
    train, held = data[:5000], data[5000:]
    bits = {
        s: NGramModel.fit(train, 3, 20, s).bits_per_token(held)  # type: ignore[arg-type]
        for s in SMOOTHINGS
    }
    assert bits["mle"] == math.inf
    assert bits["kneser-ney"] < bits["add-k"]
    # the data is first-order Markov: a bigram KN model beats the unigram
    uni = NGramModel.fit(train, 1, 20, "kneser-ney").bits_per_token(held)
    bi = NGramModel.fit(train, 2, 20, "kneser-ney").bits_per_token(held)
    assert bi < uni - 0.5


def test_add_k_formula() -> None:
    seq = [0, 1, 0, 2, 0, 1]
    model = NGramModel.fit(seq, 2, 4, "add-k", k=2.0)
    # c(0 •) = 3: c(0 1) = 2, c(0 2) = 1
    expected = np.array([0 + 2, 2 + 2, 1 + 2, 0 + 2]) / (3 + 2 * 4)
    np.testing.assert_allclose(model.prob_next([0]), expected)
    np.testing.assert_allclose(model.prob_next([3]), np.full(4, 0.25))  # unseen context: uniform


def test_sample() -> None:
    rng = np.random.default_rng(4)
    train = markov_ids(rng, 500, 9)
    model = NGramModel.fit(train, 3, 12, "kneser-ney")
    s = model.sample(np.random.default_rng(0), 50, prompt_ids=train[:4])
    assert s.shape == (50,) and s.dtype == np.int32
    assert s.min() >= 0 and s.max() < 12
    again = model.sample(np.random.default_rng(0), 50, prompt_ids=train[:4])
    np.testing.assert_array_equal(s, again)
    assert model.sample(rng, 0).shape == (0,)
    # a deterministic cycle is continued from the prompt
    cycle = NGramModel.fit([0, 1, 2, 3] * 50, 2, 4, "mle")
    np.testing.assert_array_equal(cycle.sample(rng, 8, prompt_ids=[2]), [3, 0, 1, 2, 3, 0, 1, 2])
    uni = NGramModel.fit([0, 1, 2, 3] * 50, 1, 4, "mle")
    draws = uni.sample(np.random.default_rng(1), 4000)
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, 0.25, atol=0.03)
    with pytest.raises(ValueError, match="length"):
        model.sample(rng, -1)
    with pytest.raises(ValueError, match="out of range"):
        model.sample(rng, 3, prompt_ids=[12])


def test_training_shorter_than_order() -> None:
    for smoothing in SMOOTHINGS:
        model = NGramModel.fit([1, 2], 5, 4, smoothing)  # type: ignore[arg-type]
        assert model.num_ngrams == (2, 1, 0, 0, 0)
        assert model.prob_next([1, 2, 3, 1]).sum() == pytest.approx(1.0)
        assert np.all(np.isfinite(model.log_prob([1, 2])))


def test_orders_beyond_the_longest_repeat_change_nothing() -> None:
    # the training text has no 41-gram that occurs twice, no 51-gram at all: an order-80 model
    # backs off exactly as an order-50 one (orders above 64 once failed inside NumPy's broadcast)
    rng = np.random.default_rng(3)
    train, held_out = rng.integers(0, 5, 50), rng.integers(0, 5, 30)
    for smoothing in ("add-k", "kneser-ney"):
        high = NGramModel.fit(train, 80, 5, smoothing).log_prob(held_out)  # type: ignore[arg-type]
        np.testing.assert_allclose(high, NGramModel.fit(train, 50, 5, smoothing).log_prob(held_out))  # type: ignore[arg-type]


def test_errors() -> None:
    with pytest.raises(ValueError, match="order"):
        NGramModel.fit([0, 1], 0, 2)
    with pytest.raises(ValueError, match="order"):
        NGramModel.fit([0, 1], 2.0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        NGramModel.fit(np.array([], dtype=np.int64), 2, 2)
    with pytest.raises(ValueError, match="vocab_size"):
        NGramModel.fit([0, 1], 2, 0)
    with pytest.raises(ValueError, match="out of range.*vocab_size=3"):
        NGramModel.fit([0, 1, 3], 2, 3)
    with pytest.raises(ValueError, match="out of range"):
        NGramModel.fit([0, -1], 2, 3)
    with pytest.raises(ValueError, match="integers"):
        NGramModel.fit([0.0, 1.0], 2, 3)
    with pytest.raises(ValueError, match="1-D"):
        NGramModel.fit([[0, 1]], 2, 3)
    with pytest.raises(ValueError, match="smoothing"):
        NGramModel.fit([0, 1], 2, 3, "witten-bell")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k > 0"):
        NGramModel.fit([0, 1], 2, 3, "add-k", k=0.0)
    model = NGramModel.fit([0, 1, 2], 2, 3)
    with pytest.raises(ValueError, match="vocabulary size mismatch"):
        model.log_prob([0, 3])
    with pytest.raises(ValueError, match="out of range"):
        model.prob_next([7])
    with pytest.raises(ValueError, match="empty"):
        model.perplexity([])
    assert model.log_prob([]).shape == (0,)
    with pytest.raises(ValueError, match="vocabulary size mismatch"):
        ngram_report([0, 1, 2], [0, 5], 3, 2)
    with pytest.raises(ValueError, match="max_order"):
        ngram_report([0, 1, 2], [0, 1], 3, 0)


def test_report_table_and_best_row() -> None:
    rng = np.random.default_rng(5)
    data = markov_ids(rng, 3000, 10)
    rows = ngram_report(data[:2500], data[2500:], 10, 3)
    expected = [(o, s) for o in (1, 2, 3) for s in SMOOTHINGS]
    assert [(r["order"], r["smoothing"]) for r in rows] == expected
    for r in rows:
        model = NGramModel.fit(data[:2500], r["order"], 10, r["smoothing"])
        assert r["perplexity"] == pytest.approx(model.perplexity(data[2500:]))
        assert r["bits_per_token"] == pytest.approx(model.bits_per_token(data[2500:]))
        assert r["seconds"] >= 0
    best = best_row(rows)
    assert best["bits_per_token"] == min(r["bits_per_token"] for r in rows)
    assert best_row(rows, key="perplexity") is best
    table = format_table(rows)
    lines = table.splitlines()
    assert len(lines) == len(rows) + 2
    assert lines[0].split() == ["order", "smoothing", "perplexity", "bits_per_token", "seconds"]
    assert set(lines[1]) <= {"-", " "}
    assert "inf" in table  # the order-3 MLE meets unseen trigrams
    # columns are padded to a common width and the last (numeric) one is right-aligned
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split()[3] == f"{rows[0]['bits_per_token']:.4f}"
    with pytest.raises(ValueError):
        best_row([])
    with pytest.raises(ValueError):
        format_table([])
    # several named texts: each model fitted once, one row per text, the same numbers
    named = ngram_report(data[:2500], {"a": data[2500:2700], "b": data[2700:]}, 10, 2)
    assert [(r["split"], r["order"], r["smoothing"]) for r in named] == [
        (t, o, s) for o in (1, 2) for s in SMOOTHINGS for t in ("a", "b")]
    for r in named:
        held = data[2500:2700] if r["split"] == "a" else data[2700:]
        model = NGramModel.fit(data[:2500], r["order"], 10, r["smoothing"])
        assert r["bits_per_token"] == pytest.approx(model.bits_per_token(held))
    with pytest.raises(ValueError, match="eval ids 'b' are empty"):
        ngram_report(data[:2500], {"a": data[2500:], "b": data[:0]}, 10, 2)


def test_models_from_counts_check_their_order() -> None:
    counts = count_ngrams([0, 1, 2, 1, 0], 2, 3)
    assert counts.max_order == 2 and NGramModel.from_counts(counts, 2).order == 2
    with pytest.raises(ValueError, match="order 3 needs counts up to order 3, these go up to 2"):
        NGramModel.from_counts(counts, 3)
    with pytest.raises(ValueError, match="smoothing must be one of"):
        NGramModel.from_counts(counts, 1, "witten-bell")  # type: ignore[arg-type]


def test_five_gram_on_a_million_tokens_is_fast() -> None:
    rng = np.random.default_rng(6)
    vocab = 60
    ids = lexicon_ids(rng, 1_100_000, vocab)
    train, held = ids[:1_000_000], ids[1_000_000:]
    start = time.perf_counter()
    model = NGramModel.fit(train, 5, vocab, "kneser-ney")
    fitted = time.perf_counter() - start
    bits = model.bits_per_token(held)
    evaluated = time.perf_counter() - start - fitted
    assert model.num_ngrams[0] == len(np.unique(train))
    assert model.num_ngrams[4] <= 1_000_000 - 4
    assert math.isfinite(bits) and 0 < bits < math.log2(vocab)
    # generous bounds for slow CI machines; typically ~1 s and ~0.1 s
    assert fitted < 30 and evaluated < 10
