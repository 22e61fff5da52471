"""Checkpoints written atomically and verified when read.

A checkpoint file is ``MAGIC``, one line of JSON (the header: format version, payload length,
SHA-256 of the payload, and free metadata such as the step), then the payload: the leaves of a
pytree serialised with ``equinox.tree_serialise_leaves``. Reading checks all three, so a
truncated or corrupted file gives a :class:`CheckpointError` naming the file, never a garbled
model.

:func:`save` writes the new checkpoint to ``<name>.new`` (a temporary file flushed to disk, then
renamed), keeps the current one as ``<name>.prev`` (a hard link, or a copy where the file system
has none) and renames ``<name>.new`` over ``<name>``: at every instant ``<name>`` is a complete
checkpoint, and a crash at any point leaves the newest complete one among ``<name>.new``,
``<name>`` and ``<name>.prev``, which :func:`load_latest` reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
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
        os.chmod(tmp, 0o666 & ~_umask())  # the mode any new file gets (mkstemp makes it private)
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
    new = _new_path(path)
    atomic_write_bytes(new, data)
    if path.exists():
        _keep_as(path, previous_path(path))
    os.replace(new, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _keep_as(path: Path, target: Path) -> None:
    """Make ``target`` a complete copy of ``path`` (a hard link where possible), replacing it atomically."""
    staged = target.with_name(target.name + ".tmp")
    staged.unlink(missing_ok=True)
    try:
        os.link(path, staged)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, staged)
    os.replace(staged, target)


def _new_path(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def previous_path(path: str | os.PathLike) -> Path:
    """Where :func:`save` keeps the checkpoint it replaced."""
    path = Path(path)
    return path.with_name(path.name + ".prev")


def candidates(path: str | os.PathLike) -> list[Path]:
    """The files a checkpoint saved at ``path`` may be in, newest first: ``.new`` (left by a crash
    before it was renamed into place), ``path`` itself, ``.prev``."""
    path = Path(path)
    return [_new_path(path), path, previous_path(path)]


def exists(path: str | os.PathLike) -> bool:
    """Whether any of the :func:`candidates` of ``path`` exists."""
    return any(candidate.exists() for candidate in candidates(path))


def load_latest(path: str | os.PathLike, like: Any) -> tuple[Any, dict, Path, list[str]]:
    """Load the newest readable checkpoint among the :func:`candidates` of ``path``.

    Returns ``(tree, metadata, file read, problems)``, ``problems`` naming each newer candidate that
    could not be read (truncated, corrupt); raises :class:`CheckpointError` when none can be read.
    """
    problems = []
    for candidate in candidates(path):
        if not candidate.exists():
            continue
        try:
            tree, metadata = load(candidate, like)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        return tree, metadata, candidate, problems
    if not problems:
        raise CheckpointError(f"no checkpoint at {path}")
    raise CheckpointError("no readable checkpoint: " + "; ".join(problems))


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata stored with a checkpoint (verifies the whole file)."""
    return _read(path)[0]["metadata"]


def load(path: str | os.PathLike, like: Any) -> tuple[Any, dict]:
    """Load a checkpoint into a pytree shaped like ``like``; returns ``(tree, metadata)``."""
    header, payload = _read(path)
    stream = io.BytesIO(payload)
    try:
        tree = eqx.tree_deserialise_leaves(stream, like)
    except Exception as error:  # shape/dtype mismatch: a checkpoint of another model
        raise CheckpointError(f"checkpoint {path} does not match this model: {error}") from error
    if stream.tell() != len(payload):  # the model's leaves are a prefix of the file's: another, larger model
        raise CheckpointError(f"checkpoint {path} does not match this model: it holds more parameters "
                              f"({len(payload) - stream.tell()} bytes left over)")
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
