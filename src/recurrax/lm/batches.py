"""Contiguous batches for language modelling, and evaluation with the state carried across a text.

Truncated BPTT over a text: the training ids are cut into B parallel streams; batch i of an epoch
is the i-th window of k tokens of every stream, with the next token of each as its target. The
recurrent state carried out of one window starts the next (``carries_state``), without gradient.
Each epoch shifts the windows by a random offset < k (seeded by (seed, epoch)), so the cut points
move.
"""

from __future__ import annotations

import math
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks


class ContiguousBatches:
    """``batch(epoch, i)``: inputs and targets (B, k) from B streams of one text, windows in order."""

    carries_state = True

    def __init__(self, ids: np.ndarray, batch_size: int, window: int, seed: int = 0):
        ids = np.asarray(ids, np.int32)
        self.batch_size, self.window, self.seed = batch_size, window, seed
        self.stream_length = (len(ids) - 1) // batch_size
        self.batches_per_epoch = (self.stream_length - window) // window
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the training text has {len(ids)} tokens: too few for {batch_size} streams of windows of {window} "
                f"tokens (need at least {batch_size * 2 * window + 1}); use a smaller --batch or --chunk"
            )
        usable = self.stream_length * batch_size
        self.inputs = ids[:usable].reshape(batch_size, self.stream_length)
        self.targets = ids[1 : usable + 1].reshape(batch_size, self.stream_length)

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        offset = int(np.random.default_rng([self.seed, epoch]).integers(0, self.window))
        lo = offset + index * self.window
        window = slice(lo, lo + self.window)
        return {
            "inputs": self.inputs[:, window],
            "targets": self.targets[:, window],
            "mask": np.ones((self.batch_size, self.window), bool),
        }


def evaluate_text(model, ids: np.ndarray, *, window: int = 1024) -> dict[str, float]:
    """Mean negative log-likelihood (nats) and bits per token of ``ids[1:]`` given the preceding ids,
    the state carried across the whole text (:func:`token_nll`)."""
    return text_scores(token_nll(model, ids, window=window))


def token_nll(model, ids: np.ndarray, *, window: int = 1024) -> np.ndarray:
    """−log P(w_{t+1} | w_1..w_t) in nats for every token of ``ids[1:]``: shape (len(ids) − 1,).

    One stream with the state carried across the whole text, processed ``window`` tokens at a time
    (one compiled function; the last window is padded).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"token_nll scores one text of token ids (T,), got shape {ids.shape}")
    if len(ids) < 2:
        raise ValueError("evaluation needs a text of at least two tokens")
    ids = np.asarray(_checks.token_ids(ids, model.vocab_size), np.int32)
    state = model.init_state()
    count = len(ids) - 1
    pieces = []
    for lo in range(0, count, window):
        inputs, targets = ids[lo : lo + window], ids[lo + 1 : lo + window + 1]
        n = len(targets)
        pad = window - n
        nll, state = _window_nll(model, state, np.pad(inputs[:n], (0, pad)), np.pad(targets, (0, pad)),
                                 np.arange(window) < n)
        pieces.append(np.asarray(nll)[:n])
    return np.concatenate(pieces).astype(np.float64)


@eqx.filter_jit
def _window_nll(model, state, inputs, targets, mask):
    """One window's token NLLs and the state after it; compiled once per model structure and
    window (module level, so that the evaluations of a training run share it)."""
    logits, state = model(inputs, state, mask=mask, return_state=True)
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], axis=-1)[:, 0], state


def text_scores(nll: np.ndarray) -> dict[str, float]:
    """Every token's negative log-likelihood (nats) as its mean ``valid_loss``, ``bits_per_token``
    and ``perplexity``, the keys every text evaluation returns."""
    nats = float(np.mean(nll))
    perplexity = math.exp(nats) if nats < math.log(sys.float_info.max) else math.inf  # a diverged model
    return {"valid_loss": nats, "bits_per_token": nats / math.log(2), "perplexity": perplexity}
