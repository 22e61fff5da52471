"""The native loops built for AVX2 (no AVX-512), against the plain scan.

On a processor with AVX-512 the loops' products use 16-number vectors; on one with AVX2 and FMA
only, 8-number vectors in blocks of at most six rows (loops.h). This machine's own build is
tested by test_native.py and test_native_cells.py; here a second Python process builds the loops
with ``RECURRAX_NATIVE_FLAGS=-mno-avx512f`` (the AVX2 code on a processor that has AVX-512 too)
and checks each cell's layer (LinearRecurrence's too; with episode starts), outputs and gradients, against the plain
scan: a batch of five (one thread, the loops then reading their input products from a product over
all steps) and of sixteen (two threads of eight rows: a block of six and one of two).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import recurrax.native as native

CHECK = """
from concurrent.futures import ThreadPoolExecutor
import jax, jax.numpy as jnp
import recurrax, recurrax.native as native
from native_checks import assert_close, assert_native_equals_plain, native_and_plain

assert "-mno-avx512f" in native._flags()
# (cell, its library of loops, its forward loop's name, its hidden size: LinearRecurrence's 27 runs
# forward as three vectors and 3 numbers one by one, backward as a block of two vectors, a vector and 3)
cells = [(recurrax.Elman, "elman", "elman", 32), (recurrax.LSTM, "lstm", "lstm", 32), (recurrax.GRU, "gru", "gru", 32),
         (recurrax.MGU, "forget_gate", "mgu", 32), (recurrax.LinearRecurrence, "linear", "linear", 27)]
libraries = [library for _, library, _, _ in cells]
with ThreadPoolExecutor(len(libraries)) as pool:  # compiled side by side
    assert all(pool.map(native.available, libraries)), [native.build_error(library) for library in libraries]
for cell_class, library, forward_loop, hidden in cells:
    cell = cell_class(24, hidden, key=jax.random.key(0))
    for batch in (5, 16):
        xs = jax.random.normal(jax.random.key(batch), (batch, 7, 24))
        starts = jax.random.bernoulli(jax.random.key(batch + 1), 0.3, (batch, 7))  # packed episodes
        layer = lambda c, x: jax.vmap(lambda s, b: recurrax.scan(c, s, starts=b)[0])(x, starts)
        assert_close(*native_and_plain(layer, cell, xs))
        assert_native_equals_plain(lambda c, x: jnp.sum(layer(c, x) ** 2), cell, xs, loops=(forward_loop,))
print("checked")
"""


@pytest.mark.skipif(native._why_not_buildable() is not None, reason=f"no native loops: {native._why_not_buildable()}")
def test_the_avx2_loops_equal_the_plain_scan():
    tests = Path(__file__).parent
    environment = dict(os.environ, RECURRAX_NATIVE_FLAGS="-mno-avx512f", JAX_PLATFORMS="cpu",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "-c", CHECK], env=environment, capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "checked" in result.stdout
