"""Text corpora split into train / valid / test.

A :class:`Corpus` holds three strings.  It comes from

* :func:`builtin_corpus`: the English reference documentation that ships with
  CPython (``pydoc_data.topics``), available offline everywhere;
* :func:`load_text_file`: one UTF-8 file cut into three parts at line
  boundaries; or
* :func:`load_split_files`: three separate files (e.g. ``ptb.train.txt``,
  ``ptb.valid.txt``, ``ptb.test.txt``).

Files are decoded as UTF-8 (a leading byte-order mark is dropped) and line
endings are normalised to ``"\\n"``.  Problems raise :class:`CorpusError`.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass
from functools import lru_cache

MIN_SPLIT_CHARS = 32
"""Every split must hold at least this many characters (and at least one line)."""


class CorpusError(ValueError):
    """A corpus file is missing, empty, binary, or too small to split."""


@dataclass(frozen=True)
class Corpus:
    """A named text corpus with its three splits."""

    name: str
    train: str
    valid: str
    test: str


def _normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file; missing, empty and binary files raise :class:`CorpusError`."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise CorpusError(f"corpus file not found: {name!r}")
    if not os.path.isfile(name):
        raise CorpusError(f"corpus path is not a regular file: {name!r}")
    with open(name, "rb") as f:
        raw = f.read()
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise CorpusError(f"corpus file {name!r} looks binary: NUL byte at offset {nul}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"corpus file {name!r} is not UTF-8 text: undecodable byte at offset {exc.start}"
        ) from None
    text = _normalise(text.removeprefix("\ufeff"))
    if not text.strip():
        raise CorpusError(f"corpus file {name!r} is empty")
    return text


def split_text(
    text: str, split: tuple[float, float, float] = (0.9, 0.05, 0.05), name: str = "text"
) -> Corpus:
    """Cut ``text`` into train / valid / test by character fractions, at line boundaries.

    Each cut is placed at the line boundary (a position just after a newline,
    or the start/end of the text) nearest to the exact fractional position;
    ties go to the later boundary.  ``train + valid + test == text`` always.
    Raises :class:`CorpusError` if a split would hold fewer than
    :data:`MIN_SPLIT_CHARS` characters.
    """
    if len(split) != 3 or any(f <= 0 for f in split) or abs(sum(split) - 1.0) > 1e-9:
        raise ValueError(f"split must be three positive fractions summing to 1, got {split}")
    boundaries = [0]
    pos = text.find("\n")
    while pos >= 0:
        boundaries.append(pos + 1)
        pos = text.find("\n", pos + 1)
    if boundaries[-1] != len(text):
        boundaries.append(len(text))

    def nearest(target: float) -> int:
        j = bisect.bisect_left(boundaries, target)
        if j == len(boundaries):
            return boundaries[-1]
        if j > 0 and target - boundaries[j - 1] < boundaries[j] - target:
            return boundaries[j - 1]
        return boundaries[j]

    n = len(text)
    c1 = nearest(n * split[0])
    c2 = nearest(n * (split[0] + split[1]))
    parts = (text[:c1], text[c1:c2], text[c2:])
    names = ("train", "valid", "test")
    too_small = [(s, len(p)) for s, p in zip(names, parts) if len(p) < MIN_SPLIT_CHARS]
    if too_small:
        detail = ", ".join(f"{s} would get {k} characters" for s, k in too_small)
        if n >= 3 * MIN_SPLIT_CHARS:  # enough text, too few places to cut it
            raise CorpusError(
                f"corpus {name!r} has {n} characters but only {len(boundaries) - 1} line(s): the splits are cut at "
                f"line boundaries ({detail}); break the text into more lines"
            )
        raise CorpusError(
            f"corpus {name!r} ({n} characters, {len(boundaries) - 1} lines) is too small to split "
            f"{split} at line boundaries: {detail}; each split needs at least {MIN_SPLIT_CHARS}"
        )
    return Corpus(name, *parts)


def load_text_file(
    path: str | os.PathLike[str],
    split: tuple[float, float, float] = (0.9, 0.05, 0.05),
    name: str | None = None,
) -> Corpus:
    """Read one text file and cut it with :func:`split_text`; ``name`` defaults to its file name."""
    text = read_text(path)
    return split_text(text, split, name if name is not None else os.path.basename(os.fspath(path)))


def load_split_files(
    train: str | os.PathLike[str],
    valid: str | os.PathLike[str],
    test: str | os.PathLike[str],
    name: str | None = None,
) -> Corpus:
    """Read three files as the train / valid / test splits (each >= :data:`MIN_SPLIT_CHARS` chars)."""
    texts = [read_text(p) for p in (train, valid, test)]
    for label, path, text in zip(("train", "valid", "test"), (train, valid, test), texts):
        if len(text) < MIN_SPLIT_CHARS:
            raise CorpusError(
                f"{label} file {os.fspath(path)!r} has {len(text)} characters; "
                f"each split needs at least {MIN_SPLIT_CHARS}"
            )
    return Corpus(name if name is not None else os.path.basename(os.fspath(train)), *texts)


@lru_cache(maxsize=1)
def builtin_corpus() -> Corpus:
    """The CPython reference documentation bundled as ``pydoc_data.topics``.

    The topics are taken in sorted key order, tabs become four spaces, leading
    and trailing newlines of each topic are dropped, and topics are joined by
    one blank line; the text ends with a newline.  It is cut 90% / 5% / 5% by
    :func:`split_text`.  The text depends on the CPython release: on 3.11.7
    it has 79 topics, 465,048 characters (103 distinct), 11,452 lines and
    65,501 whitespace-separated words, split into 418,554 / 23,279 / 23,215
    characters.
    """
    from pydoc_data.topics import topics

    parts = [_normalise(topics[key]).replace("\t", "    ").strip("\n") for key in sorted(topics)]
    return split_text("\n\n".join(parts) + "\n", (0.9, 0.05, 0.05), "pydoc-topics")
