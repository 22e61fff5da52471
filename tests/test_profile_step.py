"""``benchmarks/profile_step.py``: the per-operation profile of a compiled step."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "profile_step.py")


def run(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=300)


def test_lists_the_loop_steps_operations_once_per_step():
    """A GRU forward over 7 steps: the recurrent product runs 7 times per call, inside the loop."""
    done = run("--cell", "gru", "--batch", "2", "--length", "7", "--hidden", "8", "--mode", "fwd", "--calls", "2")
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 3) for line in done.stdout.splitlines()[2:]]
    assert any(float(runs) == 7 and "while/body" in what and "dot_general" in what for _, runs, _, what in rows)
    assert any("a loop" in what for *_, what in rows)
    assert re.search(r"GRU fwd, B=2 T=7 H=8, malloc default: [\d.]+ ms per call", done.stdout)


@pytest.mark.parametrize("args, message", [(("--cell", "nope"), "unknown cell 'nope'"),
                                           (("--length", "0"), "--length must be a positive integer")])
def test_bad_arguments_are_named(args, message):
    done = run(*args)
    assert done.returncode != 0 and message in done.stderr
