"""``benchmarks/bench_speed.py``: a contender's worker that dies mid-configuration is named as such."""

import os
import signal
import sys

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
