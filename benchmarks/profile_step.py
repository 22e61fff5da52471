"""Where one step's time goes: the compiled operations of a cell's forward or training step, timed.

Compiles ``jax.vmap(recurrax.Recurrent(cell))`` over a (B, T, H) float32 batch, forward
(``--mode fwd``) or value and gradient of the summed outputs with respect to the parameters
(``--mode train``, as ``bench_speed.py`` times them), runs it ``--calls`` times under
``jax.profiler`` and adds up the time of each operation XLA's CPU runtime executed (its thunks,
named after the instructions of the optimised HLO module). Each row: milliseconds per call, how
many times per call the operation ran (200 for an operation inside a loop of 200 steps), and
what it is: its shape and the JAX operation it came from (``while/body`` for loop steps,
``transpose(...)`` for the backward pass). Loops are listed with the time of everything in them,
so the rows add up to more than the call.

    python benchmarks/profile_step.py --cell lstm --batch 32 --length 200 --hidden 128
    python benchmarks/profile_step.py --cell gru --batch 256 --mode fwd --top 15
    python benchmarks/profile_step.py --cell lstm --malloc retain   # the process keeps freed memory
    python benchmarks/profile_step.py --cell lstm --malloc retain --timeline   # when each loop ran

``--timeline`` prints, instead of the table, the loops of one call in the order they ran: when each
started (ms after the call began), how long it took, how long the chain of loops stood idle
before it, and what XLA's CPU runtime made it wait for. The runtime runs operations that do not
depend on each other at the same time; an operation depends on another when it reads what the
other wrote, or when it writes memory that the other reads or writes (XLA reuses the memory of
values that are dead in its sequential order of the program). The waits are read from the
runtime's own graph of the program (``--timeline`` has XLA log it, ``TF_CPP_VMODULE``); the last
column names the operations a loop waited for that compute none of its operands: the loop writes
memory that they read or write.

It profiles XLA's CPU code, so JAX runs on the CPU here even on a machine with a GPU. Times under
the profiler run a few percent longer than without it; compare rows within a run.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

_RUNTIME_EVENTS = ("ThunkExecutor", "SlinkyThreadPool", "PjitFunction", "CommonPjRt", "ParseArguments", "$")


def _parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell", default="lstm", help="a registry name (lstm, gru, elman, ...) or class name")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=128, help="hidden size, and input size")
    parser.add_argument("--mode", choices=("train", "fwd"), default="train")
    parser.add_argument("--calls", type=int, default=5, help="profiled calls (after compiling and 3 warm-up calls)")
    parser.add_argument("--top", type=int, default=25, help="rows to print")
    parser.add_argument("--malloc", choices=("default", "retain"), default="default",
                        help="retain: keep freed memory in this process (recurrax.allocator.retain_freed_memory)")
    parser.add_argument("--timeline", action="store_true",
                        help="print the loops of a call in the order they ran, with what each waited for")
    args = parser.parse_args(argv)
    for name in ("batch", "length", "hidden", "calls", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    return args


def _instructions(hlo_text: str) -> dict[str, str]:
    """Instruction name -> "shape  op_name" from an optimised HLO module's text."""
    described = {}
    pattern = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+)")
    for line in hlo_text.splitlines():
        match = pattern.match(line)
        if not match:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        source = re.sub(r"^jit\([^)]*\)/", "", op_name.group(1).split(";")[0]) if op_name else ""
        shape = "a loop" if match.group(2).startswith("(") and " while(" in line else match.group(2)
        described[match.group(1)] = f"{shape}, {source}" if source else shape
    return described


def _operation_events(trace_dir: str) -> list[dict]:
    """The profile's events of the operations XLA's CPU runtime executed, in the order they began."""
    (path,) = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
    with gzip.open(path) as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    return sorted((e for e in events if e.get("ph") == "X" and not e["name"].startswith(_RUNTIME_EVENTS)),
                  key=lambda e: e["ts"])


def _thunk_times(events: list[dict], calls: int) -> tuple[dict[str, float], dict[str, float]]:
    """(milliseconds per call, executions per call) of each operation in the profile's events."""
    micros, counts = collections.defaultdict(float), collections.Counter()
    for event in events:
        micros[event["name"]] += event.get("dur", 0)
        counts[event["name"]] += 1
    return ({n: t / calls / 1e3 for n, t in micros.items()}, {n: c / calls for n, c in counts.items()})


