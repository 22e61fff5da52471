"""Sequential vs associative vs chunked scans for recurrax's linear recurrent cells.

For every cell (``LinearRecurrence`` and the linear cells: LRU, minGRU, minLSTM, S6, RG-LRU, FFM,
linear attention, Gated DeltaNet), every scan mode and every sequence length, the benchmark times
``jax.vmap(recurrax.Recurrent(cell, mode))`` on a (batch, T, hidden) float32 input
(input size = hidden size), jitted:

* ``fwd``: the outputs;
* ``fwd+bwd``: ``jax.value_and_grad`` of the sum of the outputs with respect to the parameters.

``sequential`` is the layer's sequential mode as the library runs it by default (no
``chunk_size``; the scan engine may rematerialise long sequences by itself); ``chunked`` uses
``--chunk-size`` (250 by default: it divides 1k, 10k and 100k, so no partial chunk).

Each (cell, mode, length) runs in its own worker process, which compiles and measures ``fwd``
first and ``fwd+bwd`` second, and reports

* the median over ``--repeats`` measurements, in milliseconds per call (a measurement times
  enough back-to-back calls to last ``--min-time`` seconds; compilation excluded, reported apart);
* ``peak RSS``: the worker's peak resident memory (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
  read after the ``fwd`` runs and again after the ``fwd+bwd`` runs. It is a high-water mark of the
  whole process (Python, JAX, the compiler, the inputs; a bare worker sits at a few hundred MB),
  so the second reading is max(fwd, fwd+bwd), which is the fwd+bwd peak whenever the backward
  pass needs at least as much memory as the forward pass (it always did here);
* ``XLA MB``: the compiled program's own buffers from XLA's buffer assignment
  (``compiled.memory_analysis()``: temporaries + outputs; JAX reports no live memory statistics
  for the CPU device, so this static figure stands in for them).

A configuration whose XLA estimate exceeds ``--max-gb`` is compiled but not run (shown as
``>X GB``), so a big associative scan cannot exhaust a shared machine; a worker that exceeds
``--timeout`` seconds is stopped (``timeout``).

    python benchmarks/bench_linear.py --quick                     # smoke test, under a minute
    python benchmarks/bench_linear.py                             # full grid: 1k, 10k, 100k steps
    python benchmarks/bench_linear.py --cells lru,s6 --lengths 1000,10000 --batch 8 --hidden 128 \\
        --chunk-size 512 --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import machine

ALL_CELLS = ["linear", "lru", "mingru", "minlstm", "s6", "rglru", "ffm", "linear-attention", "gated-deltanet"]
MODES = ["sequential", "associative", "chunked"]
PASSES = ["fwd", "fwd+bwd"]


# ============================================================================================
# Worker: one (cell, mode, length) configuration, answers one JSON line on stdout.


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _time_calls(fn, args, repeats: int, min_time: float) -> list[float]:
    import jax

    jax.block_until_ready(fn(*args))  # warm-up (and a check that it runs)
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    once = time.perf_counter() - start
    calls = max(1, int(min_time / max(once, 1e-6)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / calls * 1e3)
    return times


def worker(cfg: dict) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import recurrax

    cell = recurrax.get_cell_class(cfg["cell"])(cfg["hidden"], cfg["hidden"], key=jax.random.key(0))
    chunk = cfg["chunk_size"] if cfg["mode"] == "chunked" else None
    layer = recurrax.Recurrent(cell, cfg["mode"], chunk_size=chunk)
    x = jax.random.normal(jax.random.key(1), (cfg["batch"], cfg["length"], cfg["hidden"]), jnp.float32)
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def forward(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def loss(p, x):
        return jnp.sum(forward(p, x))

    fns = {"fwd": forward, "fwd+bwd": jax.value_and_grad(loss)}
    result = {"baseline_rss_mb": _peak_rss_mb()}
    for name in cfg["passes"]:
        start = time.perf_counter()
        compiled = jax.jit(fns[name]).lower(params, x).compile()
        compile_s = time.perf_counter() - start
        mem = compiled.memory_analysis()
        xla_mb = None if mem is None else (mem.temp_size_in_bytes + mem.output_size_in_bytes) / 2**20
        entry = {"compile_s": compile_s, "xla_mb": xla_mb}
        if xla_mb is not None and xla_mb > cfg["max_gb"] * 1024:
            entry["skipped"] = f">{cfg['max_gb']:g} GB"
        else:
            times = _time_calls(compiled, (params, x), cfg["repeats"], cfg["min_time"])
            entry.update(ms=statistics.median(times), ms_all=times, peak_rss_mb=_peak_rss_mb())
        result[name] = entry
    return result


# ============================================================================================
# Driver


def run_config(cfg: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": "killed (out of memory?)" if proc.returncode < 0 else tail[0][:80]}
    return json.loads(lines[-1])


def _cell_text(entry: dict | None, error: str | None) -> str:
    if error:
        return error
    if entry is None:
        return "-"
    if "skipped" in entry:
        return entry["skipped"]
    xla = "?" if entry.get("xla_mb") is None else f"{entry['xla_mb']:.0f}"
    return f"{entry['ms']:9.2f} ms {entry['peak_rss_mb']:5.0f} {xla:>5} MB {entry['compile_s']:5.1f} s"


def print_table(results: list[dict], modes: list[str], passes: list[str]) -> None:
    keyed = {(r["cell"], r["length"], r["mode"]): r for r in results}
    cells = list(dict.fromkeys(r["cell"] for r in results))
    lengths = sorted({r["length"] for r in results})
    width = 34
    header = f"{'cell':<17}{'T':>7} {'pass':<8}" + "".join(f"{m:^{width}}" for m in modes) + "  fastest"
    print("each mode: median ms per call | peak RSS MB | XLA buffers MB | compile s")
    print(header)
    print("-" * len(header))
    wins: dict[tuple[int, str], dict[str, int]] = {}
    for cell in cells:
        for length in lengths:
            for p in passes:
                row = f"{cell:<17}{length:>7} {p:<8}"
                best, best_ms = None, float("inf")
                for m in modes:
                    r = keyed.get((cell, length, m))
                    if r is None:
                        row += f"{'-':^{width}}"
                        continue
                    entry = r["result"].get(p)
                    row += f"{_cell_text(entry, r['result'].get('error')):>{width}}"
                    if entry and "ms" in entry and entry["ms"] < best_ms:
                        best, best_ms = m, entry["ms"]
                row += f"  {best or '-'}"
                print(row)
                if best:
                    tally = wins.setdefault((length, p), {})
                    tally[best] = tally.get(best, 0) + 1
    print()
    print("fastest mode, by length and pass (number of cells):")
    for (length, p), tally in sorted(wins.items()):
        ranked = sorted(tally.items(), key=lambda kv: -kv[1])
        print(f"  T={length:>7} {p:<8} " + ", ".join(f"{m}: {n}" for m, n in ranked))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(ALL_CELLS), help="comma-separated registry names")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--lengths", default="1000,10000,100000")
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=250,
                        help="chunk length of the chunked scan (250 divides the default lengths: no padding)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--max-gb", type=float, default=6.0, help="skip runs whose XLA buffers exceed this")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per worker")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: lru only, T = 128, chunk 32, 2 repeats (under a minute; compile-bound)")
    parser.add_argument("--json", help="write all results to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    if args.quick:
        args.cells, args.lengths, args.chunk_size, args.repeats, args.min_time = "lru", "128", 32, 2, 0.05
    cells, modes = args.cells.split(","), args.modes.split(",")
    lengths = [int(t) for t in args.lengths.split(",")]
    passes = args.passes.split(",")
    unknown = [c for c in cells if c not in ALL_CELLS] + [m for m in modes if m not in MODES]
    unknown += [p for p in passes if p not in PASSES]
    if unknown:
        parser.error(f"unknown cells/modes/passes: {', '.join(unknown)}")

    print(f"batch {args.batch}, hidden {args.hidden}, float32, chunk_size {args.chunk_size}, "
          f"{args.repeats} repeats; {machine.describe()}")
    results = []
    start = time.perf_counter()
    for cell in cells:
        for length in lengths:
            for mode in modes:
                cfg = dict(cell=cell, mode=mode, length=length, batch=args.batch, hidden=args.hidden,
                           chunk_size=args.chunk_size, repeats=args.repeats, min_time=args.min_time,
                           max_gb=args.max_gb, passes=passes)
                t0 = time.perf_counter()
                result = run_config(cfg, args.timeout)
                compile_s = sum(result.get(p, {}).get("compile_s", 0.0) for p in passes)
                print(f"  {cell:<17} T={length:<7} {mode:<12} {time.perf_counter() - t0:6.1f}s "
                      f"(compile {compile_s:5.1f}s) {result.get('error', '')}", file=sys.stderr, flush=True)
                results.append({"cell": cell, "length": length, "mode": mode, "result": result})
    print(f"(total {time.perf_counter() - start:.0f}s)\n")
    print_table(results, modes, passes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
