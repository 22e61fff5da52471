r"""The LSTM's loops over time as native code on a CPU, for the fused scan (:mod:`recurrax.fused`).

XLA runs a loop's body on one thread, and two loops of one program one after the other (their
bodies' temporaries share memory), so however the batch is cut, the steps of an LSTM trained
through XLA use one core. Each sequence of a batch is a chain of its own, though: the native
loops (``lstm.cc``) give each thread its own rows of the batch and run them through every step,
the threads never waiting for each other. The input projections before the loops and the
weight-gradient products after them stay in XLA. Measured on a 2-core CPU: see
``benchmarks/README.md``.

The code is compiled from ``lstm.cc`` on first use, with the machine's C++ compiler (``$CXX``,
else ``c++``, ``g++`` or ``clang++``) for the machine's own processor (``-march=native``) against
the headers of XLA's FFI that ``jaxlib`` ships, and kept in a cache
(``$RECURRAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/recurrax`` or ``~/.cache/recurrax``) under a name
made from the source, the flags, the compiler, the processor and jaxlib's version, written
atomically. Where it
cannot be built (no compiler, a processor without AVX-512, not Linux on x86-64) or
``RECURRAX_NATIVE=0`` is set, :func:`available` is False and the fused scan runs XLA's loops;
:func:`build_error` says why.

Within ``with recurrax.native.disabled():`` scans traced there run XLA's loops too (a JAX user
context, part of ``jax.jit``'s cache key, like :func:`recurrax.fused.disabled`).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp

SOURCE = Path(__file__).with_name("lstm.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
_TARGETS = ("recurrax_lstm_forward", "recurrax_lstm_inference", "recurrax_lstm_backward")

_ENABLED = jax.make_user_context(default_value=True)
_log = logging.getLogger(__name__)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this block, fused scans *traced* here run XLA's loops instead of the native ones.

    >>> import jax, jax.numpy as jnp, recurrax, recurrax.native
    >>> layer = recurrax.Recurrent(recurrax.LSTM(2, 16, key=jax.random.key(0)))
    >>> with recurrax.native.disabled():
    ...     ys = jax.vmap(layer)(jnp.ones((8, 5, 2)))
    >>> ys.shape
    (8, 5, 16)
    """
    with _ENABLED(False):
        yield


def enabled() -> bool:
    """Whether fused scans traced now may run the native loops (:func:`disabled` is not in force)."""
    return _ENABLED.value


