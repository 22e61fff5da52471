"""Checkpoints written atomically and verified when read.

A checkpoint file is ``MAGIC``, one line of JSON (the header: format version, payload length,
SHA-256 of the payload, and free metadata such as the step), then the payload: the leaves of a
pytree serialised with ``equinox.tree_serialise_leaves``. Reading checks all three, so a
truncated or corrupted file gives a :class:`CheckpointError` naming the file, never a garbled
model.

:func:`save` writes to a temporary file in the same directory, flushes it to disk, moves the
current checkpoint to ``<name>.prev`` and renames the new one into place, so at every instant the
directory holds a complete checkpoint, and the previous good one survives a crash or a corrupt
write.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx

MAGIC = b"RECURRAX-CHECKPOINT\n"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or from another model."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(path: str | os.PathLike, tree: Any, metadata: dict | None = None) -> None:
    """Save the array leaves of ``tree`` with ``metadata``; the previous file is kept as ``.prev``."""
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    payload = buffer.getvalue()
    header = {"version": VERSION, "length": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
              "metadata": metadata or {}}
    data = MAGIC + json.dumps(header).encode() + b"\n" + payload
    path = Path(path)
    tmp = path.with_name(path.name + ".new")
    atomic_write_bytes(tmp, data)
    if path.exists():
        os.replace(path, previous_path(path))
    os.replace(tmp, path)


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save` keeps the checkpoint it replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored with a checkpoint (verifies the whole file)."""
    return _read(path)[0]["metadata"]


def load(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Load a checkpoint into a pytree shaped like ``like``; returns ``(tree, metadata)``."""
    header, payload = _read(path)
    try:
        tree = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as error:  # shape/dtype mismatch: a checkpoint of another model
        raise CheckpointError(f"checkpoint {path} does not match this model: {error}") from error
    return tree, header["metadata"]


def _read(path: str | os.PathLike) -> tuple[dict, bytes]:
    path = Path(path)
    hint = f" (the previous checkpoint is kept at {previous_path(path)})" if previous_path(path).exists() else ""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a recurrax checkpoint{hint}")
    line_end = data.find(b"\n", len(MAGIC))
    try:
        header = json.loads(data[len(MAGIC) : line_end])
        length, digest = header["length"], header["sha256"]
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupt header{hint}") from error
    payload = data[line_end + 1 :]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(payload)} of {length} bytes{hint}")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its checksum does not match{hint}")
    return header, payload
