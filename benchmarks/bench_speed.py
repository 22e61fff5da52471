"""Speed of the classic cells: torch's fused RNNs vs a plain lax.scan vs recurrax (fused scan).

For each cell, batch size B, length T and hidden size H (input size = H, float32), every contender
runs the same recurrence over a batch, forward only ("fwd", inference) and forward + backward
("train": value and gradient of the sum of all outputs with respect to the parameters):

* ``torch``: ``torch.nn.LSTM`` / ``torch.nn.GRU`` / ``torch.nn.RNN`` (tanh, for Elman) on (T, B, H)
  inputs; fwd under ``torch.inference_mode()``; train is ``out.sum().backward()``.
* ``plain``: the plain jitted ``jax.lax.scan`` a user writes, on (T, B, H) inputs: the input
  projection hoisted (one matrix product over all steps), then a loop of the cell's step written
  out here; gradients by ``jax.value_and_grad``.
* ``loopless`` (run only when named in ``--contenders``): the plain program less its loop, the
  hoisted input projections being the outputs. Every contender computes at least this much (the
  projections, their weights' gradient, the loss), so plain / loopless is the most that any loop,
  however fast, can gain over the plain scan; for ``LinearRecurrence``, whose step holds no
  product, it bounds ours / plain from below. Its outputs are not checked (they are the
  projections, not the states).
* ``unfused``: recurrax's layer with the fused path switched off (``fused=False``: ``jax.vmap`` of
  the plain ``lax.scan`` of ``cell.step``), i.e. recurrax before :mod:`recurrax.fused`.
* ``cudnn`` (LSTM on a GPU only, ``--device gpu``): ``jax.experimental.rnn.lstm``, JAX's binding of
  cuDNN's LSTM, on (B, T, H) inputs with the same weights; gradients with respect to them.
* ``ours``: ``jax.vmap(recurrax.Recurrent(cell))`` on (B, T, H) inputs, the library's default
  (on a CPU the sequential scan: the fused scan's native loops where they can be built, and
  ``LinearRecurrence``'s native loop, which has no product in it),
  trained as the trainer does: ``jax.value_and_grad`` of a loss that calls ``jax.vmap(model)``.

Each contender runs in its own worker process (JAX's and torch's thread pools would fight in one),
driven over a pipe. After compiling and warming up, the contenders take turns, measurement by
measurement, the order rotating each repeat, so that the machine's drift (other jobs) hits them
alike. A measurement is as many back-to-back calls as last ``--min-time`` seconds, each call timed
on its own and ended by ``block_until_ready``; the table gives the median call in ms over all
``--repeats`` measurements and the ratios ours/torch, ours/plain and ours/unfused (below 1: ours is
faster). The load average is printed: on a shared machine re-run when it is low. The contenders'
outputs are checked to agree before timing.

    python benchmarks/bench_speed.py --quick                 # smoke test, about a minute
    python benchmarks/bench_speed.py                         # LSTM, GRU x B{32,256} x T{200,1000} x H{128,512}
    python benchmarks/bench_speed.py --cells all --batch 32 --length 200 --hidden 128   # every classic cell
    python benchmarks/bench_speed.py --cells lstm --contenders ours,torch --threads 1     # one thread each
    python benchmarks/bench_speed.py --cells all --batch 32 --length 200 --hidden 128 \
        --contenders plain,loopless,ours        # what any loop could gain over the plain scan
    python benchmarks/bench_speed.py --csv speed.csv         # also write the rows as CSV

``--device gpu`` runs every contender on the GPU (torch on CUDA with cuDNN, JAX on its default backend,
which must then be a GPU; each JAX process takes the GPU's memory as it needs it, up to an equal
share of 80% of it, so that every contender's process finds some). The default, ``cpu``, hides GPUs
from every contender.

``--threads N`` runs every contender with N threads (torch/OpenMP told so; XLA's CPU client sized by
CPU affinity, N = 1 also switching off its intra-op pool), useful for comparing the work done
rather than how well each library uses the cores of a busy machine.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time

import machine

ALL_CELLS = ["LinearRecurrence", "Elman", "ForgetElman", "MGU", "GRU", "LSTM"]
TORCH_CELLS = {"Elman": "RNN", "GRU": "GRU", "LSTM": "LSTM"}
CONTENDERS = ["torch", "plain", "loopless", "unfused", "cudnn", "ours"]
CPU_CONTENDERS = ["torch", "plain", "unfused", "ours"]  # cudnn runs on a GPU only; loopless when named
RATIOS = ["torch", "plain", "loopless", "unfused", "cudnn"]  # the table's columns ours/<contender>
UNCHECKED = {"loopless"}  # contenders whose outputs are not the states (not checked against the reference)
SHOWN_WHERE_RUN = {"loopless", "cudnn"}  # the table's columns of contenders run only when asked for
MODES = ["fwd", "train"]


# ============================================================================================
# Workers


def limit_threads(threads: int | None) -> None:
    """Before importing JAX or torch: run this process with ``threads`` threads."""
    if not threads:
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cpus[: max(1, min(threads, len(cpus)))])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if threads == 1:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()


def device_environment(device: str, jax_workers: int) -> dict[str, str]:
    """The environment that puts every contender on ``device``: ``cpu`` hides GPUs from JAX and
    torch; ``gpu`` gives each of the ``jax_workers`` JAX processes an equal share of 80% of the
    GPU's memory, taken as needed (by default each would take 75% when it starts, and keep what
    it took: in one run, with five processes on an 80 GB H100, the largest configuration ran out)."""
    if device == "cpu":
        return {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    share = 0.8 / max(1, jax_workers)
    return {"XLA_PYTHON_CLIENT_PREALLOCATE": "false", "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{share:.3f}"}


def make_cell(name: str, hidden: int):
    import jax
    import recurrax

    return getattr(recurrax, name)(hidden, hidden, key=jax.random.key(0))


def inputs(cfg: dict, layout: str):
    """The same inputs for every contender: (B, T, H) or (T, B, H), float32, as NumPy."""
    import numpy as np

    x = np.random.default_rng(1).standard_normal((cfg["batch"], cfg["length"], cfg["hidden"])).astype(np.float32)
    return x if layout == "btf" else np.ascontiguousarray(x.transpose(1, 0, 2))


def plain_step(name: str):
    """The cell's step on a batch (B, ·), written out: ``step(params, state, p)`` with p the projection."""
    import jax
    import jax.numpy as jnp

    sig, tanh = jax.nn.sigmoid, jnp.tanh

    def linear(q, h, p):
        h = sig(q["decay_logit"]) * h + p
        return h, h

    def elman(q, h, p):
        h = tanh(p + h @ q["weight_hh"].T)
        return h, h

    def forget_elman(q, h, p):
        p_f, p_h = jnp.split(p, 2, -1)
        f = sig(p_f + h @ q["weight_fh"].T)
        h = tanh(p_h + (f * h) @ q["weight_hh"].T)
        return h, h

    def mgu(q, h, p):
        p_f, p_h = jnp.split(p, 2, -1)
        f = sig(p_f + h @ q["weight_fh"].T)
        cand = tanh(p_h + (f * h) @ q["weight_hh"].T)
        h = (1.0 - f) * h + f * cand
        return h, h

    def gru(q, h, p):
        p_r, p_z, p_n = jnp.split(p, 3, -1)
        g_r, g_z, g_n = jnp.split(h @ q["weight_hh"].T, 3, -1)
        r, z = sig(p_r + g_r), sig(p_z + g_z)
        n = tanh(p_n + r * (g_n + q["bias_hn"]))
        h = (1.0 - z) * n + z * h
        return h, h

    def lstm(q, state, p):
        h, c = state
        i, f, g, o = jnp.split(p + h @ q["weight_hh"].T, 4, -1)
        c = sig(f) * c + sig(i) * tanh(g)
        h = sig(o) * tanh(c)
        return (h, c), h

    return {"LinearRecurrence": linear, "Elman": elman, "ForgetElman": forget_elman, "MGU": mgu, "GRU": gru,
            "LSTM": lstm}[name]


