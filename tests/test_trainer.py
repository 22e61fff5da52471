"""The trainer: loss falls, runs are reproducible, resume repeats an uninterrupted run exactly,
checkpoints are atomic and verified, early stopping."""

import json

import jax
import numpy as np
import pytest

import recurrax
from recurrax.train import checkpoint
from recurrax.train.trainer import ShuffledBatches, TrainConfig, evaluate_sequences, fit


def sum_task(n, seed, length=6):
    """Predict the running sum of the inputs (per-step regression)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, length, 1)).astype(np.float32)
    return {"inputs": x, "targets": np.cumsum(x, axis=1).astype(np.float32), "mask": np.ones((n, length), bool)}


def run(tmp_path=None, steps=24, resume=False, **overrides):
    model = recurrax.SequenceModel("gru", 1, 8, 1, key=jax.random.key(0))
    valid = sum_task(16, 1)
    config = TrainConfig(**{"steps": steps, "batch_size": 8, "learning_rate": 3e-2, "eval_every": 8, "log_every": 8,
                            **overrides})
    return fit(
        model,
        ShuffledBatches(sum_task(40, 0), config.batch_size, config.seed),
        objective="per-step-mse",
        config=config,
        evaluate=lambda m: evaluate_sequences(m, valid, objective="per-step-mse", metric="mse"),
        run_dir=tmp_path,
        resume=resume,
        progress=False,
    )


def losses(records):
    return [(r["step"], r.get("loss"), r.get("valid_loss")) for r in records]


def test_loss_falls_and_runs_are_reproducible(tmp_path):
    a = run(tmp_path / "a")
    b = run(tmp_path / "b")
    assert losses(a.records) == losses(b.records)
    evals = [r["valid_loss"] for r in a.records if "valid_loss" in r]
    assert evals[-1] < 0.7 * evals[0]
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.eqx", "best.eqx", "loss.png"} <= files
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["steps"] == 24


@pytest.mark.parametrize("bptt", [dict(bptt="full"), dict(bptt="truncated", chunk=4), dict(bptt="curriculum", stride=2)])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, bptt):
    whole = run(tmp_path / "whole", **bptt)
    run(tmp_path / "split", steps=16, **bptt)  # "interrupted" after its checkpoint at step 16
    # pretend the first run logged more than its checkpoint before dying
    with (tmp_path / "split" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 17, "loss": 123.0}) + "\n")
    resumed = run(tmp_path / "split", resume=True, **bptt)
    assert losses(resumed.records) == losses(whole.records)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.model), jax.tree_util.tree_leaves(whole.model)):
        np.testing.assert_array_equal(a, b)


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_survives(tmp_path):
    run(tmp_path)
    path = tmp_path / "checkpoint.eqx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match="truncated.*previous checkpoint is kept at"):
        run(tmp_path, resume=True)
    path.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(checkpoint.CheckpointError, match="checksum"):
        run(tmp_path, resume=True)
    prev = checkpoint.read_metadata(checkpoint.previous_path(path))
    assert prev["step"] == 16


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.eqx"
    checkpoint.save(path, {"w": np.ones(3)}, {"step": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "fsync", broken)
    with pytest.raises(OSError):
        checkpoint.save(path, {"w": np.zeros(3)}, {"step": 2})
    tree, meta = checkpoint.load(path, {"w": np.zeros(3)})
    assert meta["step"] == 1 and np.all(tree["w"] == 1)
    assert [p.name for p in tmp_path.iterdir()] == ["c.eqx"]


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / "c.eqx"
    checkpoint.save(path, {"w": np.ones(3)})
    with pytest.raises(checkpoint.CheckpointError, match="does not match"):
        checkpoint.load(path, {"w": np.ones(4)})


def test_early_stopping(tmp_path):
    result = run(tmp_path, steps=200, learning_rate=0.5, patience=1)  # far too large a step: no progress
    assert result.stopped_early and result.step < 200
    assert result.best_valid_loss == min(r["valid_loss"] for r in result.records if "valid_loss" in r)
