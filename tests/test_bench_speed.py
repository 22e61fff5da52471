"""``benchmarks/bench_speed.py``: a contender's worker that dies mid-configuration is named as such;
the loopless contender; cells named as the library's registry names them."""

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

import bench_speed  # noqa: E402


def test_a_worker_killed_after_its_setup_says_so_until_the_next_setup():
    """Killed as the kernel kills a process when memory runs out, a worker is not restarted with nothing
    set up (which answered ``KeyError: 'fwd'``): it says how it ended; the next setup starts afresh."""
    worker = bench_speed.Worker("plain", None, "auto", {})
    cfg = {"cell": "Elman", "batch": 2, "length": 3, "hidden": 4, "device": "cpu"}
    try:
        assert worker.ask(cmd="setup", cfg=cfg)["ok"]
        assert worker.ask(cmd="calibrate", min_time=0.0)["ok"]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait()
        for mode in ("fwd", "train"):
            reply = worker.ask(cmd="time", mode=mode)
            assert not reply["ok"]
            assert reply["error"] == "plain worker exited with code -9 (killed by SIGKILL, as the kernel does when memory runs out)"
        assert worker.ask(cmd="setup", cfg=cfg)["ok"]
        assert worker.ask(cmd="calibrate", min_time=0.0)["ok"]
        assert worker.ask(cmd="time", mode="fwd")["ok"]
    finally:
        worker.close()


def test_the_loopless_contender_outputs_the_projections_and_has_columns_only_where_it_ran():
    """``loopless`` is the plain program less its loop: its outputs are the input projections (the
    equation in NumPy), and the table shows its columns only for a run that measured it."""
    import numpy as np

    cfg = {"cell": "LSTM", "batch": 2, "length": 3, "hidden": 4, "device": "cpu"}
    bench = bench_speed.JaxBench("loopless", cfg, "auto")
    cell = bench_speed.make_cell("LSTM", 4)
    x = bench_speed.inputs(cfg, "tbf").astype(np.float64)
    expected = x @ np.asarray(cell.weight_ih, np.float64).T + np.asarray(cell.bias, np.float64)
    np.testing.assert_allclose(bench.outputs(), expected, rtol=1e-5, atol=1e-6)

    def row(loopless_calls):
        r = {"cell": "LSTM", "batch": 2, "length": 3, "hidden": 4, "mode": "train"}
        for c in bench_speed.CONTENDERS:
            r[f"{c}_ms"], r[f"{c}_calls"] = 2.0, (loopless_calls if c == "loopless" else 5 * (c != "cudnn"))
        for c in bench_speed.RATIOS:
            r[f"ours/{c}"] = 1.0
        return r

    header = lambda calls: bench_speed.table([row(calls)]).splitlines()[0].split()  # noqa: E731
    assert "loopless" not in header(0) and "ours/loopless" not in header(0)
    assert "loopless" in header(5) and "ours/loopless" in header(5) and "cudnn" not in header(5)


@pytest.mark.parametrize("cells", ["nope", "linear,lru"])
def test_a_cell_that_is_not_classic_is_refused_by_name(cells, capsys):
    with pytest.raises(SystemExit):
        bench_speed.main(["--cells", cells, "--quick"])
    assert f"unknown classic cell in {cells.split(',')}" in capsys.readouterr().err
