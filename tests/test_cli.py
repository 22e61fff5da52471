"""The command line end to end on tiny settings, and its bad-input handling (exit status 2)."""

import json

import numpy as np
import pytest

from recurrax.cli import build_parser, keeps_freed_memory, main
from recurrax.data.tasks import get_task
from recurrax.lm.dynamic import LEARNING_RATES

TINY_LM = ["--hidden", "8", "--embed", "8", "--steps", "4", "--batch", "4", "--chunk", "16", "--eval-every", "2",
           "--warmup", "1", "--ngram-order", "2", "--sample-length", "5", "--quiet"]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    text = base / "corpus.txt"
    text.write_text("the cat sat on the mat.\nthe dog sat on the log.\n" * 40)
    run = base / "run"
    assert main(["train", "--data", str(text), "--run-dir", str(run)] + TINY_LM) == 0
    return base, text, run


def test_train_writes_a_complete_run(lm_run, capsys):
    _, _, run = lm_run
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.eqx", "best.eqx", "loss.png", "results.json",
            "vocabulary.json"} <= names
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 4 and results["test_bits"] > 0
    assert {r["smoothing"] for r in results["ngram"]} == {"mle", "add-k", "kneser-ney"}
    dynamic = results["dynamic"]  # tuned on validation over a grid that includes 0 (static evaluation)
    assert dynamic["learning_rate"] in LEARNING_RATES
    assert dynamic["valid_bits"] <= results["valid_bits"] + 1e-6
    memory = results["memory"]  # mixed into both, its weight tuned on validation over a grid that includes 0
    assert memory["static"]["valid_bits"] <= results["valid_bits"] + 1e-6
    assert memory["dynamic"]["valid_bits"] <= dynamic["valid_bits"] + 1e-6


def test_generate_and_eval(lm_run, capsys):
    base, text, run = lm_run
    assert main(["generate", str(run), "--prompt", "the ", "--length", "12", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the ") and len(out.rstrip("\n")) == len("the ") + 12
    assert main(["eval", str(run), "--data", str(text)]) == 0
    assert "bits/character" in capsys.readouterr().out
    assert main(["eval", str(run), "--data", str(text), "--dynamic-lr", "0.3"]) == 0
    assert "dynamic evaluation (learning rate 0.3" in capsys.readouterr().out
    assert main(["eval", str(run), "--data", str(text), "--memory"]) == 0
    assert "with the memory of " in capsys.readouterr().out


def test_eval_with_memory_needs_the_settings_the_run_tuned(lm_run, tmp_path, capsys):
    import shutil

    _, text, run = lm_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    results = json.loads((copy / "results.json").read_text())
    (copy / "results.json").write_text(json.dumps({**results, "memory": None}))
    assert main(["eval", str(copy), "--data", str(text), "--memory"]) == 2
    assert "no memory settings tuned for static evaluation" in capsys.readouterr().err


def test_resume_continues_a_run(lm_run, tmp_path):
    _, text, run = lm_run
    assert main(["train", "--resume", str(run)]) == 0  # already finished: resumes at its last step, nothing to do
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "/no/such/file.txt"], "not found"),
        (["train", "--resume", "/tmp"], "not a run directory"),
        (["train", "--resume", "/tmp", "--steps", "30"], "other options were given (steps=30)"),
        (["generate", "/tmp"], "not a run directory"),
        (["train", "--task", "text", "--bidirectional"], "cannot read the future"),
        (["train", "--task", "adding", "--option", "colour=3"], "has no option 'colour'"),
        (["train", "--task", "adding", "--data", "x.txt"], "--data: for --task text"),
        (["train", "--task", "adding", "--level", "word", "--tie-weights"], "--level, --tie-weights: for --task text"),
        (["train", "--task", "adding", "--weight-decay", "0.1"], "--weight-decay is AdamW's"),
        (["train", "--task", "adding", "--length", "30", "--option", "length=12"], "the length is given twice"),
        (["train", "--task", "adding", "--chunk", "5"], "--chunk is the chunk of truncated BPTT"),
        (["generate", "/tmp", "--length", "5"], "not a run directory"),
        (["gradients", "--cells", "elman,transformer"], "unknown cell"),
    ],
)
def test_bad_input_is_one_clear_message_and_status_2(args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"abc\x00def" * 20, "NUL"), (b"\xff\xfe\xfa" * 30, "UTF-8")])
def test_bad_text_files(tmp_path, content, message, capsys):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    assert main(["train", "--data", str(path), "--run-dir", str(tmp_path / "r")] + TINY_LM) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.json").exists()


