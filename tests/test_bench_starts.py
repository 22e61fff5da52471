"""``benchmarks/bench_starts.py``: packed sequences on the native loops, XLA's loops and the plain scan."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_starts.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_a_row_per_mode_after_the_contenders_agree():
    """With starts on a quarter of the steps: the script checks that the three contenders' values
    and gradients agree (it exits otherwise), then prints a row for fwd and for train, every time
    and ratio positive."""
    done = run("--cells", "elman", "--batch", "16", "--length", "8", "--hidden", "16", "--start", "0.25",
               "--rounds", "1", "--min-time", "0.01")
    assert done.returncode == 0, done.stderr
    rows = re.findall(r"^Elman\s+16\s+8\s+16\s+(fwd|train)((?:\s+[\d.]+){5})$", done.stdout, re.M)
    assert [row[0] for row in rows] == ["fwd", "train"], done.stdout
    assert all(float(v) > 0 for _, numbers in rows for v in numbers.split())


@pytest.mark.parametrize("args, message", [(("--cells", "nonsense"), "unknown nonsense"),
                                           (("--start", "1.5"), "a probability")])
def test_bad_arguments_are_named(args, message):
    done = run(*args)
    assert done.returncode != 0 and message in done.stderr
