"""Sequence to sequence: the number-words data, teacher forcing, greedy and beam-search decoding."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrax.data import translation as TR
from recurrax.data.tasks import SPLITS, TASKS, get_task
from recurrax.seq2seq import Seq2Seq, beam_search, decode, greedy_decode, sequence_log_prob
from recurrax.train.trainer import ShuffledBatches, TrainConfig, fit


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (40, "forty"), (312, "three hundred and twelve"),
    (100, "one hundred"), (2005, "two thousand and five"), (1200, "one thousand two hundred"),
    (90017, "ninety thousand and seventeen"), (999999, "nine hundred and ninety nine thousand nine hundred and ninety nine"),
])
def test_number_words(n, words):
    assert " ".join(TR.number_to_words(n)) == words


def test_layout_is_teacher_forcing():
    task = get_task("numbers", max_digits=3)
    assert "numbers" in TASKS and task.source_length == 5 and task.target_length == 4
    data = task.generate("train", 50, seed=0)
    S = task.source_length
    for x, y, scored in zip(data.inputs, data.targets, data.loss_mask):
        words, answer = TR.words_of(x[:S]), TR.digits_of(y[S:])
        value = int(answer)
        assert words == " ".join(TR.number_to_words(value))
        k = len(answer)
        assert x[S] == TR.GO
        np.testing.assert_array_equal(x[S + 1 : S + 1 + k], y[S : S + k])  # input at step j is target j-1
        assert y[S + k] == TR.EOS and (y[S + k + 1 :] == TR.PAD).all()
        np.testing.assert_array_equal(np.flatnonzero(scored), np.arange(S, S + k + 1))
    assert task.exact_match(task.target_ids(data), data) == 1.0


def test_splits_hold_different_numbers():
    task = get_task("numbers", max_digits=4)
    numbers = {split: {int(TR.digits_of(y[task.source_length:])) for y in task.generate(split, 300, seed=1).targets}
               for split in SPLITS}
    assert not numbers["train"] & numbers["test"] and not numbers["train"] & numbers["valid"]
    assert {len(str(n)) for n in numbers["train"]} == {1, 2, 3, 4}
    assert {len(str(n)) for n in numbers["test"] | numbers["valid"]} == {3, 4}  # held-out numbers only
    assert not set(TR.split_of(np.arange(100, 10_000))) ^ {0, 1, 2}


def _model(seed, output_size=13, vocab=TR.OUTPUT_SIZE + len(TR.WORDS), hidden=16, source_length=5, cell="gru",
           pad=TR.PAD):
    return Seq2Seq(cell, vocab, output_size, hidden, source_length=source_length, pad=pad, key=jax.random.key(seed))


def test_teacher_forced_loss_decreases():
    task = get_task("numbers", max_digits=2)
    train = task.generate("train", 256, seed=0)
    model = _model(0, source_length=task.source_length)
    batch = {"inputs": train.inputs, "targets": train.targets, "mask": train.mask, "loss_mask": train.loss_mask}
    config = TrainConfig(steps=40, batch_size=32, learning_rate=1e-2, eval_every=40, log_every=40)
    result = fit(model, ShuffledBatches(batch, 32), objective=task.objective, config=config, progress=False)
    losses = [r["loss"] for r in result.records if "loss" in r]
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    # The outputs at the source steps are zeros (unscored); the decoder's are logits over 13 classes.
    out = result.model(jnp.asarray(train.inputs[0]))
    assert out.shape == (train.length, 13) and not out[: task.source_length].any()


def test_beam_width_one_is_greedy():
    task = get_task("numbers", max_digits=3)
    data = task.generate("valid", 16, seed=0)
    model = _model(1, source_length=task.source_length)
    sources = task.source(data)
    greedy = decode(model, sources, task.target_length)
    beam = decode(model, sources, task.target_length, beam_width=1)
    np.testing.assert_array_equal(greedy, beam)

    @jax.jit
    def scores(source):
        g_tokens, g_score = greedy_decode(model, source, task.target_length)
        _, b_score = beam_search(model, source, task.target_length, 1)
        return g_score, b_score, sequence_log_prob(model, source, g_tokens)

    g_score, b_score, rescored = scores(jnp.asarray(sources[0]))
    assert float(g_score) == pytest.approx(float(b_score), abs=1e-5)
    assert float(rescored) == pytest.approx(float(g_score), abs=1e-4)


@pytest.mark.parametrize("pad", [TR.PAD, 5])
def test_beam_search_finds_the_best_sequence_by_exhaustive_search(pad):
    # A tiny model: 4 output classes (pad, go, eos, one symbol), sequences of at most 3 tokens;
    # or pad outside the output classes (a source-only token), which beam search writes after eos.
    V, L = 4, 3
    candidates = []
    for length in range(1, L + 1):
        for seq in itertools.product(range(V), repeat=length):
            if TR.EOS in seq[:-1] or (length < L and seq[-1] != TR.EOS):
                continue  # eos ends a sequence; a shorter one must end with it
            candidates.append(list(seq) + [pad] * (L - length))
    candidates = jnp.asarray(candidates)

    @eqx.filter_jit
    def search(model, source):
        scores = jax.vmap(lambda seq: sequence_log_prob(model, source, seq))(candidates)
        return scores, beam_search(model, source, L, V**L), greedy_decode(model, source, L)[1]

    found_better_than_greedy = False
    for seed in range(3):
        model = _model(seed, output_size=V, vocab=6, hidden=8, source_length=3, cell="elman", pad=pad)
        model = eqx.tree_at(lambda m: m.head.weight, model, model.head.weight * 4)  # sharper distributions
        for source in ([4, 5, 0], [5, 5, 4]):
            scores, (tokens, score), greedy_score = search(model, jnp.asarray(source))
            assert float(score) == pytest.approx(float(scores.max()), abs=1e-4)
            np.testing.assert_array_equal(tokens, candidates[int(jnp.argmax(scores))])
            found_better_than_greedy |= float(greedy_score) < float(score) - 1e-4
    assert found_better_than_greedy  # the search is not trivially greedy on these models


def test_bad_arguments():
    model = _model(0)
    with pytest.raises(ValueError, match="beam_width must be a positive integer"):
        beam_search(model, jnp.zeros(5, jnp.int32), 3, 0)
    with pytest.raises(ValueError, match="cannot carry or reset a state"):
        model(jnp.zeros(8, jnp.int32), model.init_state())
    with pytest.raises(ValueError, match="eos token"):
        Seq2Seq("gru", 10, 2, 8, source_length=3, key=jax.random.key(0))
    vocab = model.embedding.shape[0]
    for bad in ([0, 1, vocab, 0, 0, 1, 3, 4], [0, 1, 2, 0, -1, 1, 3, 4]):
        with pytest.raises(ValueError, match="token ids must be in"):
            model(jnp.asarray(bad))
    with pytest.raises(ValueError, match="source token ids must be in"):
        decode(model, jnp.asarray([[0, 1, vocab, 0, 0]]), 3)
    with pytest.raises(ValueError, match=r"output_size \(12\) exceeds vocab_size \(10\)"):
        Seq2Seq("gru", 10, 12, 8, source_length=3, key=jax.random.key(0))
    one_source = r"sources must be a batch .* got shape \(5,\) \(one source: pass sources\[None\]\)"
    with pytest.raises(ValueError, match=one_source):
        decode(model, jnp.zeros(5, jnp.int32), 3)
    with pytest.raises(ValueError, match=r"got shape \(0, 5\)"):
        decode(model, jnp.zeros((0, 5), jnp.int32), 3)
    with pytest.raises(ValueError, match=f"decoded tokens must be in \\[0, {model.output_size}\\)"):
        sequence_log_prob(model, jnp.zeros(5, jnp.int32), jnp.asarray([model.output_size, 2]))
    with pytest.raises(ValueError, match="max_digits must be at most 6"):
        get_task("numbers", max_digits=7)
