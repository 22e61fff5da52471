"""``benchmarks/bench_pieces.py``: a cell's step with its sequences in 1, 2, ... pieces of time."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_pieces.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_a_row_per_count_with_the_chosen_one_marked():
    """A row per count asked for, and the library's own choice (one piece for 8 steps) marked and
    measured even when not asked for; its ratio is 1."""
    done = run("--cells", "elman", "--batch", "32", "--length", "8", "--hidden", "4", "--pieces", "2,3",
               "--rounds", "1", "--min-time", "0.01")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^Elman\s+32\s+8\s+4\s+train\s+(\d+)(\*?)\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.M)
    assert [(count, mark) for count, mark, _, _ in rows] == [("1", "*"), ("2", ""), ("3", "")], done.stdout
    assert float(rows[0][3]) == 1.0
    assert all(float(ms) > 0 for _, _, ms, _ in rows)


@pytest.mark.parametrize("args, message", [(("--pieces", "0"), "--pieces must be positive integers"),
                                           (("--cells", "linear"), "has no fused scan"),
                                           (("--cells", "nonsense"), "bench_pieces.py:")])
def test_bad_arguments_are_named(args, message):
    done = run(*args, "--rounds", "1", "--min-time", "0.01")
    assert done.returncode != 0 and message in done.stderr
