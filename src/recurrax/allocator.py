"""Keeping freed memory in the process, so that a training step stops paying for fresh pages.

XLA allocates the temporaries of a compiled program as one block per call. glibc's ``malloc``
serves a block above 32 MiB with ``mmap`` and gives it back to the operating system when it is
freed (``munmap``), and an arena of a thread other than the main one does the same for any block
too large for it. The next call then gets fresh pages, and its first write to each 4 KiB page is a
page fault in which the kernel zeroes the page. A training step whose temporaries pass 32 MiB
pays this at every call (about 0.25 ms per MiB on this project's 2-core CPU), and so does torch,
whose CPU tensors come from the same ``malloc``. Measured per training step (median; minor faults
from ``getrusage``), each library in its own process, before and after :func:`retain_freed_memory`:

* recurrax LSTM, B = 32, T = 200, H = 128: 35 -> 24 ms (34.6 MiB faulted per call -> 1 MiB);
  B = 256: 220 -> 158 ms (277 MiB -> 6 MiB); GRU, B = 256: 187 -> 122 ms;
* ``torch.nn.LSTM``, B = 32: 27 -> 16 ms; B = 256: 234 -> 117 ms.

:func:`retain_freed_memory` tells glibc (``mallopt``) to serve every thread from the main arena
(``M_ARENA_MAX`` = 1), to grow that arena rather than map blocks of their own (``M_MMAP_MAX`` = 0)
and never to give freed memory back (``M_TRIM_THRESHOLD`` = -1). The cost: the process keeps what
it has freed until it exits, and its one heap fragments, so resident memory can pass a single
step's peak (an unbounded LSTM step at T = 20,000, B = 8: 3.2 GiB after three calls against
1.8 GiB; the ``recurrax train`` job: 1.4 GB either way), and where blocks are small the one heap
only adds contention between threads (``recurrax compare``: 26.4 s against 19.8 s). The
``recurrax`` command does this for its language-model job (:func:`recurrax.cli.keeps_freed_memory`);
a program of one's own calls it before its first JAX computation (a thread that has already
allocated keeps its arena; called later, it warns and changes nothing). The same settings from
the environment, for any process (torch's included)::

    MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=-1 python train.py
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
ENVIRONMENT = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "-1"}

_retained = False  # set by retain_freed_memory()


def retain_freed_memory() -> bool:
    """Keep freed memory in this process (see the module's docstring); True when applied.

    False where the C library is not glibc (macOS, Windows, musl), and, with a warning, once JAX
    has run a computation (XLA's threads then already have arenas of their own, which these
    settings do not reach: measured, as many page faults per call as without them): nothing is
    changed then.
    """
    if not sys.platform.startswith("linux"):
        return False
    if _jax_started():
        warnings.warn("retain_freed_memory() is called after JAX's first computation, when XLA's threads already "
                      "have their own memory arenas: nothing changed. Call it before any JAX computation, or start "
                      "the process with " + " ".join(f"{k}={v}" for k, v in ENVIRONMENT.items()), stacklevel=2)
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  (present in glibc only)
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    global _retained
    _retained = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return _retained


def freed_memory_kept() -> bool:
    """Whether this process keeps the memory it frees: :func:`retain_freed_memory` applied, or a
    Linux process started with the settings of :data:`ENVIRONMENT`.

    The fused scan asks when it chooses where an LSTM's input projection runs
    (:func:`recurrax.fused.project_in_loop`): a hoisted projection adds a buffer to every call, which
    is cheap from a heap that keeps its memory and costs fresh pages from one that does not.
    """
    if _retained:
        return True
    if not sys.platform.startswith("linux"):
        return False
    started_with = _environment_at_start()
    return all(started_with.get(k) == v for k, v in ENVIRONMENT.items())


def _environment_at_start() -> dict[str, str]:
    """The environment this process started with, which is what glibc read (``/proc/self/environ``;
    variables set later, in ``os.environ``, do not change the allocator)."""
    try:
        raw = open("/proc/self/environ", "rb").read()
    except OSError:
        return dict(os.environ)
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _jax_started() -> bool:
    """Whether JAX has initialised its backends (run a computation) in this process."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another JAX version: assume not
        return False