_GRAPH_LINE = re.compile(r"thunk #\d+: op_name=([^,]+), kind=[\w-]+, dependencies=\[([^\]]*)\]")
_CALL_GAP_US = 20_000  # the profiled calls of --timeline run this far apart (microseconds)


def _with_stderr_captured(run):
    """``(run(), what was written to file descriptor 2 meanwhile)``: XLA logs in C++, past ``sys.stderr``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            result = run()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        return result, log.read().decode(errors="replace")


def _waits(graph_log: str) -> dict[str, list[str]]:
    """Operation -> the operations XLA's CPU runtime runs it after (its graph, logged at level 6)."""
    return {m.group(1): [d.strip() for d in m.group(2).split(",") if d.strip()]
            for m in _GRAPH_LINE.finditer(graph_log)}


def _hlo_graph(hlo_text: str) -> tuple[dict[str, tuple[str, list[str]]], dict[str, set[str]]]:
    """From an optimised HLO module's text: instruction -> (opcode, operands), and while
    instruction -> the instructions of its condition and body (and of the loops within them)."""
    instructions, computations, current, loops = {}, {}, None, {}
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{\s*$", line)
        if header:
            current = computations.setdefault(header.group(1), set())
            continue
        instruction = re.match(r"^\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if not instruction or current is None:
            continue
        name = instruction.group(1)
        current.add(name)
        operation = re.match(r".*?\b([\w-]+)\((.*?)\)(?:, |$)", line[instruction.end():])
        if operation:
            instructions[name] = (operation.group(1), re.findall(r"%([\w.\-]+)", operation.group(2)))
        parts = re.findall(r"\b(?:condition|body)=%([\w.\-]+)", line)
        if parts:
            loops[name] = parts

    def inside(loop, seen=()):
        names = set()
        for computation in loops[loop]:
            for name in computations.get(computation, ()):
                names.add(name)
                if name in loops and name not in seen:
                    names |= inside(name, seen + (loop,))
        return names

    return instructions, {loop: inside(loop) for loop in loops}


def _operand_producers(instructions: dict[str, tuple[str, list[str]]], name: str) -> set[str]:
    """The instructions whose results reach ``name`` as operands, through tuples, their elements
    and bitcasts (which run no code of their own)."""
    producers, todo = set(), list(instructions.get(name, ("", []))[1])
    while todo:
        current = todo.pop()
        opcode, inputs = instructions.get(current, ("", []))
        if opcode in ("tuple", "get-tuple-element", "bitcast"):
            todo.extend(inputs)
        else:
            producers.add(current)
    return producers


def _loop_timeline(events: list[dict], bodies: dict[str, set[str]]) -> list[list[tuple[str, float, float]]]:
    """Per profiled call, its outermost loops as (name, start, duration), ms from the call's start.

    A loop lasts from its start to the end of the last operation of its body: a body that runs
    its operations concurrently returns from the loop's own event before they are done."""
    calls, busy_until = [], None
    for event in events:  # the calls ran _CALL_GAP_US apart: a longer pause starts the next call
        if busy_until is None or event["ts"] > busy_until + _CALL_GAP_US / 2:
            calls.append([])
        calls[-1].append(event)
        busy_until = max(busy_until or 0, event["ts"] + event.get("dur", 0))
    nested = set().union(*bodies.values())
    timelines = []
    for call in calls:
        start = call[0]["ts"]
        timeline = []
        for loop in (e for e in call if e["name"] in bodies and e["name"] not in nested):
            body = bodies[loop["name"]]
            end = max([loop["ts"] + loop["dur"]] + [e["ts"] + e.get("dur", 0) for e in call
                                                   if e["name"] in body and e["ts"] >= loop["ts"]])
            timeline.append((loop["name"], (loop["ts"] - start) / 1e3, (end - loop["ts"]) / 1e3))
        end = max(e["ts"] + e.get("dur", 0) for e in call)
        timelines.append(timeline + [("", (end - start) / 1e3, 0.0)])
    return timelines


def _print_timeline(timelines, waits: dict[str, list[str]], instructions: dict[str, tuple[str, list[str]]],
                    described: dict[str, str]) -> None:
    """The loops in the order they ran (medians over the calls), with the idle time of the chain of
    loops before each and the operations it waited for that compute none of its operands."""
    per_loop = collections.defaultdict(list)
    for timeline in timelines:
        for name, start, duration in timeline:
            per_loop[name].append((start, duration))
    rows = sorted(((statistics.median(s for s, _ in v), statistics.median(d for _, d in v), name)
                   for name, v in per_loop.items()))
    call_ms = rows[-1][0]
    loops = rows[:-1]
    print(f"under the profiler: {call_ms:.2f} ms per call, {sum(d for _, d, _ in loops):.2f} ms of it in "
          f"{len(loops)} loops (medians of {len(timelines)} calls)")
    print(f"{'start':>8} {'ms':>7} {'idle':>7}  loop  (source); waits for, through shared memory")
    chain_free = 0.0
    for start, duration, name in loops:
        idle = max(0.0, start - chain_free)
        producers = _operand_producers(instructions, name)
        shared = [w for w in waits.get(name, []) if w not in producers]
        source = described.get(name, "").split(", ", 1)[-1]
        waited = ", ".join(f"{w} ({described.get(w, '')})" for w in shared)
        print(f"{start:8.2f} {duration:7.2f} {idle:7.2f}  {name}  ({source})" + (f"; {waited}" if shared else ""))
        chain_free = max(chain_free, start + duration)
    print(f"{call_ms:8.2f} {'':7} {max(0.0, call_ms - chain_free):7.2f}  (end of the call)")


def _profile(args) -> dict:
    """Compile the step, time ``args.calls`` calls, then profile as many; what ``main`` prints."""
    if args.malloc == "retain":
        import recurrax.allocator

        if not recurrax.allocator.retain_freed_memory():
            sys.exit("--malloc retain: this C library's allocator cannot be set (glibc on Linux only)")
    import jax

    import recurrax

    if jax.default_backend() != "cpu":
        sys.exit(f"profile_step.py reads XLA's CPU runtime events; JAX already runs on {jax.default_backend()}")
    try:
        cell_class = recurrax.get_cell_class(args.cell)
    except ValueError as error:
        sys.exit(f"profile_step.py: {error}")
    cell = cell_class(args.hidden, args.hidden, key=jax.random.key(0))
    layer = recurrax.Recurrent(cell)
    xs = jax.random.normal(jax.random.key(1), (args.batch, args.length, args.hidden))

    def forward(layer, xs):
        return jax.vmap(layer)(xs)

    step = jax.value_and_grad(lambda layer, xs: forward(layer, xs).sum()) if args.mode == "train" else forward
    compiled = jax.jit(step).lower(layer, xs).compile()
    for _ in range(3):
        jax.block_until_ready(compiled(layer, xs))
    wall = []
    for _ in range(args.calls):
        start = time.perf_counter()
        jax.block_until_ready(compiled(layer, xs))
        wall.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            for _ in range(args.calls):
                jax.block_until_ready(compiled(layer, xs))
                if args.timeline:
                    time.sleep(_CALL_GAP_US / 1e6)
        events = _operation_events(trace_dir)
    return {"cell": type(cell).__name__, "wall": wall, "events": events, "hlo_text": compiled.as_text()}


def _logged_lines_to_keep(log: str) -> str:
    """What XLA and the rest wrote to stderr under ``--timeline``, less its informational lines
    (glog's ``I`` lines and the graphs they print): warnings, errors and Python's own output."""
    informational = re.compile(r"^(I\d{4} |ThunkExecutor: #thunks| thunk #\d+:|\s*$)")
    return "".join(line for line in log.splitlines(keepends=True) if not informational.match(line))


def main(argv=None) -> None:
    args = _parse_args(argv)
    os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported: the events read are XLA's CPU runtime's
    if args.timeline:  # XLA's CPU runtime logs the graph it runs a program by when it builds it
        os.environ["TF_CPP_VMODULE"] = "thunk_executor=6"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        result, log = _with_stderr_captured(lambda: _profile(args))
        sys.stderr.write(_logged_lines_to_keep(log))
    else:
        result = _profile(args)
    described = _instructions(result["hlo_text"])
    print(f"{result['cell']} {args.mode}, B={args.batch} T={args.length} H={args.hidden}, malloc {args.malloc}: "
          f"{statistics.median(result['wall']) * 1e3:.2f} ms per call without the profiler (median of {args.calls})")
    if args.timeline:
        instructions, bodies = _hlo_graph(result["hlo_text"])
        _print_timeline(_loop_timeline(result["events"], bodies), _waits(log), instructions, described)
        return
    per_call, counts = _thunk_times(result["events"], args.calls)
    print(f"{'ms/call':>9} {'runs/call':>9}  operation  (shape, source)")
    for name, ms in sorted(per_call.items(), key=lambda item: -item[1])[: args.top]:
        print(f"{ms:9.3f} {counts[name]:9.0f}  {name}  ({described.get(name, '')})")


if __name__ == "__main__":
    main()