def test_unknown_choices_and_bad_values_exit_2(capsys):
    for args in (["train", "--cell", "transformer"], ["train", "--task", "chess"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err
    for value in ("fast", "-1", "inf"):
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--dynamic-lr", value])
        assert exit_info.value.code == 2
        assert "--dynamic-lr: must be 'auto' or a number >= 0" in capsys.readouterr().err
    for args, message in [(["train", "--lr", "inf"], "--lr: must be a positive number"),
                          (["train", "--sample-length", "-3"], "--sample-length: must be a number >= 0"),
                          (["train", "--clip", "-1"], "--clip: must be a number >= 0"),
                          (["generate", "run", "--length", "-5"], "--length: must be a number >= 0")]:
        with pytest.raises(SystemExit) as exit_info:  # refused before any work
            main(args)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_existing_run_is_not_overwritten_and_prompt_must_be_in_vocabulary(lm_run, capsys):
    _, text, run = lm_run
    before = (run / "checkpoint.eqx").read_bytes()
    assert main(["train", "--data", str(text), "--run-dir", str(run)] + TINY_LM) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "checkpoint.eqx").read_bytes() == before
    assert main(["generate", str(run), "--prompt", "Zebra€"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err


def test_generate_reuses_the_prompt_of_the_run(lm_run, capsys):
    _, _, run = lm_run  # its corpus has no capital T: the run sampled from its first character
    prompt = json.loads((run / "results.json").read_text())["prompt"]
    assert prompt == "t"
    assert main(["generate", str(run), "--length", "3"]) == 0
    assert capsys.readouterr().out.startswith(prompt)


def test_word_level_generation_shows_the_prompt_as_the_model_reads_it(tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text("The cat sat on the mat .\nThe dog sat on the log .\n" * 40)
    run = tmp_path / "words"
    args = TINY_LM + ["--level", "word", "--chunk", "8", "--sample-length", "0"]
    assert main(["train", "--data", str(text), "--run-dir", str(run)] + args) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--length", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The ") and "  " not in out
    assert main(["generate", str(run), "--prompt", "The zebra", "--length", "0"]) == 0
    assert capsys.readouterr().out.strip() == "The <unk>"
    unseen = tmp_path / "unseen.txt"
    unseen.write_text("The zebra sat on the sofa <unk> .\n")  # a literal <unk> is the vocabulary's own token
    assert main(["eval", str(run), "--data", str(unseen)]) == 0
    assert "(2 not in the vocabulary, scored as <unk>)" in capsys.readouterr().out


def test_a_run_reads_its_corpus_from_any_directory_and_refuses_an_empty_prompt_before_training(
        tmp_path, capsys, monkeypatch):
    text = tmp_path / "words.txt"
    text.write_text("The cat sat on the mat .\nThe dog sat on the log .\n" * 40)
    monkeypatch.chdir(tmp_path)
    args = TINY_LM + ["--level", "word", "--chunk", "8", "--sample-length", "0"]
    assert main(["train", "--data", "words.txt", "--run-dir", "empty", "--prompt", "  "] + args) == 2
    assert "the prompt is empty" in capsys.readouterr().err and not (tmp_path / "empty" / "results.json").exists()
    assert main(["train", "--data", "words.txt", "--run-dir", "run"] + args) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["options"]["data"] == str(text)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["eval", "../run", "--data", "../words.txt", "--memory"]) == 0  # the memory reads the corpus
    assert "bits/word" in capsys.readouterr().out


def test_gradients_refuses_a_repeated_cell_a_file_for_out_and_a_non_integer_before_any_work(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for args, message in [
        (["--cells", "gru,gru"], "a cell is listed twice: gru, gru"),
        (["--out", str(tmp_path / "afile")], "is a file, not a directory"),
    ]:
        assert main(["gradients", "--length", "3", "--seeds", "1", "--batch", "1", "--hidden", "2",
                     "--out", str(tmp_path / "g")] + args) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own error
        main(["gradients", "--length", "nan", "--out", str(tmp_path / "g")])
    assert exit_info.value.code == 2 and "argument --length: must be an integer, got nan" in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_a_diverging_run_is_one_message_and_a_run_without_checkpoint_resumes_from_the_start(tmp_path, capsys):
    run = tmp_path / "diverged"
    args = ["train", "--task", "adding", "--length", "8", "--hidden", "4", "--steps", "6", "--eval-every", "3",
            "--train-size", "32", "--valid-size", "16", "--quiet", "--run-dir", str(run)]
    assert main(args + ["--lr", "1e30", "--clip", "0"]) == 2
    assert "the training loss became" in capsys.readouterr().err
    assert not (run / "checkpoint.eqx").exists()  # diverged before its first checkpoint
    (run / "config.json").write_text((run / "config.json").read_text().replace("1e+30", "0.001"))
    assert main(["train", "--resume", str(run)]) == 0
    assert "starts again from step 0" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["steps"] == 6


def test_a_torn_last_line_of_the_metrics_log_does_not_stop_a_resume(lm_run, tmp_path, capsys):
    import shutil

    _, _, run = lm_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    with (copy / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5')  # the process stopped while appending
    assert main(["train", "--resume", str(copy)]) == 0
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] <= 4 for line in lines)
    (copy / "metrics.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    assert main(["train", "--resume", str(copy)]) == 2
    assert "metrics.jsonl, line 2, is not a metrics record" in capsys.readouterr().err


def test_corpus_too_small_for_the_context(tmp_path, capsys):
    path = tmp_path / "small.txt"
    path.write_text("a b c d e f g h i j k l m n o p\n" * 20)
    assert main(["train", "--data", str(path), "--run-dir", str(tmp_path / "r")] + TINY_LM + ["--chunk", "128"]) == 2
    assert "too few" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_task_training_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "adding"
    args = ["train", "--task", "adding", "--length", "12", "--hidden", "8", "--steps", "6", "--eval-every", "3",
            "--train-size", "64", "--valid-size", "32", "--bptt", "truncated", "--chunk", "5", "--run-dir", str(run),
            "--quiet"]
    assert main(args) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "adding" and results["steps"] == 6
    # the baseline (predict 1) is scored on the same 32 test sequences as the model
    test = get_task("adding", length=12).generate("test", 32, 0)
    assert results["baseline_metric"] == pytest.approx(np.mean((1.0 - test.targets) ** 2))


def test_task_baseline_on_a_fixed_data_set_cut_short(tmp_path):
    """--valid-size 10 on sunspots scores model and naive forecast on the same first 10 test windows."""
    run = tmp_path / "sunspots"
    assert main(["train", "--task", "sunspots", "--hidden", "4", "--steps", "2", "--eval-every", "2",
                 "--valid-size", "10", "--batch", "8", "--run-dir", str(run), "--quiet"]) == 0
    results = json.loads((run / "results.json").read_text())
    test = get_task("sunspots").generate("test", 10, 0)
    assert len(test) == 10 < get_task("sunspots").size("test")
    naive = np.repeat(test.inputs[:, -1, :].astype(np.float64), test.targets.shape[1], axis=1)
    assert results["baseline_metric"] == pytest.approx(np.mean((naive - test.targets) ** 2))
    assert results["baseline_metric"] != pytest.approx(get_task("sunspots").baseline_metric, rel=1e-3)


def test_gradient_flow_from_the_command_line(tmp_path, capsys):
    """``--seeds N`` averages over the seeds 0..N-1; the CSV holds one curve per cell, last step first."""
    import csv

    from recurrax.diagnostics.gradient_flow import gradient_flow

    args = ["gradients", "--cells", "elman,lstm", "--length", "12", "--hidden", "8", "--input", "3", "--seeds", "2",
            "--batch", "2", "--out", str(tmp_path)]
    assert main(args) == 0
    assert "far/near" in capsys.readouterr().out
    rows = list(csv.DictReader(open(tmp_path / "gradient_flow.csv")))
    assert [int(r["t"]) for r in rows] == list(range(12))
    want = gradient_flow(["elman", "lstm"], 12, hidden_size=8, input_size=3, seeds=(0, 1), batch=2)
    for name, curve in want.items():
        assert [float(r[name]) for r in rows] == pytest.approx(curve[::-1], rel=1e-5)
    assert (tmp_path / "gradient_flow.png").exists()


def test_default_warmup_fits_a_short_run():
    from recurrax.cli import _options, build_parser

    def warmup(*args):
        return _options(build_parser().parse_args(["train", *args]))["warmup"]

    assert warmup() == 100                          # the main job's 2,200 steps
    assert warmup("--steps", "60") == 6             # a tenth of a short run, not an error
    assert warmup("--steps", "60", "--warmup", "0") == 0
    assert warmup("--task", "adding", "--steps", "60") == 0


@pytest.mark.parametrize("argv, keeps", [
    (["train"], True),
    (["train", "--data", "corpus.txt", "--steps", "10"], True),
    (["train", "--task", "adding"], False),
    (["compare"], False),
    (["ngram", "--order", "3"], False),
])
def test_only_the_language_model_job_keeps_freed_memory(argv, keeps):
    assert keeps_freed_memory(build_parser().parse_args(argv)) is keeps
