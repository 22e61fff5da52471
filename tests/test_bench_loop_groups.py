"""``benchmarks/bench_loop_groups.py``: a loop step's product in batch groups."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_loop_groups.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_one_row_per_size_with_the_ratio_to_one_group():
    """A row per size; two groups (a product and elementwise work each) give the loop body more operations."""
    done = run("--batch", "4", "--hidden", "8", "--groups", "1,2", "--steps", "5", "--rounds", "1",
               "--min-time", "0.01")
    assert done.returncode == 0, done.stderr
    row = re.search(r"^\s+4\s+8\s+([\d.]+)\s+([\d.]+)us\s+(\d+)\s+([\d.]+)us\s+(\d+)\s+([\d.]+)$", done.stdout, re.M)
    assert row, done.stdout
    mflop, one, ops_one, two, ops_two, ratio = (float(v) for v in row.groups())
    assert mflop == pytest.approx(2 * 4 * 8 * 32 / 1e6, abs=0.05)
    assert ops_two > ops_one and ratio == pytest.approx(two / one, rel=0.1)


@pytest.mark.parametrize("args, message", [(("--groups", "3"), "3 groups do not divide a batch of 32 rows"),
                                           (("--hidden", "0"), "--hidden must be positive integers")])
def test_bad_arguments_are_named(args, message):
    done = run(*args)
    assert done.returncode != 0 and message in done.stderr
