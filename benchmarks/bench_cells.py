"""Baseline speed table of recurrax's cells: forward and forward+backward time.

For every cell, batch size, sequence length and hidden size (input size = hidden size, float32),
three contenders run the same recurrence over a batch of sequences:

* ``ours``: ``jax.vmap(recurrax.Recurrent(cell))`` on (B, T, F) inputs, under ``jax.jit`` (the
  layer's default scan: associative for ``LinearRecurrence``, sequential otherwise);
  forward+backward is ``jax.value_and_grad`` of the sum of the outputs with respect to the
  parameters (the layer), jitted.
* ``plain``: the naive ``jax.lax.scan`` a user would write: the step, input projection
  ``x @ W_ih.T`` included, written out here, on (T, B, F) inputs; same parameters, same loss.
* ``torch``: ``torch.nn.RNN`` (for Elman), ``torch.nn.LSTM``, ``torch.nn.GRU`` on (T, B, F)
  inputs, when torch is importable; forward under ``torch.inference_mode()``, forward+backward
  is ``out.sum().backward()`` with respect to the parameters.

Each contender lives in its own worker process (JAX's and torch's thread pools interfere within
one process), driven over a pipe; the contenders take turns measurement by measurement (the order
rotating with each repeat), so a slow drift of the machine affects them alike. Compilation is
excluded (each function is warmed up first) and every call ends with ``block_until_ready`` (or
returns after torch's synchronous CPU kernels). A measurement is enough back-to-back calls to last
about ``--min-time`` seconds, each call timed on its own; the table gives the median call time over
all ``--repeats`` measurements, in milliseconds, and the ratios ours/plain and ours/torch (below 1:
ours is faster). A median over single calls shrugs off the stalls that other processes on a busy
machine cause (the CSV also has each contender's fastest call).

    python benchmarks/bench_cells.py --quick                        # smoke test, well under a minute
    python benchmarks/bench_cells.py --csv results.csv              # the full grid (long on a CPU)
    python benchmarks/bench_cells.py --cells gru,lstm --batch 32 --length 1000 --hidden 512
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import time

ALL_CELLS = ["LinearRecurrence", "Elman", "ForgetElman", "MGU", "GRU", "LSTM"]
TORCH_CELLS = {"Elman": "RNN", "GRU": "GRU", "LSTM": "LSTM"}
CONTENDERS = ["ours", "plain", "torch"]
QUICK_CELLS = ["LinearRecurrence", "GRU", "LSTM"]  # associative scan, a torch counterpart, a pair state
MODES = ["fwd", "fwd+bwd"]


# ============================================================================================
# Workers: one process per contender, reading JSON commands on stdin, answering on stdout.


class Bench:
    """One contender's functions for one configuration: ``run(mode)`` performs one synchronised call."""

    def run(self, mode: str) -> None:
        raise NotImplementedError

    def checksum(self) -> list[float] | None:
        """Sum and sum of squares of the forward outputs, to check that contenders agree."""
        return None


def _sums(ys) -> list[float]:
    import numpy as np

    ys = np.asarray(ys, np.float64)
    return [float(ys.sum()), float((ys * ys).sum())]