def plain_projections(name: str, q: dict, xs):
    """The input projections of every step, one product over xs (T, B, F): (T, B, gates x H)."""
    w_in = q["weight"] if name == "LinearRecurrence" else q["weight_ih"]
    return xs @ w_in.T + q["bias"]


def plain_forward(name: str, q: dict, xs):
    """The plain loop on xs (T, B, F): projection hoisted, then lax.scan of the step."""
    import jax
    import jax.numpy as jnp

    ps = plain_projections(name, q, xs)
    hidden = q["weight"].shape[0] if name == "LinearRecurrence" else q["weight_hh"].shape[1]
    h0 = jnp.zeros((xs.shape[1], hidden), xs.dtype)
    step = plain_step(name)
    _, ys = jax.lax.scan(lambda h, p: step(q, h, p), (h0, h0) if name == "LSTM" else h0, ps)
    return ys


class JaxBench:
    """A JAX contender: ``fns[mode](params, x)`` jitted; outputs time-major (T, B, H) for the check."""

    def __init__(self, contender: str, cfg: dict, scan: str):
        import jax
        import jax.numpy as jnp
        import numpy as np
        import recurrax

        if cfg["device"] == "gpu" and jax.default_backend() != "gpu":
            raise RuntimeError(f"--device gpu, but JAX's default backend is {jax.default_backend()!r}")
        cell = make_cell(cfg["cell"], cfg["hidden"])
        if contender == "cudnn":
            from jax.experimental import rnn

            if cfg["cell"] != "LSTM" or cfg["device"] != "gpu":
                raise ValueError("the cudnn contender runs LSTM on a GPU only")
            h, b = cfg["hidden"], cfg["batch"]
            # cuDNN's flat layout for one layer: W_ih, W_hh, b_ih, b_hh.
            self.params = jnp.concatenate([cell.weight_ih.ravel(), cell.weight_hh.ravel(), cell.bias,
                                           jnp.zeros_like(cell.bias)])
            self.x = jnp.asarray(inputs(cfg, "btf"))
            zeros, lengths = jnp.zeros((1, b, h)), jnp.full((b,), cfg["length"], jnp.int32)

            def forward(w, x):
                return rnn.lstm(x, zeros, zeros, w, lengths, h, h, 1, 0.0, False)[0]

            self.time_major = lambda ys: np.swapaxes(ys, 0, 1)  # noqa: E731
        elif contender in ("plain", "loopless"):
            names = ("weight_ih", "weight_hh", "weight_fh", "bias", "bias_hn", "weight", "decay_logit")
            self.params = {n: jnp.asarray(getattr(cell, n)) for n in names if hasattr(cell, n)}
            self.x = jnp.asarray(inputs(cfg, "tbf"))
            if contender == "plain":
                forward = lambda q, x: plain_forward(cfg["cell"], q, x)  # noqa: E731
            else:
                forward = lambda q, x: plain_projections(cfg["cell"], q, x)  # noqa: E731
            self.time_major = lambda ys: ys  # noqa: E731
        else:
            fused = None if contender == "ours" else False
            mode = "auto" if scan == "auto" else scan
            layer = recurrax.Recurrent(cell, mode)
            self.params = layer
            self.x = jnp.asarray(inputs(cfg, "btf"))

            def forward(model, x):
                return jax.vmap(lambda xx: recurrax.scan(model.cell, xx, mode=model.scan, fused=fused)[0])(x)

            self.time_major = lambda ys: np.swapaxes(ys, 0, 1)  # noqa: E731

        def loss(q, x):
            return jnp.sum(forward(q, x))

        self.fns = {"fwd": jax.jit(forward), "train": jax.jit(jax.value_and_grad(loss))}
        self.block = jax.block_until_ready

    def run(self, mode: str) -> None:
        self.block(self.fns[mode](self.params, self.x))

    def outputs(self):
        import numpy as np

        return np.asarray(self.time_major(np.asarray(self.fns["fwd"](self.params, self.x))), np.float64)


