"""``benchmarks/profile_step.py``: the per-operation profile of a compiled step."""

import gzip
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))

import profile_step  # noqa: E402

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


def test_timeline_lists_the_forward_and_backward_loops_in_the_order_they_ran():
    """A GRU training step over 7 steps (one piece): its forward loop, then its backward loop."""
    done = run("--cell", "gru", "--batch", "2", "--length", "7", "--hidden", "8", "--calls", "2", "--timeline")
    assert done.returncode == 0, done.stderr
    assert "thunk #" not in done.stderr and not re.search(r"^I\d{4} ", done.stderr, re.M)  # XLA's log is read
    rows = [line.split() for line in done.stdout.splitlines() if "while." in line]
    assert len(rows) == 2 and "jvp(vmap(vmap()))/while)" in rows[0][-1] and "transpose(" in rows[1][-1]
    starts = [float(row[0]) for row in rows]
    assert starts[0] < starts[1]
    end = float(done.stdout.splitlines()[-1].split()[0])
    assert "(end of the call)" in done.stdout and end >= starts[1] + float(rows[1][1])


HLO = """
ENTRY %main.0 (x: f32[4]) -> (f32[4]{0}, f32[4]{0}) {
  %x = f32[4]{0} parameter(0)
  %copy.1 = f32[4]{0} copy(%x)
  %dot.2 = f32[4]{0} fusion(%x), kind=kCustom, calls=%f
  %tuple.3 = (f32[4]{0}, f32[4]{0}) tuple(%copy.1, %x)
  %while.4 = (f32[4]{0}, f32[4]{0}) while(%tuple.3), condition=%c, body=%b
  %get-tuple-element.5 = f32[4]{0} get-tuple-element(%while.4), index=0
  %tuple.6 = (f32[4]{0}, f32[4]{0}) tuple(%get-tuple-element.5, %x)
  ROOT %while.7 = (f32[4]{0}, f32[4]{0}) while(%tuple.6), condition=%c, body=%b
}
"""

GRAPH_LOG = """I1127 08:04:35.313178   32022 thunk_executor.cc:163] Constructed ThunkExecutor with 4 thunks
 thunk #00000: op_name=copy.1, kind=copy, dependencies=[], source=true, sink=false, priority=2
 thunk #00001: op_name=dot.2, kind=ynn-fusion, dependencies=[], source=true, sink=false, priority=1
 thunk #00002: op_name=while.4, kind=while, dependencies=[copy.1], source=false, sink=false, priority=1
 thunk #00003: op_name=while.7, kind=while, dependencies=[while.4, dot.2], source=false, sink=true, priority=0
"""


def test_timeline_names_the_waits_that_no_operand_explains(capsys):
    """while.7 waits for while.4, whose result it reads, and for dot.2, which computes none of its
    operands: only dot.2 is named; the idle times follow the loops' starts and ends."""
    instructions, _ = profile_step._hlo_graph(HLO)
    assert profile_step._operand_producers(instructions, "while.7") == {"while.4", "x"}
    assert profile_step._waits(GRAPH_LOG) == {"copy.1": [], "dot.2": [], "while.4": ["copy.1"],
                                              "while.7": ["while.4", "dot.2"]}
    timelines = [[("while.4", 1.0, 2.0), ("while.7", 4.0, 1.0), ("", 6.0, 0.0)],
                 [("while.4", 1.2, 2.0), ("while.7", 4.2, 1.0), ("", 6.2, 0.0)]]
    profile_step._print_timeline(timelines, profile_step._waits(GRAPH_LOG), instructions,
                                 {"dot.2": "f32[4]{0}, a product"})
    lines = capsys.readouterr().out.splitlines()
    assert "2 loops (medians of 2 calls)" in lines[0]
    first, second, end = lines[2:]
    assert first.split()[:3] == ["1.10", "2.00", "1.10"] and "; " not in first
    assert second.split()[:3] == ["4.10", "1.00", "1.00"] and second.endswith("; dot.2 (f32[4]{0}, a product)")
    assert end.split()[:2] == ["6.10", "1.00"] and "while.4 (" not in second


LOOPS_HLO = """
%body.1 (p: (s32[])) -> (s32[]) {
  %add.2 = s32[] add(%p, %p)
  ROOT %while.3 = (s32[]) while(%t), condition=%cond.1, body=%inner.1
}

%inner.1 (q: (s32[])) -> (s32[]) {
  ROOT %mul.4 = s32[] multiply(%q, %q)
}

%cond.1 (r: (s32[])) -> pred[] {
  ROOT %lt.5 = pred[] compare(%r, %r), direction=LT
}

ENTRY %main.6 (x: s32[]) -> (s32[]) {
  %tuple.7 = (s32[]) tuple(%x)
  ROOT %while.8 = (s32[]) while(%tuple.7), condition=%cond.1, body=%body.1
}
"""


def test_a_loop_lasts_until_the_last_operation_of_its_body(tmp_path):
    """A loop whose body runs concurrently returns from its own event early: it lasts until its
    body's last operation (also one of a loop inside it). Calls further apart than the profiled
    calls' gap are told apart; a loop inside another is not listed on its own."""
    _, bodies = profile_step._hlo_graph(LOOPS_HLO)
    assert bodies["while.8"] == {"add.2", "while.3", "mul.4", "lt.5"} and bodies["while.3"] == {"mul.4", "lt.5"}
    gap = profile_step._CALL_GAP_US

    def call(t0):  # microseconds
        return [{"ph": "X", "name": "copy.9", "ts": t0, "dur": 100, "tid": 1},
                {"ph": "X", "name": "while.8", "ts": t0 + 200, "dur": 10, "tid": 1},
                {"ph": "X", "name": "add.2", "ts": t0 + 300, "dur": 100, "tid": 2},
                {"ph": "X", "name": "while.3", "ts": t0 + 400, "dur": 500, "tid": 2},
                {"ph": "X", "name": "mul.4", "ts": t0 + 500, "dur": 700, "tid": 1},
                {"ph": "X", "name": "ThunkExecutor::Execute", "ts": t0, "dur": 5 * gap, "tid": 3}]

    folder = tmp_path / "plugins" / "profile" / "run"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump({"traceEvents": call(1000) + call(1000 + 2 * gap)}, f)
    events = profile_step._operation_events(str(tmp_path))
    assert "ThunkExecutor::Execute" not in {e["name"] for e in events}
    timelines = profile_step._loop_timeline(events, bodies)
    assert timelines == [[("while.8", 0.2, 1.0), ("", 1.2, 0.0)]] * 2
