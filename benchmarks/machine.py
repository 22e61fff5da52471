"""One line naming what a benchmark ran on: the processor, its cores and vector width, and the
versions of JAX and torch, printed under every table (runs on different machines differ by more
than any change measured here: torch's LSTM training step at B = 32, T = 200, H = 128 took 15.8 ms
on one 2-core machine and 38 ms on another)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess


def _cpu() -> str:
    """The processor's model name and widest vector instructions, from /proc/cpuinfo (Linux), else
    what ``platform`` knows."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    vector = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags),
                  None)
    return model + (f", {vector}" if vector else "")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _gpus() -> str:
    """The GPUs' names, as ``nvidia-smi`` gives them ("" without it)."""
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return ""
    return ", ".join(name.strip() for name in names if name.strip())


def describe(device: str = "cpu") -> str:
    """E.g. ``cpu: AMD EPYC, AVX-512, 2 CPUs; jax 0.10.2, torch 2.13.0+cpu``; for ``device="gpu"``
    the GPUs' names first."""
    gpus = f"gpu: {_gpus() or 'unknown'}; " if device == "gpu" else ""
    return f"{gpus}cpu: {_cpu()}, {os.cpu_count()} CPUs; jax {_version('jax')}, torch {_version('torch')}"