class TorchBench:
    def __init__(self, cfg: dict):
        import numpy as np
        import torch

        torch.manual_seed(0)
        h = cfg["hidden"]
        self.module = getattr(torch.nn, TORCH_CELLS[cfg["cell"]])(h, h)
        cell = make_cell(cfg["cell"], h)  # the same parameters as the JAX contenders, for the output check
        with torch.no_grad():
            names = {"weight_ih_l0": "weight_ih", "weight_hh_l0": "weight_hh"}
            for tname, jname in names.items():
                getattr(self.module, tname).copy_(torch.from_numpy(np.array(getattr(cell, jname))))
            bias = np.array(cell.bias)
            self.module.bias_ih_l0.copy_(torch.from_numpy(bias))
            hh = np.zeros_like(bias)
            if cfg["cell"] == "GRU":
                hh[2 * h :] = np.asarray(cell.bias_hn)
            self.module.bias_hh_l0.copy_(torch.from_numpy(hh))
        self.x = torch.from_numpy(inputs(cfg, "tbf"))
        self.torch = torch
        self.gpu = cfg["device"] == "gpu"
        if self.gpu:
            if not torch.cuda.is_available():
                raise RuntimeError("--device gpu, but torch sees no CUDA device")
            self.module, self.x = self.module.cuda(), self.x.cuda()

    def run(self, mode: str) -> None:
        if mode == "fwd":
            with self.torch.inference_mode():
                self.module(self.x)
        else:
            for p in self.module.parameters():
                p.grad = None
            out, _ = self.module(self.x)
            out.sum().backward()
        if self.gpu:
            self.torch.cuda.synchronize()

    def outputs(self):
        import numpy as np

        with self.torch.inference_mode():
            return np.asarray(self.module(self.x)[0].cpu().numpy(), np.float64)