def _jax_inputs(cfg, layout):
    """The same inputs for every JAX contender, as (B, T, F) or (T, B, F)."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(1), (cfg["batch"], cfg["length"], cfg["hidden"]), "float32")
    return x if layout == "btf" else jnp.asarray(jnp.swapaxes(x, 0, 1))


def _make_cell(name, hidden):
    import jax
    import recurrax

    return getattr(recurrax, name)(hidden, hidden, key=jax.random.key(0))


class OursBench(Bench):
    def __init__(self, cfg):
        import jax
        import jax.numpy as jnp
        import recurrax

        self.layer = recurrax.Recurrent(_make_cell(cfg["cell"], cfg["hidden"]))
        self.x = _jax_inputs(cfg, "btf")

        def forward(layer, x):
            return jax.vmap(layer)(x)

        def loss(layer, x):
            return jnp.sum(jax.vmap(layer)(x))

        # jax.jit, not eqx.filter_jit: the layer's leaves are all arrays, and the same jit wrapper as
        # the plain loop's keeps Python dispatch overhead out of the comparison.
        self.fns = {"fwd": jax.jit(forward), "fwd+bwd": jax.jit(jax.value_and_grad(loss))}

    def run(self, mode):
        import jax

        jax.block_until_ready(self.fns[mode](self.layer, self.x))

    def checksum(self):
        return _sums(self.fns["fwd"](self.layer, self.x))


# --- the plain baseline: each cell's step written out, input projection inside the loop ----


def _plain_params(cell) -> dict:
    import jax.numpy as jnp

    names = ("weight_ih", "weight_hh", "weight_fh", "bias", "bias_hn", "weight", "decay_logit")
    return {n: jnp.asarray(getattr(cell, n)) for n in names if hasattr(cell, n)}


def _plain_step(name):
    import jax
    import jax.numpy as jnp

    sig, tanh = jax.nn.sigmoid, jnp.tanh

    def linear(p, h, x):
        h = sig(p["decay_logit"]) * h + x @ p["weight"].T + p["bias"]
        return h, h

    def elman(p, h, x):
        h = tanh(x @ p["weight_ih"].T + h @ p["weight_hh"].T + p["bias"])
        return h, h

    def forget_elman(p, h, x):
        p_f, p_h = jnp.split(x @ p["weight_ih"].T + p["bias"], 2, axis=-1)
        f = sig(p_f + h @ p["weight_fh"].T)
        h = tanh(p_h + (f * h) @ p["weight_hh"].T)
        return h, h

    def mgu(p, h, x):
        p_f, p_h = jnp.split(x @ p["weight_ih"].T + p["bias"], 2, axis=-1)
        f = sig(p_f + h @ p["weight_fh"].T)
        cand = tanh(p_h + (f * h) @ p["weight_hh"].T)
        h = (1.0 - f) * h + f * cand
        return h, h

    def gru(p, h, x):
        x_r, x_z, x_n = jnp.split(x @ p["weight_ih"].T + p["bias"], 3, axis=-1)
        h_r, h_z, h_n = jnp.split(h @ p["weight_hh"].T, 3, axis=-1)
        r, z = sig(x_r + h_r), sig(x_z + h_z)
        n = tanh(x_n + r * (h_n + p["bias_hn"]))
        h = (1.0 - z) * n + z * h
        return h, h

    def lstm(p, state, x):
        h, c = state
        i, f, g, o = jnp.split(x @ p["weight_ih"].T + h @ p["weight_hh"].T + p["bias"], 4, axis=-1)
        c = sig(f) * c + sig(i) * tanh(g)
        h = sig(o) * tanh(c)
        return (h, c), h

    return {"LinearRecurrence": linear, "Elman": elman, "ForgetElman": forget_elman, "MGU": mgu, "GRU": gru,
            "LSTM": lstm}[name]


def plain_forward(name, params, xs):
    """The naive loop: xs (T, B, F) → outputs (T, B, H)."""
    import jax
    import jax.numpy as jnp

    step = _plain_step(name)
    hidden = params["weight_hh"].shape[1] if "weight_hh" in params else params["weight"].shape[0]
    h0 = jnp.zeros((xs.shape[1], hidden), xs.dtype)
    if name == "LSTM":
        h0 = (h0, h0)
    _, ys = jax.lax.scan(lambda h, x: step(params, h, x), h0, xs)
    return ys


class PlainBench(Bench):
    def __init__(self, cfg):
        import jax
        import jax.numpy as jnp

        name = cfg["cell"]
        cell = _make_cell(name, cfg["hidden"])
        self.params = _plain_params(cell)
        self.x = _jax_inputs(cfg, "tbf")

        def forward(params, x):
            return plain_forward(name, params, x)

        def loss(params, x):
            return jnp.sum(plain_forward(name, params, x))

        self.fns = {"fwd": jax.jit(forward), "fwd+bwd": jax.jit(jax.value_and_grad(loss))}

    def run(self, mode):
        import jax

        jax.block_until_ready(self.fns[mode](self.params, self.x))

    def checksum(self):
        return _sums(self.fns["fwd"](self.params, self.x))


class TorchBench(Bench):
    def __init__(self, cfg):
        import torch

        torch.manual_seed(0)
        h = cfg["hidden"]
        kind = TORCH_CELLS[cfg["cell"]]
        self.module = getattr(torch.nn, kind)(h, h)  # RNN: tanh, like Elman's default
        self.x = torch.randn(cfg["length"], cfg["batch"], h)
        self.torch = torch

    def run(self, mode):
        if mode == "fwd":
            with self.torch.inference_mode():
                self.module(self.x)
        else:
            for p in self.module.parameters():
                p.grad = None
            out, _ = self.module(self.x)
            out.sum().backward()


BENCHES = {"ours": OursBench, "plain": PlainBench, "torch": TorchBench}


def _call_times(bench: Bench, mode: str, calls: int) -> list[float]:
    """Seconds taken by each of ``calls`` back-to-back calls."""
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        bench.run(mode)
        times.append(time.perf_counter() - start)
    return times


def limit_threads(threads: int | None) -> None:
    """Run this process with ``threads`` threads: tell OpenMP/MKL, torch and XLA so (pin it for XLA if > 1).

    Must run before torch or JAX is imported. ``None`` leaves every library at its default.
    """
    if not threads:
        return
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 1 < threads < len(available):  # XLA sizes its pool by the CPUs it may use; one thread needs no pin
        os.sched_setaffinity(0, available[:threads])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threads == 1:  # XLA's CPU backend: no intra-op thread pool
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1".strip()


def worker(contender: str, threads: int | None = None) -> None:
    """Serve one contender over stdin/stdout, one JSON command per line.

    ``setup`` builds the functions for a configuration and warms them up (compilation, first-call
    allocations); ``calibrate`` picks how many back-to-back calls make one measurement; ``time``
    returns the seconds of each call of one measurement; ``teardown`` frees the configuration.
    """
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # anything printed by libraries goes to stderr, not into the protocol
    limit_threads(threads)
    if threads and contender == "torch":
        import torch

        torch.set_num_threads(threads)
    bench, calls = None, {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "setup":
                bench, calls = None, {}
                bench = BENCHES[contender](cmd["cfg"])
                for mode in MODES:
                    bench.run(mode)  # compilation, first-call allocations
                reply = {"ok": True, "checksum": bench.checksum()}
            elif cmd["cmd"] == "calibrate":  # also the second warm-up call
                for mode in MODES:
                    once = _call_times(bench, mode, 1)[0]
                    if once < cmd["min_time"] / 10:  # a fast call: time a few to be sure
                        once = min(_call_times(bench, mode, 5))
                    calls[mode] = max(1, min(1000, math.ceil(cmd["min_time"] / max(once, 1e-9))))
                reply = {"ok": True, "calls": calls}
            elif cmd["cmd"] == "time":
                reply = {"ok": True, "seconds": _call_times(bench, cmd["mode"], calls[cmd["mode"]])}
            elif cmd["cmd"] == "teardown":
                bench, calls = None, {}
                if contender != "torch":
                    import jax

                    jax.clear_caches()
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd['cmd']!r}"}
        except Exception as err:  # report and keep serving
            bench = None
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        proto.write(json.dumps(reply) + "\n")


# ============================================================================================
# Driver


class Worker:
    def __init__(self, contender: str, threads: int | None = None):
        self.contender = contender
        self.threads = threads
        self.proc = None

    def start(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        extra = ["--threads", str(self.threads)] if self.threads else []
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", self.contender, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, env=env,
        )

    def send(self, **cmd) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def receive(self) -> dict:
        line = self.proc.stdout.readline() if self.proc is not None else ""
        if not line:  # the worker died (e.g. out of memory): report, restart on the next command
            code = self.proc.wait() if self.proc is not None else None
            self.proc = None
            return {"ok": False, "error": f"{self.contender} worker exited with code {code}"}
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        self.send(**cmd)
        return self.receive()

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def torch_available() -> bool:
    try:
        import importlib.util

        return importlib.util.find_spec("torch") is not None
    except Exception:
        return False


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


CSV_FIELDS = ["cell", "batch", "length", "hidden", "mode", "repeats", "threads", "ours_ms", "plain_ms", "torch_ms",
              "ours_over_plain", "ours_over_torch", "ours_min_ms", "plain_min_ms", "torch_min_ms"]


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)


def run_grid(args) -> list[dict]:
    contenders = [c for c in args.contenders if c != "torch" or torch_available()]
    if "torch" in args.contenders and "torch" not in contenders:
        log("torch is not importable: skipping the torch contender")
    workers = {c: Worker(c, args.threads) for c in contenders}
    configs = list(itertools.product(args.cells, args.batch, args.length, args.hidden))
    rows = []
    t_start = time.perf_counter()
    try:
        for k, (cell, batch, length, hidden) in enumerate(configs, 1):
            cfg = {"cell": cell, "batch": batch, "length": length, "hidden": hidden}
            here = [c for c in contenders if c != "torch" or cell in TORCH_CELLS]
            label = f"[{k}/{len(configs)}] {cell} B={batch} T={length} H={hidden}"
            log(f"{label}: compiling / warming up {', '.join(here)}")
            # Warm-up (compilation mostly) runs in all workers at once; everything after, one at a time.
            for c in here:
                workers[c].send(cmd="setup", cfg=cfg)
            ready, sums = [], {}
            for c in here:
                reply = workers[c].receive()
                if reply["ok"]:
                    sums[c] = reply["checksum"]
                    reply = workers[c].ask(cmd="calibrate", min_time=args.min_time)
                if reply["ok"]:
                    ready.append(c)
                else:
                    log(f"  {c}: setup failed: {reply['error']}")
            # The plain loop runs the same parameters on the same inputs: its outputs must agree.
            if sums.get("ours") and sums.get("plain") and not all(
                math.isclose(a, b, rel_tol=1e-2, abs_tol=1e-2 * math.sqrt(sums["ours"][1] + 1.0))
                for a, b in zip(sums["ours"], sums["plain"])
            ):
                log(f"  WARNING: ours and plain disagree (sum, sum of squares): {sums['ours']} vs {sums['plain']}")
            samples = {(c, m): [] for c in ready for m in MODES}
            for r in range(args.repeats):
                order = ready[r % len(ready):] + ready[: r % len(ready)] if ready else []
                for mode in MODES:
                    for c in order:
                        reply = workers[c].ask(cmd="time", mode=mode)
                        if reply["ok"]:
                            samples[(c, mode)].extend(t * 1e3 for t in reply["seconds"])
                        else:
                            log(f"  {c} {mode}: {reply['error']}")
            for c in ready:
                workers[c].ask(cmd="teardown")
            for mode in MODES:
                row = {"cell": cell, "batch": batch, "length": length, "hidden": hidden, "mode": mode,
                       "repeats": args.repeats, "threads": args.threads or "default"}
                for c in CONTENDERS:
                    s = samples.get((c, mode), [])
                    row[f"{c}_ms"] = statistics.median(s) if s else math.nan
                    row[f"{c}_min_ms"] = min(s) if s else math.nan
                row["ours_over_plain"] = row["ours_ms"] / row["plain_ms"]
                row["ours_over_torch"] = row["ours_ms"] / row["torch_ms"]
                rows.append(row)
            if args.csv:  # rewritten after every configuration, so a long run leaves partial results
                write_csv(args.csv, rows)
            fwd, fb = rows[-2], rows[-1]
            log(f"{label}: fwd " + " ".join(f"{c} {fwd[c + '_ms']:.3g}ms" for c in ready)
                + " | fwd+bwd " + " ".join(f"{c} {fb[c + '_ms']:.3g}ms" for c in ready)
                + f"  ({time.perf_counter() - t_start:.0f}s elapsed)")
    finally:
        for w in workers.values():
            w.close()
    return rows


def _fmt(v: float, ratio: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if ratio:
        return f"{v:.2f}"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(rows: list[dict]) -> str:
    by_cfg = {}
    for row in rows:
        by_cfg.setdefault((row["cell"], row["batch"], row["length"], row["hidden"]), {})[row["mode"]] = row
    header = ["cell", "B", "T", "H"]
    for mode in MODES:
        header += [f"{mode} ours", "plain", "torch", "ours/plain", "ours/torch"]
    lines = [header]
    for (cell, b, t, h), modes in by_cfg.items():
        line = [cell, str(b), str(t), str(h)]
        for mode in MODES:
            r = modes[mode]
            line += [_fmt(r["ours_ms"]), _fmt(r["plain_ms"]), _fmt(r["torch_ms"]),
                     _fmt(r["ours_over_plain"], True), _fmt(r["ours_over_torch"], True)]
        lines.append(line)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(line, widths))]
        out.append("  ".join(cells[:4]) + "  |  " + "  ".join(cells[4:9]) + "  |  " + "  ".join(cells[9:]))
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def _list(kind):
    def parse(text):
        items = [s for s in text.replace(",", " ").split() if s]
        return [kind(s) for s in items]

    return parse


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Times are medians in ms per call; ratios below 1 mean ours is faster.")
    p.add_argument("--cells", type=_list(str), default=None,
                   help=f"comma-separated, from {','.join(ALL_CELLS)} (default all; --quick: {','.join(QUICK_CELLS)})")
    p.add_argument("--batch", type=_list(int), default=[1, 32, 256], help="batch sizes (default 1,32,256)")
    p.add_argument("--length", type=_list(int), default=[100, 1000], help="sequence lengths (default 100,1000)")
    p.add_argument("--hidden", type=_list(int), default=[128, 512], help="hidden sizes = input sizes (default 128,512)")
    p.add_argument("--repeats", type=int, default=5, help="measurements per contender and mode (default 5)")
    p.add_argument("--min-time", type=float, default=0.1,
                   help="seconds a measurement lasts at least (back-to-back calls; default 0.1)")
    p.add_argument("--contenders", type=_list(str), default=CONTENDERS, help="comma-separated, from ours,plain,torch")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: B=4, T=20, H=16, 2 repeats, three cells unless --cells is given (well under a minute)")
    p.add_argument("--csv", metavar="PATH", help="also write the results as CSV (one row per configuration and mode)")
    p.add_argument("--threads", type=int, default=None,
                   help="run every contender with this many threads (torch, OpenMP and XLA told so); "
                        "default: each library's own default (all CPUs). 1 is the steadiest on a busy machine")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads)
        return
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.quick:
        args.batch, args.length, args.hidden, args.repeats, args.min_time = [4], [20], [16], 2, 0.01
        args.cells = QUICK_CELLS if args.cells is None else args.cells
    args.cells = ALL_CELLS if args.cells is None else args.cells
    lookup = {c.lower(): c for c in ALL_CELLS}
    lookup.update({"linear": "LinearRecurrence", "forgetelman": "ForgetElman"})  # recurrax.CELLS names
    try:
        args.cells = [lookup[c.lower().replace("-", "")] for c in args.cells]
    except KeyError as err:
        p.error(f"unknown cell {err.args[0]!r}; choose from {', '.join(ALL_CELLS)}")
    for c in args.contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}; choose from {', '.join(CONTENDERS)}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")

    load = os.getloadavg()[0]
    rows = run_grid(args)
    log(f"load average (1 min) before: {load:.2f}, after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(table(rows))
    threads = f"{args.threads} thread(s)" if args.threads else "default threads"
    print(f"\nmedian ms per call ({args.repeats} measurements of >= {args.min_time}s each, {threads}); "
          "ours/plain, ours/torch < 1: ours is faster", flush=True)
    if args.csv:
        write_csv(args.csv, rows)
        log(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
