"""Tokenisation and vocabularies for character- and word-level language models.

Two token levels are supported:

* ``"char"``: every character of the text is a token (newlines included).  The
  vocabulary is the sorted set of characters; there is no unknown token and no
  end-of-sentence token, so encoding a character the vocabulary lacks is an
  error (:class:`UnknownTokenError`) unless asked otherwise.
* ``"word"``: the text is split into lines, each line into whitespace-separated
  words, and every line ends in ``"<eos>"`` (the Penn-Treebank convention used
  by ``ptb.train.txt``).  Words the vocabulary lacks map to ``"<unk>"``.  A
  literal ``<unk>`` or ``<eos>`` in the text *is* that special token, so
  Penn-Treebank text loads as it is.

Decoding inverts encoding up to whitespace: characters are joined with ``""``;
words are joined with single spaces and ``"<eos>"`` is shown as a newline.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Level = Literal["char", "word"]
Unknown = Literal["error", "unk", "skip"]

UNK = "<unk>"
EOS = "<eos>"
LEVELS: tuple[str, ...] = ("char", "word")

_FORMAT = "recurrax.vocabulary"
_VERSION = 1


class UnknownTokenError(ValueError):
    """Raised when text contains tokens the vocabulary lacks and no fallback applies.

    ``unknown`` holds the distinct missing tokens, sorted.
    """

    def __init__(self, unknown: Sequence[str], level: str) -> None:
        self.unknown = tuple(sorted(set(unknown)))
        kind = "character" if level == "char" else "token"
        shown = ", ".join(repr(t) for t in self.unknown[:20])
        more = f" (and {len(self.unknown) - 20} more)" if len(self.unknown) > 20 else ""
        super().__init__(
            f"{len(self.unknown)} {kind}(s) not in the vocabulary: {shown}{more}"
        )


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be 'char' or 'word', got {level!r}")


def tokenize(text: str, level: Level, *, eos: bool = True) -> list[str]:
    """Split ``text`` into tokens.

    Char level: ``list(text)``.  Word level: the text is cut into lines at
    ``"\\n"`` (a final newline does not start an extra line), each line is split
    on whitespace, and each line is followed by ``"<eos>"``.  Blank lines give
    a lone ``"<eos>"``.  With ``eos=False`` no ``"<eos>"`` is appended after the
    last line (useful for a prompt that should be continued mid-sentence).
    """
    _check_level(level)
    if level == "char":
        return list(text)
    lines = text.split("\n")
    ended = lines[-1] == ""
    if ended:
        lines.pop()
    tokens: list[str] = []
    for i, line in enumerate(lines):
        tokens.extend(line.split())
        if eos or ended or i < len(lines) - 1:
            tokens.append(EOS)
    return tokens


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of distinct tokens; a token's id is its position.

    ``unk`` and ``eos`` are required (and must be in ``tokens``) at word level
    and must be ``None`` at char level, where every token is one character.
    """

    tokens: tuple[str, ...]
    level: Level
    unk: str | None = None
    eos: str | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_level(self.level)
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if not tokens:
            raise ValueError("a vocabulary needs at least one token")
        if not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("vocabulary tokens must be non-empty strings")
        index = {t: i for i, t in enumerate(tokens)}
        if len(index) != len(tokens):
            dup = sorted(t for t, n in Counter(tokens).items() if n > 1)
            raise ValueError(f"duplicate vocabulary tokens: {dup[:10]}")
        if self.level == "char":
            if self.unk is not None or self.eos is not None:
                raise ValueError("a char-level vocabulary has no unk or eos token")
            long = [t for t in tokens if len(t) != 1]
            if long:
                raise ValueError(f"char-level tokens must be single characters: {long[:10]}")
        else:
            for role, tok in (("unk", self.unk), ("eos", self.eos)):
                if tok is None or tok not in index:
                    raise ValueError(f"a word-level vocabulary needs its {role} token in tokens")
        object.__setattr__(self, "_index", index)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    @property
    def unk_id(self) -> int | None:
        """Id of the unknown token, or ``None`` at char level."""
        return None if self.unk is None else self._index[self.unk]

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sentence token, or ``None`` at char level."""
        return None if self.eos is None else self._index[self.eos]

    def encode(
        self,
        text_or_tokens: str | Iterable[str],
        *,
        unknown: Unknown | None = None,
        eos: bool = True,
    ) -> np.ndarray:
        """Map text (tokenised at this level) or a token sequence to int32 ids.

        ``unknown`` says what to do with tokens the vocabulary lacks:
        ``"unk"`` maps them to the unknown token (needs one), ``"skip"`` drops
        them, ``"error"`` raises :class:`UnknownTokenError` listing them.  The
        default is ``"unk"`` at word level and ``"error"`` at char level.
        ``eos`` is passed to :func:`tokenize` when ``text_or_tokens`` is a string.
        """
        if unknown is None:
            unknown = "unk" if self.unk is not None else "error"
        if unknown not in ("error", "unk", "skip"):
            raise ValueError(f"unknown must be 'error', 'unk' or 'skip', got {unknown!r}")
        if unknown == "unk" and self.unk is None:
            raise ValueError("this vocabulary has no unk token; use unknown='error' or 'skip'")
        if isinstance(text_or_tokens, str):
            tokens = tokenize(text_or_tokens, self.level, eos=eos)
        else:
            tokens = list(text_or_tokens)
        index = self._index
        ids = np.fromiter((index.get(t, -1) for t in tokens), dtype=np.int32, count=len(tokens))
        missing = ids < 0
        if not missing.any():
            return ids
        if unknown == "error":
            raise UnknownTokenError([tokens[i] for i in np.flatnonzero(missing)], self.level)
        if unknown == "skip":
            return ids[~missing]
        ids[missing] = self._index[self.unk]  # type: ignore[index]
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Map ids back to text: chars joined with ``""``, words with ``" "``, eos as newline."""
        arr = np.asarray(ids)
        if arr.ndim != 1:
            raise ValueError(f"decode expects a 1-D id sequence, got shape {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"decode expects integer ids, got dtype {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= len(self.tokens)):
            raise ValueError(f"ids out of range for a vocabulary of {len(self.tokens)} tokens")
        tokens = [self.tokens[i] for i in arr.tolist()]
        if self.level == "char":
            return "".join(tokens)
        pieces: list[str] = []
        for tok in tokens:
            if tok == self.eos:
                pieces.append("\n")
            else:
                if pieces and pieces[-1] != "\n":
                    pieces.append(" ")
                pieces.append(tok)
        return "".join(pieces)

    def to_json(self) -> str:
        """Serialise to a JSON string (see :meth:`from_json`)."""
        return json.dumps(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "level": self.level,
                "unk": self.unk,
                "eos": self.eos,
                "tokens": list(self.tokens),
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, data: str) -> Vocabulary:
        """Parse :meth:`to_json` output; raises ``ValueError`` if it is malformed."""
        try:
            obj = json.loads(data)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise ValueError(f"not a {_FORMAT} document")
        if obj.get("version") != _VERSION:
            raise ValueError(f"unsupported vocabulary version {obj.get('version')!r}")
        tokens = obj.get("tokens")
        if not isinstance(tokens, list):
            raise ValueError("'tokens' must be a list")
        return cls(tuple(tokens), obj.get("level"), obj.get("unk"), obj.get("eos"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON atomically: a temp file in the same directory, then replace."""
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".vocab-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a file written by :meth:`save`.

        Raises ``FileNotFoundError`` if it is missing and ``ValueError`` naming
        the file if it is corrupt or truncated.
        """
        path = os.fspath(path)
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return cls.from_json(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, TypeError) as exc:
            raise ValueError(f"corrupt vocabulary file {path!r}: {exc}") from None


def build_vocabulary(text: str, level: Level = "char", min_count: int = 1) -> Vocabulary:
    """Build a vocabulary from training text.

    Char level: the sorted set of characters (``min_count`` must be 1, since
    there is no unknown character).  Word level: ``["<eos>", "<unk>"]``
    followed by the words seen at least ``min_count`` times, most frequent
    first (ties in code-point order); rarer words will encode as ``"<unk>"``.
    A literal ``<unk>``/``<eos>`` in the text counts as the special token.
    """
    _check_level(level)
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if level == "char":
        if min_count != 1:
            raise ValueError("min_count applies to word level only (char level has no unk)")
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        return Vocabulary(tuple(sorted(set(text))), "char")
    counts = Counter(tokenize(text, "word"))
    if not counts:
        raise ValueError("cannot build a vocabulary from empty text")
    counts.pop(EOS, None)
    counts.pop(UNK, None)
    words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
    return Vocabulary((EOS, UNK, *words), "word", unk=UNK, eos=EOS)