def _call_times(bench, mode: str, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        bench.run(mode)
        times.append(time.perf_counter() - start)
    return times


def worker(contender: str, threads: int | None, scan: str) -> None:
    """Serve one contender over stdin/stdout (JSON lines): setup, calibrate, time, teardown."""
    limit_threads(threads)
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr
    if contender == "torch" and threads:
        import torch

        torch.set_num_threads(threads)
    bench, calls = None, {}
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "setup":
                bench, calls = None, {}
                cfg = cmd["cfg"]
                bench = TorchBench(cfg) if contender == "torch" else JaxBench(contender, cfg, scan)
                for mode in MODES:  # compile and warm up
                    bench.run(mode)
                    bench.run(mode)
                ys = bench.outputs()
                reply = {"ok": True, "sums": [float(ys.sum()), float((ys * ys).sum()), float(ys[-1].sum())]}
            elif cmd["cmd"] == "calibrate":
                for mode in MODES:
                    once = min(_call_times(bench, mode, 1 if cmd["min_time"] <= 0 else 2))
                    calls[mode] = max(1, min(1000, math.ceil(cmd["min_time"] / max(once, 1e-9))))
                reply = {"ok": True, "calls": calls}
            elif cmd["cmd"] == "time":
                reply = {"ok": True, "seconds": _call_times(bench, cmd["mode"], calls[cmd["mode"]])}
            elif cmd["cmd"] == "teardown":
                bench, calls = None, {}
                if contender != "torch":
                    import jax

                    jax.clear_caches()
                elif cmd.get("device") == "gpu":
                    import torch

                    torch.cuda.empty_cache()  # give back what this configuration cached
                reply = {"ok": True}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd['cmd']!r}"}
        except Exception as err:  # report, keep serving
            bench = None
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        proto.write(json.dumps(reply) + "\n")


# ============================================================================================
# Driver


class Worker:
    def __init__(self, contender: str, threads: int | None, scan: str, env: dict[str, str]):
        self.contender, self.threads, self.scan, self.env = contender, threads, scan, env
        self.proc = None
        self.death = None  # why the process that held the current setup ended, if it did

    def send(self, **cmd) -> None:
        if cmd["cmd"] == "setup":
            self.death = None
        if self.proc is None or self.proc.poll() is not None:
            args = [sys.executable, os.path.abspath(__file__), "--worker", self.contender, "--scan", self.scan]
            if self.threads:
                args += ["--threads", str(self.threads)]
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1", **self.env))
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def receive(self) -> dict:
        line = self.proc.stdout.readline() if self.proc is not None else ""
        if not line:
            return {"ok": False, "error": self._ended()}
        return json.loads(line)

    def ask(self, **cmd) -> dict:
        """The worker's reply to ``cmd``. A worker that ended after its setup is not started again
        until the next setup (a fresh one would have nothing set up): it answers why it ended."""
        if cmd["cmd"] != "setup" and (self.death or (self.proc is not None and self.proc.poll() is not None)):
            return {"ok": False, "error": self.death or self._ended()}
        self.send(**cmd)
        return self.receive()

    def _ended(self) -> str:
        code = self.proc.wait() if self.proc is not None else None
        self.proc = None
        killed = " (killed by SIGKILL, as the kernel does when memory runs out)" if code == -signal.SIGKILL else ""
        self.death = f"{self.contender} worker exited with code {code}{killed}"
        return self.death

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def malloc_environment(mode: str) -> dict[str, str]:
    """The environment that gives every contender's process glibc's default allocator, or one that keeps
    freed memory (the settings of :func:`recurrax.allocator.retain_freed_memory`)."""
    if mode == "default":
        return {}
    from recurrax.allocator import ENVIRONMENT

    return dict(ENVIRONMENT)


