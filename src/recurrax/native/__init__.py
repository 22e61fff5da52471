r"""The classic cells' loops over time as native code on a CPU, for the fused scan
(:mod:`recurrax.fused`, :mod:`recurrax.fused_native`).

XLA runs a loop's body on one thread, and two loops of one program one after the other (their
bodies' temporaries share memory), so however the batch is cut, the steps of a cell trained
through XLA use one core. Each sequence of a batch is a chain of its own, though: the native
loops give each thread its own rows of the batch and run them through every step, the threads
never waiting for each other (``loops.h``). The input projections' and weights' gradients stay in
XLA. Measured on a 2-core CPU: see ``benchmarks/README.md``.

The loops (:data:`LOOPS`): ``lstm.cc`` (LSTM), ``gru.cc`` (GRU), ``elman.cc`` (Elman network), ``forget_gate.cc``
(ForgetElman and MGU) and ``linear.cc`` (LinearRecurrence). Each is compiled on its first use into
a library of its own, with the machine's C++ compiler (``$CXX``, else ``c++``, ``g++`` or
``clang++``) for the machine's own processor (``-march=native``, and any flags in
``$RECURRAX_NATIVE_FLAGS``) against the headers of XLA's FFI that ``jaxlib`` ships (a few
seconds), and kept in a cache (``$RECURRAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/recurrax`` or
``~/.cache/recurrax``) under a name made from the source, the flags, the compiler, the processor
and jaxlib's version, written atomically. The products run in AVX-512's vectors, else in AVX2's
(``loops.h``). Where it cannot be built (no compiler, a processor with neither AVX-512 nor AVX2
and FMA, not Linux on x86-64) or ``RECURRAX_NATIVE=0`` is set, :func:`available` is False and
the fused scan runs XLA's loops; :func:`build_error` says why.

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
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

SOURCE_DIR = Path(__file__).parent  # <loops>.cc, and loops.h, which each of them includes
# -fno-trapping-math: the values are the same; GCC may then turn the branches of tanh's clamp into
# selects and vectorise the loops that call it with AVX2 too (with AVX-512 it did so through masks).
FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-std=c++17", "-shared", "-fPIC", "-pthread")
# More flags for the compiler, after FLAGS (e.g. "-mno-avx512f": the AVX2 loops on a processor with AVX-512).
FLAGS_VARIABLE = "RECURRAX_NATIVE_FLAGS"
# The loops, each compiled from <name>.cc into a library of its own on its first use: the cells
# they run, and their custom calls.
LOOPS = {
    "lstm": "LSTM",
    "gru": "GRU",
    "elman": "Elman",
    "forget_gate": "ForgetElman and MGU",
    "linear": "LinearRecurrence",
}
_TARGETS = {
    "lstm": ("recurrax_lstm_forward", "recurrax_lstm_inference", "recurrax_lstm_backward"),
    "gru": ("recurrax_gru_forward", "recurrax_gru_inference", "recurrax_gru_backward"),
    "elman": ("recurrax_elman_forward", "recurrax_elman_backward"),
    "forget_gate": ("recurrax_forget_elman_forward", "recurrax_forget_elman_inference",
                    "recurrax_forget_elman_backward", "recurrax_mgu_forward", "recurrax_mgu_inference",
                    "recurrax_mgu_backward"),
    "linear": ("recurrax_linear_forward", "recurrax_linear_backward"),
}

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


def cpu_info(field: str) -> str:
    """The first processor's ``field`` in Linux's ``/proc/cpuinfo`` (``flags``, ``vendor_id``), or
    ``""`` where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == field:
            return value.strip()
    return ""


def _cpu_flags() -> set[str]:
    return set(cpu_info("flags").split())


def _flags() -> list[str]:
    """The compiler's flags: FLAGS, then those of $RECURRAX_NATIVE_FLAGS."""
    return [*FLAGS, *shlex.split(os.environ.get(FLAGS_VARIABLE, ""))]


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
    cpu = _cpu_flags()
    if "avx512f" not in cpu and not {"avx2", "fma"} <= cpu:
        return "this processor has neither AVX-512 nor AVX2 with FMA (the native loops' products use one of them)"
    if _compiler() is None:
        return "no C++ compiler found (set $CXX)"
    return None


