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
    checkpoint.save(path, {"a": np.ones(3), "b": np.ones(2)})
    with pytest.raises(checkpoint.CheckpointError, match="holds more parameters"):
        checkpoint.load(path, {"a": np.ones(3)})


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


def test_padded_steps_never_enter_the_loss_even_when_their_targets_are_not_numbers():
    """NaN regression targets and label −100 at padded steps: the losses and their gradients are
    those of the counted steps alone, written out in NumPy, jitted or not."""
    from recurrax.train.losses import per_step_cross_entropy, per_step_squared_error

    rng = np.random.default_rng(0)
    mask = np.array([1, 1, 0, 1, 0], bool)
    preds, targets = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    logits, labels = rng.normal(size=(5, 3)), np.array([2, 0, -100, 1, -100])
    want_mse = np.sum((preds - targets)[mask] ** 2) / mask.sum()
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    want_xent = -np.mean(lp[mask, labels[mask]])
    targets[~mask] = np.nan
    for fn in (lambda f, *a: f(*a), lambda f, *a: jax.jit(f, static_argnames="reduce")(*a)):
        mse = fn(lambda p, t, w, reduce="mean": per_step_squared_error(p, t, w, reduce=reduce), preds, targets, mask)
        xent = fn(lambda z, y, w, reduce="mean": per_step_cross_entropy(z, y, w, reduce=reduce), logits, labels, mask)
        np.testing.assert_allclose(mse, want_mse, rtol=1e-6)
        np.testing.assert_allclose(xent, want_xent, rtol=1e-6)
    grad = jax.grad(lambda p: per_step_squared_error(p, targets, mask, reduce="sum"))(preds)
    np.testing.assert_allclose(grad, np.where(mask[:, None], 2 * (preds - np.nan_to_num(targets)), 0.0), rtol=1e-6)


def test_evaluation_resets_at_episode_starts():
    """Two episodes packed in one row score as the same episodes in rows of their own."""
    model = recurrax.SequenceModel("gru", 1, 4, 1, key=jax.random.key(0))
    data = sum_task(2, 0, length=3)
    packed = {"inputs": data["inputs"].reshape(1, 6, 1), "targets": data["targets"].reshape(1, 6, 1),
              "mask": np.ones((1, 6), bool), "starts": np.array([[1, 0, 0, 1, 0, 0]], bool)}
    separate = evaluate_sequences(model, data, objective="per-step-mse", metric="mse")
    together = evaluate_sequences(model, packed, objective="per-step-mse", metric="mse")
    np.testing.assert_allclose(together["valid_mse"], separate["valid_mse"], rtol=1e-6)


def test_without_evaluation_the_best_model_is_the_final_one_and_a_nan_validation_loss_stops_the_run():
    model = recurrax.SequenceModel("gru", 1, 8, 1, key=jax.random.key(0))
    config = TrainConfig(steps=4, batch_size=8, eval_every=2, log_every=4)
    result = fit(model, ShuffledBatches(sum_task(16, 0), 8), objective="per-step-mse", config=config, progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(result.best_model), jax.tree_util.tree_leaves(result.model)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FloatingPointError, match="the validation loss became nan at step 2"):
        fit(model, ShuffledBatches(sum_task(16, 0), 8), objective="per-step-mse", config=config, progress=False,
            evaluate=lambda m: {"valid_loss": float("nan")})


@pytest.mark.parametrize("options, error, message", [
    (dict(weight_decay=-0.5, optimizer="adamw"), ValueError, "weight_decay must be >= 0 and finite"),
    (dict(weight_decay=float("nan"), optimizer="adamw"), ValueError, "weight_decay must be >= 0"),
    (dict(weight_decay=0.1), ValueError, "weight_decay is AdamW's"),
    (dict(learning_rate=float("inf")), ValueError, "learning_rate must be positive and finite"),
    (dict(learning_rate="1e-3"), TypeError, "learning_rate must be a number"),
    (dict(warmup=2.5), TypeError, "warmup must be an integer"),
])
def test_bad_training_configurations(options, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**options)


def test_bad_batch_sources():
    data = sum_task(10, 0)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ShuffledBatches(data, 0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        ShuffledBatches(data, 2, seed=-1)
    with pytest.raises(ValueError, match="their lengths differ"):
        ShuffledBatches({**data, "targets": data["targets"][:9]}, 2)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        evaluate_sequences(recurrax.SequenceModel("gru", 1, 4, 1, key=jax.random.key(0)), data,
                           objective="per-step-mse", metric="mse", batch_size=0)
    model = recurrax.SequenceModel("gru", 1, 4, 1, key=jax.random.key(0))
    with pytest.raises(ValueError, match="the source's batches have 2 sequences but config.batch_size is 32"):
        fit(model, ShuffledBatches(data, 2), objective="per-step-mse", config=TrainConfig(steps=1), progress=False)


def test_evaluations_of_a_training_run_share_one_compiled_function(monkeypatch):
    """Evaluating a model again (new weights, same structure and shapes) reuses the compiled
    evaluation: the loss is traced once, not at every evaluation."""
    import recurrax.train.trainer as trainer_module

    traces = []
    batch_loss = trainer_module.batch_loss
    monkeypatch.setattr(trainer_module, "batch_loss", lambda *a, **k: traces.append(1) or batch_loss(*a, **k))
    data = sum_task(8, 3)
    first = recurrax.SequenceModel("gru", 1, 5, 1, key=jax.random.key(0))
    second = recurrax.SequenceModel("gru", 1, 5, 1, key=jax.random.key(1))
    scores = [evaluate_sequences(m, data, objective="per-step-mse", metric="mse") for m in (first, second, first)]
    assert len(traces) == 1
    assert scores[0] == scores[2] != scores[1]


def test_runs_that_differ_in_their_seed_share_one_compiled_update(monkeypatch):
    """Two fits of equal models whose configurations differ only in the seed and the evaluation
    interval trace the update once, and the second gives what it gives with an update of its own; a
    different schedule length is another update."""
    import recurrax.train.bptt as bptt_module
    import recurrax.train.trainer as trainer_module

    def train(**overrides):
        model = recurrax.SequenceModel("gru", 1, 5, 1, key=jax.random.key(0))
        config = TrainConfig(**{"steps": 3, "batch_size": 4, "learning_rate": 1e-2, "schedule": "cosine", **overrides})
        source = ShuffledBatches(sum_task(12, 0), config.batch_size, config.seed)
        return fit(model, source, objective="per-step-mse", config=config, progress=False)

    trainer_module._cached_update.cache_clear()
    traces = []
    batch_loss = bptt_module.batch_loss
    monkeypatch.setattr(bptt_module, "batch_loss", lambda *a, **k: traces.append(1) or batch_loss(*a, **k))
    train(seed=0)
    shared = train(seed=1, eval_every=2)
    assert len(traces) == 1
    train(seed=1, steps=4)
    assert len(traces) == 2
    trainer_module._cached_update.cache_clear()
    alone = train(seed=1, eval_every=2)
    assert len(traces) == 3
    assert_same_run(shared, alone)
    trainer_module._cached_update.cache_clear()  # no update built on the patched loss outlives the test
