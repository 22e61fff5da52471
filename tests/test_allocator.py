"""recurrax.allocator: after retain_freed_memory, a freed large block stays in the process.

Observed from outside the allocator: the process's resident memory (VmRSS) after malloc, a write to
every byte, and free of a 64 MiB block. glibc's default gives the block back at free (resident
memory falls by its size); with the setting it stays resident, ready for the next call.
"""

import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, sys
from recurrax.allocator import retain_freed_memory

applied = retain_freed_memory() if sys.argv[1] == "retain" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def resident_kib():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS"))

size = 64 << 20
block = libc.malloc(size)
ctypes.memset(block, 1, size)
touched = resident_kib()
libc.free(block)
print(applied, touched - resident_kib())
"""


def released_kib(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, released = out.split()
    return applied, int(released)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_block_stays_resident_only_after_retain():
    applied, released_default = released_kib("default")
    assert applied == "None"
    assert released_default > 60 * 1024  # glibc's default: the 64 MiB block went back to the system
    applied, released_retained = released_kib("retain")
    assert applied == "True"
    assert released_retained < 4 * 1024  # kept: at most a few pages of other frees went back


ASK = r"""
import os, sys, warnings
import recurrax.allocator as allocator
if sys.argv[1] == "set-late":
    os.environ.update(allocator.ENVIRONMENT)
if sys.argv[1] == "after-jax":
    import jax.numpy as jnp
    jnp.ones(3).block_until_ready()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        print(allocator.retain_freed_memory(), any("after JAX's first computation" in str(w.message) for w in caught))
else:
    print(allocator.freed_memory_kept())
"""


def ask(mode: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", ASK, mode], capture_output=True, text=True, check=True,
                          env=env).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_kept_reads_the_environment_the_process_started_with_and_the_setting(monkeypatch):
    import os

    import recurrax.allocator as allocator

    base = {k: v for k, v in os.environ.items() if k not in allocator.ENVIRONMENT}
    assert ask("started", {**base, **allocator.ENVIRONMENT}) == "True"
    partial = dict(list(allocator.ENVIRONMENT.items())[:-1])
    assert ask("started", {**base, **partial}) == "False"  # one setting missing: glibc still trims and maps
    assert ask("set-late", base) == "False"  # set after the start: glibc never read it
    assert ask("after-jax", base) == "False True"  # too late to apply: a warning, nothing changed
    monkeypatch.setattr(allocator, "_retained", True)
    assert allocator.freed_memory_kept()