def run_grid(args) -> list[dict]:
    contenders = [c for c in args.contenders if c != "torch" or torch_available()]
    jax_workers = sum(c != "torch" for c in contenders)
    env = dict(malloc_environment(args.malloc), **device_environment(args.device, jax_workers))
    workers = {c: Worker(c, args.threads, args.scan, env) for c in contenders}
    configs = list(itertools.product(args.cells, args.batch, args.length, args.hidden))
    rows, t0 = [], time.perf_counter()
    try:
        for k, (cell, batch, length, hidden) in enumerate(configs, 1):
            cfg = {"cell": cell, "batch": batch, "length": length, "hidden": hidden, "device": args.device}
            here = [c for c in contenders if (c != "torch" or cell in TORCH_CELLS) and (c != "cudnn" or cell == "LSTM")]
            label = f"[{k}/{len(configs)}] {cell} B={batch} T={length} H={hidden}"
            log(f"{label}: compiling and warming up {', '.join(here)}")
            ready, sums = [], {}
            for c in here:  # one at a time: compilation of one does not slow the others' warm-up
                reply = workers[c].ask(cmd="setup", cfg=cfg)
                if reply["ok"]:
                    sums[c] = reply["sums"]
                    reply = workers[c].ask(cmd="calibrate", min_time=args.min_time)
                if reply["ok"]:
                    ready.append(c)
                else:
                    log(f"  {c}: {reply['error']}")
            if sums:
                ref = sums.get("plain") or next(iter(sums.values()))
                for c, s in sums.items():
                    if c in UNCHECKED:
                        continue
                    tol = 2e-3 * math.sqrt(abs(ref[1]) + 1)
                    if not all(math.isclose(a, b, rel_tol=2e-3, abs_tol=tol) for a, b in zip(s, ref)):
                        log(f"  WARNING: {c}'s outputs differ from the reference: {s} vs {ref}")
            samples = {(c, m): [] for c in ready for m in MODES}
            for r in range(args.repeats):
                order = ready[r % len(ready):] + ready[: r % len(ready)] if ready else []
                for mode in MODES:
                    for c in order:
                        reply = workers[c].ask(cmd="time", mode=mode)
                        if reply["ok"]:
                            samples[(c, mode)] += [t * 1e3 for t in reply["seconds"]]
                        elif c in ready:  # said once; what it measured before stays
                            log(f"  {c} {mode}: {reply['error']}")
                            ready.remove(c)
            for c in ready:
                workers[c].ask(cmd="teardown", device=args.device)
            for mode in MODES:
                row = {"cell": cell, "batch": batch, "length": length, "hidden": hidden, "mode": mode,
                       "device": args.device, "threads": args.threads or "default",
                       "load": round(os.getloadavg()[0], 2)}
                for c in CONTENDERS:
                    s = samples.get((c, mode), [])
                    row[f"{c}_ms"] = statistics.median(s) if s else math.nan
                    row[f"{c}_calls"] = len(s)
                for c in RATIOS:
                    row[f"ours/{c}"] = row["ours_ms"] / row[f"{c}_ms"]
                rows.append(row)
            log(f"{label}: " + " | ".join(
                f"{m} " + " ".join(f"{c} {rows[-2 + i][c + '_ms']:.4g}" for c in ready) for i, m in enumerate(MODES))
                + f" ms  ({time.perf_counter() - t0:.0f}s, load {os.getloadavg()[0]:.1f})")
            if args.csv:  # after every configuration: an interrupted run keeps what it measured
                write_csv(args.csv, rows)
    finally:
        for w in workers.values():
            w.close()
    return rows