def _source(loops: str) -> Path:
    return SOURCE_DIR / f"{loops}.cc"


def _check_loops(loops: str) -> None:
    if loops not in LOOPS:
        raise ValueError(f"no native loops {loops!r}; there are {', '.join(LOOPS)}")


def _build(loops: str) -> Path:
    """The compiled library of ``loops``, built into the cache unless an identical build is there."""
    compiler = _compiler()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    cpu = _cpu_flags()
    source = _source(loops)
    key = hashlib.sha256()
    jaxlib_version = importlib.metadata.version("jaxlib")  # the FFI headers compiled against
    for part in (source.read_bytes(), (SOURCE_DIR / "loops.h").read_bytes(), " ".join(_flags()).encode(),
                 version.encode(), " ".join(sorted(cpu)).encode(), jax.ffi.include_dir().encode(),
                 jaxlib_version.encode()):
        key.update(part)
        key.update(b"\0")
    target = _cache_dir() / f"{loops}-{key.hexdigest()[:20]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Once per machine and cache, a few seconds: said where it shows, not only in a log.
    print(f"recurrax: compiling the native {LOOPS[loops]} loops for this machine (once, a few seconds) "
          f"into {target.parent}", file=sys.stderr)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so.partial", delete=False) as partial:
        partial_path = Path(partial.name)
    try:
        command = [compiler, *_flags(), "-isystem", jax.ffi.include_dir(), str(source), "-o", str(partial_path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"compiling {source.name} failed:\n{result.stderr[-2000:]}")
        os.replace(partial_path, target)  # atomic: another process sees no half-written library
    finally:
        partial_path.unlink(missing_ok=True)
    return target


@functools.lru_cache(maxsize=None)
def _library(loops: str) -> tuple[ctypes.CDLL | None, str | None]:
    """(the loaded library of ``loops`` with its targets registered, None) or (None, why not)."""
    reason = _why_not_buildable()
    if reason is not None:
        return None, reason
    try:
        library = ctypes.CDLL(str(_build(loops)))
        for name in _TARGETS[loops]:
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        _log.warning("recurrax's native %s loops are not available: %s", LOOPS[loops], error)
        return None, str(error)
    return library, None


def available(loops: str = "lstm") -> bool:
    """Whether the native ``loops`` (a key of :data:`LOOPS`; the LSTM's unless given) are built
    (compiling them on the first call) and registered."""
    _check_loops(loops)
    return _library(loops)[0] is not None


def build_error(loops: str = "lstm") -> str | None:
    """Why :func:`available` is False for ``loops`` (None when it is True)."""
    _check_loops(loops)
    return _library(loops)[1]


def _require(loops: str) -> None:
    """Build and register ``loops``, or raise naming why they are not available."""
    if not available(loops):
        raise RuntimeError(f"recurrax's native {LOOPS[loops]} loops are not available: {build_error(loops)}")


def _call(loops: str, target: str, outputs, *args, **attributes):
    """The custom call ``target`` of ``loops`` on ``args``, its results shaped as ``outputs`` (pairs
    of shapes, float32); an outer ``jax.vmap`` runs one call per element."""
    _require(loops)
    shapes = tuple(jax.ShapeDtypeStruct(shape, jnp.float32) for shape in outputs)
    return jax.ffi.ffi_call(target, shapes, vmap_method="sequential")(*args, **attributes)


# --- LSTM -------------------------------------------------------------------------------------


def lstm_forward(xs, mask, starts, h_reset, c_reset, w_t, bias, h0, c0, projected=False):
    """The LSTM's forward loop over a batch: ``xs`` (B, T, I) the inputs, ``mask`` (B, T) float32
    (1: the step runs; 0: the state stays as it is), ``starts`` (B, T) float32 (1: the step starts
    an episode: unless masked, it reads ``h_reset`` and ``c_reset`` (B, H) instead of the state
    before it), ``w_t`` (I + H, 4H) the
    input and recurrent matrices transposed and stacked, ``[W_ihᵀ; W_hhᵀ]``, ``bias`` (4H), ``h0``,
    ``c0`` (B, H); float32, H a multiple of 16. With ``projected``, ``xs`` (B, T, 4H) holds the
    input products ``W_ih x_t`` already and ``w_t`` (H, 4H) is ``W_hhᵀ``. Returns the gate
    activations (B, T, 4H) (i, f, g, o after their sigmoid or tanh) and the states h, c after each
    step (B, T, H each)."""
    (batch, length, _), width = xs.shape, w_t.shape[1]
    hidden = width // 4
    outputs = ((batch, length, width), (batch, length, hidden), (batch, length, hidden))
    return _call("lstm", "recurrax_lstm_forward", outputs, xs, mask, starts, h_reset, c_reset, w_t, bias, h0, c0,
                 projected=np.int32(projected))


def lstm_inference(xs, mask, starts, h_reset, c_reset, w_t, bias, h0, c0, projected=False):
    """:func:`lstm_forward` for a call that is not differentiated: the states h after each step
    (B, T, H) and the last cell state (B, H) only (the gates stay in a buffer of each thread's
    rows)."""
    (batch, length, _), hidden = xs.shape, w_t.shape[1] // 4
    return _call("lstm", "recurrax_lstm_inference", ((batch, length, hidden), (batch, hidden)),
                 xs, mask, starts, h_reset, c_reset, w_t, bias, h0, c0, projected=np.int32(projected))


def lstm_backward(gates, cs, dys, mask, starts, c_reset, dh_last, dc_last, c0, w_hh):
    """The LSTM's backward loop over a batch, from the last step to the first: ``gates`` and ``cs``
    from :func:`lstm_forward`, ``dys`` (B, T, H) the gradients of the states h, ``mask``,
    ``starts`` and ``c_reset`` as there (a masked step passes the state's gradients on),
    ``dh_last``, ``dc_last`` (B, H) those of the final state, ``c0`` (B, H), ``w_hh`` (4H, H) as
    the cell stores it. Returns the gradients of the pre-activations (B, T, 4H), of the initial
    state (h0, c0), the sum of each sequence's pre-activation gradients over its steps (B, 4H: the
    bias's) and the gradients of the reset state (h_reset, c_reset)."""
    batch, length, width = gates.shape
    hidden = width // 4
    outputs = ((batch, length, width), (batch, hidden), (batch, hidden), (batch, width), (batch, hidden),
               (batch, hidden))
    return _call("lstm", "recurrax_lstm_backward", outputs, gates, cs, dys, mask, starts, c_reset, dh_last, dc_last,
                 c0, w_hh)


# --- GRU --------------------------------------------------------------------------------------


def gru_forward(xs, mask, starts, h_reset, w_ih_t, w_hh_t, bias, bias_hn, h0, inference=False, projected=False):
    """The GRU's forward loop over a batch: ``xs`` (B, T, I), ``mask`` (B, T) as for
    :func:`lstm_forward`, ``starts`` (B, T) and ``h_reset`` (B, H) as for :func:`elman_forward`,
    ``w_ih_t`` (I, 3H) and ``w_hh_t`` (H, 3H) the matrices transposed (gates
    r, z, n), ``bias`` (3H), ``bias_hn`` (H), ``h0`` (B, H); float32, H a multiple of 16. With
    ``projected``, ``xs`` (B, T, 3H) holds the input products ``W_ih x_t`` already (``w_ih_t`` is
    not read: it may have no rows, (0, 3H)). Returns the states after each step (B, T, H) and the gates (B, T, 4H): r, z, n and
    the recurrent n-part W_hn h + b_hn; with ``inference`` the states alone (a tuple of one)."""
    (batch, length, _), hidden = xs.shape, w_hh_t.shape[0]
    outputs = ((batch, length, hidden),) if inference else ((batch, length, hidden), (batch, length, 4 * hidden))
    target = "recurrax_gru_inference" if inference else "recurrax_gru_forward"
    return _call("gru", target, outputs, xs, mask, starts, h_reset, w_ih_t, w_hh_t, bias, bias_hn, h0,
                 projected=np.int32(projected))


def gru_backward(hs, gates, dys, mask, starts, h_reset, dh_last, h0, w_hh):
    """The GRU's backward loop: ``hs`` and ``gates`` from :func:`gru_forward`, ``dys`` (B, T, H)
    the states' gradients, ``mask``, ``starts`` and ``h_reset`` as there, ``dh_last`` and ``h0``
    (B, H), ``w_hh`` (3H, H) as the cell stores it. Returns the gradients of the r and z
    pre-activations (B, T, 2H), of the n pre-activation's input part (B, T, H) and its recurrent
    part W_hn h + b_hn (B, T, H), of the initial state (B, H), each sequence's sums over its steps
    (B, 3H: the bias's; B, H: ``bias_hn``'s) and the reset state's gradient (B, H)."""
    batch, length, hidden = hs.shape
    outputs = ((batch, length, 2 * hidden), (batch, length, hidden), (batch, length, hidden), (batch, hidden),
               (batch, 3 * hidden), (batch, hidden), (batch, hidden))
    return _call("gru", "recurrax_gru_backward", outputs, hs, gates, dys, mask, starts, h_reset, dh_last, h0, w_hh)


# --- Elman, ForgetElman, MGU ------------------------------------------------------------------

ACTIVATIONS = ("tanh", "sigmoid", "relu", "identity")  # the native loops' numbers for them, in order


def _activation(name: str) -> np.int32:
    if name not in ACTIVATIONS:
        raise ValueError(f"the native loops have no activation {name!r}; they have {', '.join(ACTIVATIONS)}")
    return np.int32(ACTIVATIONS.index(name))


def elman_forward(xs, mask, starts, h_reset, w_t, bias, h0, activation="tanh", projected=False):
    """The Elman network's forward loop over a batch: ``xs`` (B, T, I), ``mask`` (B, T) as for
    :func:`lstm_forward`, ``starts`` (B, T) float32 (1: the step starts an episode: unless masked, it
    reads ``h_reset`` (B, H) instead of the state before it), ``w_t`` (I + H, H) = ``[W_ihᵀ;
    W_hhᵀ]``, ``bias`` (H), ``h0`` (B, H), ``activation`` one of :data:`ACTIVATIONS`; float32, H a
    multiple of 16. With ``projected``, ``xs`` (B, T, H) holds the input products ``W_ih x_t``
    already and ``w_t`` (H, H) is ``W_hhᵀ``. Returns the states after each step (B, T, H)."""
    (batch, length, _), hidden = xs.shape, w_t.shape[1]
    (hs,) = _call("elman", "recurrax_elman_forward", ((batch, length, hidden),), xs, mask, starts, h_reset, w_t,
                  bias, h0, activation=_activation(activation), projected=np.int32(projected))
    return hs


def elman_backward(hs, dys, mask, starts, dh_last, w_hh, activation="tanh"):
    """The Elman network's backward loop: ``hs`` from :func:`elman_forward`, ``dys`` (B, T, H) their
    gradients, ``mask`` and ``starts`` as there, ``dh_last`` (B, H) the final state's gradient,
    ``w_hh`` (H, H) as the cell stores it. Returns the pre-activations' gradients (B, T, H), the
    initial state's (B, H), each sequence's sum of the first over its steps (B, H: the bias's) and
    the reset state's gradient (B, H)."""
    batch, length, hidden = hs.shape
    outputs = ((batch, length, hidden), (batch, hidden), (batch, hidden), (batch, hidden))
    return _call("elman", "recurrax_elman_backward", outputs, hs, dys, mask, starts, dh_last, w_hh,
                 activation=_activation(activation))


def _forget_gate_attributes(kind: str, activation: str) -> dict:
    """The custom call's attributes for ``kind`` (``"forget_elman"``: its activation; ``"mgu"``: none)."""
    if kind not in ("forget_elman", "mgu"):
        raise ValueError(f"the forget-gate loops run 'forget_elman' or 'mgu', not {kind!r}")
    return {} if kind == "mgu" else {"activation": _activation(activation)}


def forget_gate_forward(kind: str, xs, mask, starts, h_reset, wf_t, wh_t, bias, h0, activation="tanh",
                        inference=False, projected=False):
    """The forward loop of ``kind`` (``"forget_elman"`` or ``"mgu"``) over a batch: ``xs`` (B, T, I),
    ``mask``, ``starts`` (B, T) and ``h_reset`` (B, H) as for :func:`elman_forward`, ``wf_t`` and
    ``wh_t`` (I + H, H) = ``[W_fxᵀ; W_fhᵀ]`` and ``[W_hxᵀ; W_hhᵀ]``,
    ``bias`` (2H) = ``[b_f; b]``, ``h0`` (B, H), ``activation`` ForgetElman's (the MGU's is tanh).
    With ``projected``, ``xs`` (B, T, 2H) holds the input products ``[W_fx x_t, W_hx x_t]`` already
    and ``wf_t``, ``wh_t`` (H, H) are ``W_fhᵀ`` and ``W_hhᵀ``. Returns the states after each step
    (B, T, H), then the forget gates (B, T, H) and for the MGU the candidates (B, T, H); with
    ``inference`` the states alone (a tuple of one)."""
    (batch, length, _), hidden = xs.shape, wf_t.shape[1]
    attributes = _forget_gate_attributes(kind, activation)
    count = 1 if inference else (3 if kind == "mgu" else 2)
    target = f"recurrax_{kind}_{'inference' if inference else 'forward'}"
    return _call("forget_gate", target, ((batch, length, hidden),) * count, xs, mask, starts, h_reset, wf_t, wh_t,
                 bias, h0, projected=np.int32(projected), **attributes)


def forget_gate_backward(kind: str, residuals, dys, mask, starts, h_reset, dh_last, h0, w_fh, w_hh,
                         activation="tanh"):
    """The backward loop of ``kind`` (as for :func:`forget_gate_forward`): ``residuals`` what its
    forward loop returned (states, gates and for the MGU candidates), ``dys`` (B, T, H) the states'
    gradients, ``mask``, ``starts`` and ``h_reset`` as there, ``dh_last`` (B, H), ``h0`` (B, H),
    ``w_fh`` and ``w_hh`` (H, H) as the cell stores them. Returns the gradients of the gate's and
    the state's pre-activations (B, T, H each), of the initial state (B, H), each sequence's sums of
    the first two over its steps (B, 2H: the biases') and the reset state's gradient (B, H)."""
    batch, length, hidden = residuals[0].shape
    outputs = ((batch, length, hidden), (batch, length, hidden), (batch, hidden), (batch, 2 * hidden),
               (batch, hidden))
    attributes = _forget_gate_attributes(kind, activation)
    return _call("forget_gate", f"recurrax_{kind}_backward", outputs, *residuals, dys, mask, starts, h_reset,
                 dh_last, h0, w_fh, w_hh, **attributes)


# --- LinearRecurrence -------------------------------------------------------------------------


def linear_forward(ps, mask, starts, h_reset, gamma, bias, h0):
    """The linear recurrence's forward loop, h_t = γ ⊙ h_{t-1} + (p_t + b): ``ps`` (B, T, H) the
    input products W x_t, ``mask``, ``starts`` (B, T) and ``h_reset`` (B, H) as for
    :func:`elman_forward`, ``gamma`` and ``bias`` (H), ``h0`` (B, H); float32. Returns the states
    (B, T, H)."""
    (hs,) = _call("linear", "recurrax_linear_forward", (ps.shape,), ps, mask, starts, h_reset, gamma, bias, h0)
    return hs


def linear_backward(hs, dys, mask, starts, h_reset, gamma, h0, dh_last):
    """The linear recurrence's backward loop: ``hs`` from :func:`linear_forward`, ``dys`` their
    gradients, ``mask``, ``starts``, ``h_reset``, ``gamma``, ``h0`` as there, ``dh_last`` the final
    state's gradient. Returns the input products' gradients (B, T, H), the initial state's (B, H),
    each sequence's gradients of γ and of the bias (B, H each) and the reset state's (B, H)."""
    batch, _, hidden = hs.shape
    outputs = (hs.shape, (batch, hidden), (batch, hidden), (batch, hidden), (batch, hidden))
    return _call("linear", "recurrax_linear_backward", outputs, hs, dys, mask, starts, h_reset, gamma, h0, dh_last)
