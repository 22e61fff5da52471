"""The model × task comparison: a tiny run writes its table, CSV and plots; bad input exits with status 2."""

import csv
import sys

import pytest

from recurrax import compare as C
from recurrax.cli import main

TINY = ["--steps", "10", "--hidden", "8", "--batch", "16", "--train-size", "64", "--valid-size", "32", "--quiet"]


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_compare_writes_csv_and_png(tmp_path, capsys):
    pytest.importorskip("statsmodels")
    out = tmp_path / "cmp"
    argv = ["compare", "--tasks", "adding,sunspots", "--cells", "elman", "--option", "adding.length=6",
            "--option", "sunspots.horizon=2", "--out", str(out)] + TINY
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "adding" in printed and "seasonal naive" in printed and "linear AR" in printed
    rows = _read(out / "comparison.csv")
    assert [(r["task"], r["cell"], r["metric"]) for r in rows] == [("adding", "elman", "mse"), ("sunspots", "elman", "MASE")]
    for r in rows:
        assert float(r["mean"]) >= 0 and int(r["parameters"]) > 0 and float(r["seconds"]) > 0 and r["seeds"] == "1"
    assert rows[0]["baseline_name"] == "predict 1"
    forecasts = _read(out / "forecasts.csv")
    assert [f["predictor"] for f in forecasts] == ["naive", "seasonal naive", "linear AR", "elman"]
    assert min(float(f["mase"]) for f in forecasts[:3]) == pytest.approx(float(rows[1]["baseline"]), rel=1e-5)
    for name in ("comparison.png", "comparison.md", "predictions/adding-elman.png", "predictions/sunspots-elman.png"):
        assert (out / name).stat().st_size > 0
    assert "| task | cell |" in (out / "comparison.md").read_text()
    again = C.read_csv(out / "comparison.csv")
    assert [(r.task, r.cell, r.values, r.baseline) for r in again] == [
        (r["task"], r["cell"], [float(r["mean"])], float(r["baseline"])) for r in rows]
    reloaded = C.forecast_rows(again)  # the extras (MAE, RMSE, baselines) survive the round trip
    assert [f["predictor"] for f in reloaded] == [f["predictor"] for f in forecasts]
    assert [f["mase"] for f in reloaded] == pytest.approx([float(f["mase"]) for f in forecasts], rel=1e-5)


def test_rows_aggregate_over_seeds():
    row = C.Row("adding", "gru", "mse", False, [0.1, 0.3], 0.2, "predict 1", 10, 1.0)
    assert row.mean == pytest.approx(0.2) and row.std == pytest.approx(0.1414, rel=1e-3)
    assert not row.beats_baseline
    assert "0.2 ± 0.14" in C.format_table([row])
    assert C.Row("adding", "gru", "mse", False, [0.189], 0.2, "", 1, 1.0).beats_baseline  # 5.5 % better
    assert not C.Row("adding", "gru", "mse", False, [0.195], 0.2, "", 1, 1.0).beats_baseline  # within 5 %
    assert C.Row("copy", "gru", "accuracy", True, [0.2], 0.0, "", 1, 1.0).beats_baseline


@pytest.mark.slow
def test_compare_translation_and_digits(tmp_path):
    pytest.importorskip("sklearn")
    rows = C.compare(["numbers", "digits-rows"], ["gru", "lstm"], budget=C.Budget(steps=30, hidden=16, batch=16,
                     train_size=128, valid_size=64), seeds=2, task_options={"numbers": {"max_digits": 2}},
                     out=tmp_path, log=None)
    assert [(r.task, r.cell, len(r.values)) for r in rows] == [
        ("numbers", "gru", 2), ("numbers", "lstm", 2), ("digits-rows", "gru", 2), ("digits-rows", "lstm", 2)]
    assert all(0 <= r.mean <= 1 for r in rows)
    assert "beam exact match" in rows[0].extra and (tmp_path / "translations.txt").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "adding,weather"], "unknown task 'weather'; choose from"),
        (["--cells", "gru,transformer"], "unknown cell 'transformer'; choose from"),
        (["--cells", "gru,gru"], "a cell is listed twice: gru, gru"),
        (["--tasks", "adding", "--steps", "3"], "too small to train"),
        (["--tasks", "digits-rows", "--batch", "5000"], "fewer than one batch"),
        (["--tasks", "adding", "--option", "adding.colour=3"], "has no option 'colour'"),
        (["--tasks", "adding", "--option", "copy.delay=3"], "not compared"),
    ],
)
def test_bad_input_exits_2(args, message, tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "x"), "--quiet"] + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_missing_data_package_exits_2_naming_the_extra(monkeypatch, tmp_path, capsys):
    from recurrax.data import series

    monkeypatch.setitem(sys.modules, "statsmodels", None)
    series.load_series.cache_clear()
    try:
        assert main(["compare", "--tasks", "co2", "--cells", "gru", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    finally:
        series.load_series.cache_clear()
    err = capsys.readouterr().err
    assert "statsmodels" in err and "recurrax[data]" in err


def test_option_parser():
    assert C.parse_task_option("moving-ball.length=20") == ("moving-ball", "length", 20)
    assert C.parse_task_option("navigation.turn-noise=0.5") == ("navigation", "turn_noise", 0.5)
    with pytest.raises(Exception, match="TASK.KEY=VALUE"):
        C.parse_task_option("length=20")