def write_csv(path: str, rows: list[dict]) -> None:
    """The rows measured so far as CSV, written to a temporary file and renamed over ``path``."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _fmt(v, ratio=False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if ratio else (f"{v:.3g}" if v < 100 else f"{v:.0f}")


def table(rows: list[dict]) -> str:
    """The rows as a text table; the loopless and cudnn columns only where those contenders ran."""
    shown = [c for c in CONTENDERS if c not in SHOWN_WHERE_RUN or any(r[f"{c}_calls"] for r in rows)]
    ratios = [c for c in RATIOS if c in shown]
    header = ["cell", "B", "T", "H", "mode"] + shown + [f"ours/{c}" for c in ratios]
    lines = [header]
    for r in rows:
        lines.append([r["cell"], str(r["batch"]), str(r["length"]), str(r["hidden"]), r["mode"]]
                     + [_fmt(r[f"{c}_ms"]) for c in shown]
                     + [_fmt(r[f"ours/{c}"], True) for c in ratios])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(s.ljust(w) if i < 5 else s.rjust(w) for i, (s, w) in enumerate(zip(line, widths))))
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def _list(kind):
    return lambda text: [kind(s) for s in text.replace(",", " ").split() if s]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Median ms per call; ratios below 1: ours is faster.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=_list(str), default=["lstm", "gru"],
                   help="comma-separated names, or 'all' (default lstm,gru)")
    p.add_argument("--batch", type=_list(int), default=[32, 256])
    p.add_argument("--length", type=_list(int), default=[200, 1000])
    p.add_argument("--hidden", type=_list(int), default=[128, 512], help="hidden size = input size")
    p.add_argument("--repeats", type=int, default=5, help="measurements per contender and mode (default 5)")
    p.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement at least (default 0.3)")
    p.add_argument("--contenders", type=_list(str), default=None,
                   help=f"from {','.join(CONTENDERS)} (default: all that run on the device)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                   help="where every contender runs (default cpu; gpu: torch on CUDA, JAX on its GPU backend)")
    p.add_argument("--scan", default="auto", choices=["auto", "sequential"],
                   help="recurrax's scan mode (default: the layer's)")
    p.add_argument("--threads", type=int, default=None, help="threads per contender (default: each library's own)")
    p.add_argument("--malloc", default="default", choices=["default", "retain"],
                   help="every contender's allocator: glibc's default, or keeping freed memory "
                        "(recurrax.allocator; default: default)")
    p.add_argument("--quick", action="store_true", help="smoke test: LSTM and GRU, B=8, T=50, H=32, 2 repeats")
    p.add_argument("--csv", metavar="PATH", help="also write the rows as CSV")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads, args.scan)
        return
    if args.quick:
        args.batch, args.length, args.hidden, args.repeats, args.min_time = [8], [50], [32], 2, 0.05
    import recurrax  # its registry reads the cells' names (registry or class names, any case)

    cells = ALL_CELLS if args.cells == ["all"] else args.cells
    try:
        args.cells = [recurrax.get_cell_class(c).__name__ for c in cells]
    except ValueError:
        args.cells = None
    if args.cells is None or not set(args.cells) <= set(ALL_CELLS):
        p.error(f"unknown classic cell in {cells}; choose from {', '.join(ALL_CELLS)} (or their registry "
                "names: linear, elman, forget-elman, mgu, gru, lstm) or all")
    if args.contenders is None:
        args.contenders = CONTENDERS if args.device == "gpu" else CPU_CONTENDERS
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad:
        p.error(f"unknown contender(s) {bad}; choose from {', '.join(CONTENDERS)}")
    if "cudnn" in args.contenders and args.device != "gpu":
        p.error("the cudnn contender runs on a GPU only: add --device gpu")
    load = os.getloadavg()[0]
    rows = run_grid(args)
    print(table(rows))
    print(f"\nmedian ms per call, {args.repeats} measurements of >= {args.min_time}s per contender and mode; "
          f"device: {args.device}; threads: {args.threads or 'default'}; malloc: {args.malloc}; "
          f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after\n{machine.describe(args.device)}",
          flush=True)
    if args.csv and rows:
        log(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