def _cache_dir() -> Path:
    if os.environ.get("RECURRAX_CACHE_DIR"):
        return Path(os.environ["RECURRAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "recurrax"


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def _why_not_buildable() -> str | None:
    """Why the native loops cannot be built here, or None when they can be tried."""
    if os.environ.get("RECURRAX_NATIVE", "1") == "0":
        return "RECURRAX_NATIVE=0 is set"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"native loops are written for Linux on x86-64, not {platform.system()} on {platform.machine()}"
    if "avx512f" not in _cpu_flags():
        return "this processor has no AVX-512 (the native loops' products are written with it)"
    if _compiler() is None:
        return "no C++ compiler found (set $CXX)"
    return None


def _build() -> Path:
    """The compiled library, built into the cache unless an identical build is there."""
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    flags = _cpu_flags()
    key = hashlib.sha256()
    jaxlib_version = importlib.metadata.version("jaxlib")  # the FFI headers compiled against
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode(), " ".join(sorted(flags)).encode(),
                 jax.ffi.include_dir().encode(), jaxlib_version.encode()):
        key.update(part)
        key.update(b"\0")
    target = _cache_dir() / f"lstm-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _log.info("compiling recurrax's native LSTM loops into %s (once)", target)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so.partial", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        command = [compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(partial_path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed:\n{result.stderr[-2000:]}")
        os.replace(partial_path, target)  # atomic: another process sees no half-written library
    finally:
        partial_path.unlink(missing_ok=True)
    return target


@functools.lru_cache(maxsize=None)
def _library() -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library with its targets registered, None) or (None, why not)."""
    reason = _why_not_buildable()
    if reason is not None:
        return None, reason
    try:
        library = ctypes.CDLL(str(_build()))
        for name in _TARGETS:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _log.warning("recurrax's native LSTM loops are not available: %s", error)
        return None, str(error)
    return library, None


def available() -> bool:
    """Whether the native loops are built (compiling them on the first call) and registered."""
    return _library()[0] is not None


def build_error() -> str | None:
    """Why :func:`available` is False (None when it is True)."""
    return _library()[1]


def _require() -> None:
    """Build and register the native loops, or raise naming why they are not available."""
    if not available():
        raise RuntimeError(f"recurrax's native LSTM loops are not available: {build_error()}")


def lstm_forward(xs, mask, w_t, bias, h0, c0):
    """The LSTM's forward loop over a batch: ``xs`` (B, T, I) the inputs, ``mask`` (B, T) float32
    (1: the step runs; 0: the state stays as it is), ``w_t`` (I + H, 4H) the
    input and recurrent matrices transposed and stacked, ``[W_ihᵀ; W_hhᵀ]``, ``bias`` (4H), ``h0``,
    ``c0`` (B, H); float32, H a multiple of 16. Returns the gate activations (B, T, 4H) (i, f, g, o
    after their sigmoid or tanh) and the states h, c after each step (B, T, H each). An outer
    ``jax.vmap`` runs one call per element."""
    _require()
    batch, length, _ = xs.shape
    width = w_t.shape[1]
    hidden = width // 4
    out = (jax.ShapeDtypeStruct((batch, length, width), jnp.float32),
           jax.ShapeDtypeStruct((batch, length, hidden), jnp.float32),
           jax.ShapeDtypeStruct((batch, length, hidden), jnp.float32))
    return jax.ffi.ffi_call("recurrax_lstm_forward", out, vmap_method="sequential")(xs, mask, w_t, bias, h0, c0)


def lstm_inference(xs, mask, w_t, bias, h0, c0):
    """:func:`lstm_forward` for a call that is not differentiated: the states h after each step
    (B, T, H) and the last cell state (B, H) only (the gates stay in a buffer of each thread's
    rows)."""
    _require()
    batch, length, _ = xs.shape
    hidden = w_t.shape[1] // 4
    out = (jax.ShapeDtypeStruct((batch, length, hidden), jnp.float32),
           jax.ShapeDtypeStruct((batch, hidden), jnp.float32))
    return jax.ffi.ffi_call("recurrax_lstm_inference", out, vmap_method="sequential")(xs, mask, w_t, bias, h0, c0)


def lstm_backward(gates, cs, dys, mask, dh_last, dc_last, c0, w_hh):
    """The LSTM's backward loop over a batch, from the last step to the first: ``gates`` and ``cs``
    from :func:`lstm_forward`, ``dys`` (B, T, H) the gradients of the states h, ``mask`` as there
    (a masked step passes the state's gradients on), ``dh_last``,
    ``dc_last`` (B, H) those of the final state, ``c0`` (B, H), ``w_hh`` (4H, H) as the cell stores
    it. Returns the gradients of the pre-activations (B, T, 4H), of the initial state (h0, c0) and
    the sum of each sequence's pre-activation gradients over its steps (B, 4H: the bias's)."""
    _require()
    batch, length, width = gates.shape
    hidden = width // 4
    out = (jax.ShapeDtypeStruct((batch, length, width), jnp.float32),
           jax.ShapeDtypeStruct((batch, hidden), jnp.float32),
           jax.ShapeDtypeStruct((batch, hidden), jnp.float32),
           jax.ShapeDtypeStruct((batch, width), jnp.float32))
    return jax.ffi.ffi_call("recurrax_lstm_backward", out, vmap_method="sequential")(
        gates, cs, dys, mask, dh_last, dc_last, c0, w_hh)
