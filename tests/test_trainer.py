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


def run(tmp_path=None, steps=24, resume=False, interrupt=None, **overrides):
    """Train a small GRU; ``interrupt``: ("batch" | "evaluation", n) raises KeyboardInterrupt at the
    n-th batch drawn or the n-th evaluation (counting from 1), as Ctrl-C there would."""
    model = recurrax.SequenceModel("gru", 1, 8, 1, key=jax.random.key(0))
    valid = sum_task(16, 1)
    config = TrainConfig(**{"steps": steps, "batch_size": 8, "learning_rate": 3e-2, "eval_every": 8, "log_every": 8,
                            **overrides})
    source = ShuffledBatches(sum_task(40, 0), config.batch_size, config.seed)
    calls = {"batch": 0, "evaluation": 0}

    def interrupted(kind):
        calls[kind] += 1
        if interrupt == (kind, calls[kind]):
            raise KeyboardInterrupt

    def evaluate(m):
        interrupted("evaluation")
        return evaluate_sequences(m, valid, objective="per-step-mse", metric="mse")

    class Interrupted(ShuffledBatches):
        def batch(self, epoch, index):
            interrupted("batch")
            return super().batch(epoch, index)

    source.__class__ = Interrupted
    return fit(model, source, objective="per-step-mse", config=config, evaluate=evaluate, run_dir=tmp_path,
               resume=resume, progress=False)


def assert_same_run(a, b):
    assert losses(a.records) == losses(b.records)
    for x, y in zip(jax.tree_util.tree_leaves(a.model), jax.tree_util.tree_leaves(b.model)):
        np.testing.assert_array_equal(x, y)


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
    assert_same_run(resumed, whole)


def test_resume_reads_the_previous_checkpoint_when_the_last_is_corrupt(tmp_path, capsys):
    whole = run(tmp_path / "whole")
    run(tmp_path / "run")
    path = tmp_path / "run" / "checkpoint.eqx"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    resumed = run(tmp_path / "run", resume=True)
    assert "truncated" in capsys.readouterr().out
    assert resumed.start_step == 16  # from checkpoint.eqx.prev
    assert_same_run(resumed, whole)
    for corrupt in (path, checkpoint.previous_path(path)):
        corrupt.write_bytes(data[:-10] + bytes(10))
    with pytest.raises(checkpoint.CheckpointError, match="no readable checkpoint.*checksum"):
        run(tmp_path / "run", resume=True)


def test_save_leaves_a_complete_checkpoint_whenever_it_stops(tmp_path, monkeypatch):
    path = tmp_path / "c.eqx"
    checkpoint.save(path, {"w": np.ones(3)}, {"step": 1})
    checkpoint.save(path, {"w": np.full(3, 2.0)}, {"step": 2})
    replace = checkpoint.os.replace

    def dies_before_the_last_rename(src, dst):
        if str(src).endswith(".new"):
            raise KeyboardInterrupt
        replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dies_before_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, {"w": np.full(3, 3.0)}, {"step": 3})
    assert checkpoint.load(path, {"w": np.zeros(3)})[1]["step"] == 2
    assert checkpoint.read_metadata(checkpoint.previous_path(path))["step"] == 2
    tree, meta, read, problems = checkpoint.load_latest(path, {"w": np.zeros(3)})
    assert (meta["step"], read.name, problems) == (3, "c.eqx.new", [])
    np.testing.assert_array_equal(tree["w"], np.full(3, 3.0))


@pytest.mark.parametrize("interrupt", [("batch", 14), ("evaluation", 2)])
def test_an_interrupted_run_saves_and_resumes_exactly(tmp_path, interrupt, capsys):
    whole = run(tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "run", interrupt=interrupt)
    meta = checkpoint.read_metadata(tmp_path / "run" / "checkpoint.eqx")
    # fit draws one batch for its shapes, so at the 14th 12 steps are done; the 2nd evaluation comes
    # at step 16, and is still due
    assert (meta["step"], meta["evaluation_due"]) == ((12, False) if interrupt[0] == "batch" else (16, True))
    assert "interrupted at step" in capsys.readouterr().out
    resumed = run(tmp_path / "run", resume=True)
    assert_same_run(resumed, whole)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert losses(logged) == losses(whole.records)


def test_resuming_a_run_without_a_checkpoint_starts_it_again(tmp_path, capsys):
    whole = run(tmp_path / "whole")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    resumed = run(tmp_path / "run", resume=True)
    assert "starts again from step 0" in capsys.readouterr().out
    assert_same_run(resumed, whole)


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


def test_curriculum_skips_prefixes_that_score_nothing():
    data = sum_task(40, 0)
    data["loss_mask"] = np.zeros_like(data["mask"])
    data["loss_mask"][:, 4:] = True  # only the last two of six steps are scored (as the copy task's recall)
    model = recurrax.SequenceModel("gru", 1, 8, 1, key=jax.random.key(0))
    config = TrainConfig(steps=6, batch_size=8, bptt="curriculum", stride=1, eval_every=6, log_every=6)
    result = fit(model, ShuffledBatches(data, 8), objective="per-step-mse", config=config, progress=False)
    assert [r["prefix"] for r in result.records] == [5] * 5 + [6]  # 5 batches per epoch at each stage
    assert all(r["loss"] > 0 for r in result.records)
