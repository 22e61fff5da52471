"""Long sequences in bounded memory, and streaming latency.

Two measurements, each contender in its own fresh process (so that its peak memory is its own),
contenders alternating round after round, the order rotating; medians over rounds:

``memory``: one training step (value and gradient with respect to the parameters of the sum of all
outputs, batch through ``jax.vmap`` as the trainer does it) of a one-layer LSTM (``--cell``) at
B = 8, H = input = 128 over T = 100,000 steps, and at a length where the unbounded path fits too
(T = 20,000), contenders:

* ``ours``: ``recurrax.scan`` with its defaults: sequences longer than ``AUTO_CHUNK_LENGTH`` (8192)
  steps are rematerialised in chunks of about 256 steps (``chunk_size=None``);
* ``unbounded``: the same with rematerialisation off (``chunk_size=T``): every step's activations
  are kept for the backward pass;
* ``torch``: ``torch.nn.LSTM`` / ``GRU`` (forward and ``backward()``), for reference.

Reported: the step's time (median over rounds, compilation and a warm-up call excluded), the peak
resident memory of the process during the timed call(s) (``VmHWM``, reset after warm-up; it
includes the inputs, B x T x 128 float32 = 0.41 GB at T = 100,000, and the framework's own
footprint), its resident memory before the call, and XLA's temporary buffer size.

``streaming``: the latency of one step at batch 1 (``state, y = step(state, x)``), median over
many calls, for ``torch.nn.LSTMCell`` (under ``inference_mode``) and recurrax's
``layer.step`` jitted with the layer closed over (``jax.jit(lambda s, x: layer.step(s, x))``,
weights baked in as constants, as one deploys a streaming model), with JAX's default asynchronous
CPU dispatch and with ``jax.config.update("jax_cpu_enable_async_dispatch", False)`` (for a
computation this small, the hand-off to the dispatch thread is most of the latency).

    python benchmarks/bench_long.py                       # both, the issue's sizes (several minutes)
    python benchmarks/bench_long.py --only streaming
    python benchmarks/bench_long.py --only memory --lengths 100000 --contenders ours --rounds 1
    python benchmarks/bench_long.py --quick               # small sizes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import machine


def _status(field: str) -> float:
    """A memory field of /proc/self/status in GiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return math.nan


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def memory_worker(cfg: dict) -> dict:
    import numpy as np

    B, T, H, cell_name, contender = cfg["batch"], cfg["length"], cfg["hidden"], cfg["cell"], cfg["contender"]
    x_np = np.random.default_rng(1).standard_normal((B, T, H), dtype=np.float32)
    info = {}
    if contender == "torch":
        import torch

        module = getattr(torch.nn, cell_name.upper())(H, H)
        x = torch.from_numpy(np.ascontiguousarray(x_np.transpose(1, 0, 2)))
        del x_np

        def step():
            for p in module.parameters():
                p.grad = None
            out, _ = module(x)
            out.sum().backward()
    else:
        import jax
        import jax.numpy as jnp
        import recurrax

        layer = recurrax.Recurrent(recurrax.get_cell_class(cell_name)(H, H, key=jax.random.key(0)), "sequential",
                                   chunk_size=T if contender == "unbounded" else None)
        x = jnp.asarray(x_np)
        del x_np

        def loss(model, xs):
            return jnp.sum(jax.vmap(model)(xs))

        compiled = jax.jit(jax.value_and_grad(loss)).lower(layer, x).compile()
        info["xla_temp_gib"] = compiled.memory_analysis().temp_size_in_bytes / 2**30

        def step():
            jax.block_until_ready(compiled(layer, x))

    step()  # warm-up
    info["rss_before_gib"] = _status("VmRSS")
    _reset_peak()
    times = []
    for _ in range(cfg["calls"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    info.update(seconds=times, peak_gib=_status("VmHWM"))
    return info


def streaming_worker(cfg: dict) -> dict:
    H, n, contender, cell_name = cfg["hidden"], cfg["steps"], cfg["contender"], cfg["cell"]
    if contender == "torch":
        import torch

        cell = getattr(torch.nn, cell_name.upper() + "Cell")(H, H)
        x, h = torch.randn(1, H), torch.zeros(1, H)
        state = (h, torch.zeros(1, H)) if cell_name.lower() == "lstm" else h

        def run(s):
            return cell(x, s)

        with torch.inference_mode():
            for _ in range(200):
                state = run(state)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                state = run(state)
                times.append(time.perf_counter() - t)
    else:
        import jax

        if contender == "ours-sync":
            jax.config.update("jax_cpu_enable_async_dispatch", False)
        import jax.numpy as jnp
        import recurrax

        layer = recurrax.Recurrent(recurrax.get_cell_class(cell_name)(H, H, key=jax.random.key(0)))
        step = jax.jit(lambda s, x: layer.step(s, x))
        x, state = jnp.ones((H,)), layer.init_state()
        for _ in range(200):
            state, y = step(state, x)
        jax.block_until_ready(y)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            state, y = step(state, x)
            y.block_until_ready()
            times.append(time.perf_counter() - t)
    return {"seconds": times}


def _worker(kind: str) -> None:
    cfg = json.loads(sys.stdin.read())
    proto = sys.stdout
    sys.stdout = sys.stderr
    try:
        out = memory_worker(cfg) if kind == "memory" else streaming_worker(cfg)
        out["ok"] = True
    except Exception as err:
        out = {"ok": False, "error": f"{type(err).__name__}: {err}"}
    proto.write(json.dumps(out) + "\n")
    proto.flush()


def spawn(kind: str, cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", kind], input=json.dumps(cfg),
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        return {"ok": False, "error": f"exit code {proc.returncode} {' '.join(tail)}"}
    return json.loads(lines[-1])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rounds(kind, contenders, make_cfg, n_rounds):
    results = {c: [] for c in contenders}
    for r in range(n_rounds):
        order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
        for c in order:
            out = spawn(kind, make_cfg(c))
            if out["ok"]:
                results[c].append(out)
            else:
                log(f"  {c}: {out['error']}")
            log(f"  round {r + 1}: {c} done (load {os.getloadavg()[0]:.1f})")
    return results


def run_memory(args) -> list[str]:
    lines = [f"memory: one training step of {args.cell.upper()}, B={args.batch}, H=input={args.hidden} "
             f"(median over {args.rounds} rounds; peak = process VmHWM during the step)",
             f"{'T':>7}  {'contender':10}  {'step s':>8}  {'peak GiB':>8}  {'RSS before':>10}  {'XLA temp GiB':>12}  "
             f"{'time / unbounded':>16}"]
    for length in args.lengths:
        contenders = [c for c in args.contenders if not (c == "unbounded" and length > args.unbounded_max)]
        if "torch" in contenders and length > args.torch_max:
            contenders.remove("torch")
        log(f"memory T={length}: {', '.join(contenders)}")
        res = rounds("memory", contenders, lambda c: {"cell": args.cell, "batch": args.batch, "length": length,
                                                      "hidden": args.hidden, "contender": c, "calls": args.calls},
                     args.rounds)
        med = {c: statistics.median([t for o in outs for t in o["seconds"]]) for c, outs in res.items() if outs}
        for c, outs in res.items():
            if not outs:
                continue
            peak = statistics.median(o["peak_gib"] for o in outs)
            before = statistics.median(o["rss_before_gib"] for o in outs)
            temp = outs[0].get("xla_temp_gib", math.nan)
            ratio = med[c] / med["unbounded"] if "unbounded" in med else math.nan
            lines.append(f"{length:>7}  {c:10}  {med[c]:8.2f}  {peak:8.2f}  {before:10.2f}  {temp:12.2f}  "
                         f"{ratio:16.2f}")
    return lines


def run_streaming(args) -> list[str]:
    lines = [f"streaming: one step at batch 1, {args.cell.upper()}, H=input={args.hidden} "
             f"(median µs over {args.steps} steps x {args.rounds} rounds)",
             f"{'contender':12}  {'median µs':>9}  {'p10 µs':>8}  {'/ torch':>7}"]
    contenders = ["torch", "ours", "ours-sync"]
    res = rounds("streaming", contenders, lambda c: {"cell": args.cell, "hidden": args.hidden, "steps": args.steps,
                                                      "contender": c}, args.rounds)
    med = {}
    for c, outs in res.items():
        ts = sorted(t for o in outs for t in o["seconds"])
        if ts:
            med[c] = statistics.median(ts)
            ratio = med[c] / med["torch"] if "torch" in med else math.nan
            lines.append(f"{c:12}  {med[c] * 1e6:9.1f}  {ts[len(ts) // 10] * 1e6:8.1f}  {ratio:7.2f}")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["memory", "streaming"])
    p.add_argument("--cell", default="lstm", choices=["lstm", "gru"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=[20000, 100000])
    p.add_argument("--contenders", type=lambda s: s.split(","), default=["ours", "unbounded", "torch"])
    p.add_argument("--unbounded-max", type=int, default=20000, help="longest T for the unbounded path (default 20000)")
    p.add_argument("--torch-max", type=int, default=20000, help="longest T for torch (default 20000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=1, help="timed training steps per process (default 1)")
    p.add_argument("--steps", type=int, default=3000, help="streaming steps per process (default 3000)")
    p.add_argument("--quick", action="store_true", help="T = 2000 and 10000, 1 round, 300 streaming steps")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return
    if args.quick:
        args.lengths, args.rounds, args.steps = [2000, 10000], 1, 300
        args.unbounded_max = args.torch_max = 10000
    load = os.getloadavg()[0]
    out = []
    if args.only in (None, "memory"):
        out += run_memory(args) + [""]
    if args.only in (None, "streaming"):
        out += run_streaming(args)
    print("\n".join(out))
    print(f"\nload average {load:.2f} before, {os.getloadavg()[0]:.2f} after\n{machine.describe()}", flush=True)


if __name__ == "__main__":
    main()
