"""Corpora and their splits (recurrax.data.corpus)."""

from __future__ import annotations

import pytest

from recurrax.data.corpus import (
    MIN_SPLIT_CHARS,
    Corpus,
    CorpusError,
    builtin_corpus,
    load_split_files,
    load_text_file,
    split_text,
)


def _lines(n: int) -> str:
    return "".join(f"line {i} has some words in it\n" for i in range(n))


def test_builtin_corpus_matches_pydoc_topics() -> None:
    from pydoc_data.topics import topics

    corpus = builtin_corpus()
    assert isinstance(corpus, Corpus)
    assert corpus.name == "pydoc-topics"
    text = corpus.train + corpus.valid + corpus.test
    parts = [topics[k].replace("\t", "    ").strip("\n") for k in sorted(topics)]
    expected = "\n\n".join(parts) + "\n"
    assert text == expected.replace("\r\n", "\n")
    assert "\t" not in text
    n = len(text)
    assert n > 100_000
    assert abs(len(corpus.train) / n - 0.90) < 0.005
    assert abs(len(corpus.valid) / n - 0.05) < 0.005
    assert abs(len(corpus.test) / n - 0.05) < 0.005
    assert all(part.endswith("\n") for part in (corpus.train, corpus.valid, corpus.test))


def test_builtin_corpus_is_deterministic() -> None:
    a = builtin_corpus.__wrapped__()
    b = builtin_corpus.__wrapped__()
    assert a == b
    assert builtin_corpus() is builtin_corpus()


def test_split_covers_text_at_nearest_line_boundaries() -> None:
    text = _lines(1000)
    corpus = split_text(text, (0.8, 0.1, 0.1), name="toy")
    assert corpus.train + corpus.valid + corpus.test == text
    longest = max(len(line) + 1 for line in text.split("\n"))
    assert abs(len(corpus.train) - 0.8 * len(text)) <= longest / 2
    assert abs(len(corpus.train) + len(corpus.valid) - 0.9 * len(text)) <= longest / 2
    for part in (corpus.train, corpus.valid, corpus.test):
        assert part.endswith("\n")
    assert split_text(text, (0.8, 0.1, 0.1), name="toy") == corpus


def test_split_text_without_final_newline() -> None:
    text = _lines(200).rstrip("\n")
    corpus = split_text(text)
    assert corpus.train + corpus.valid + corpus.test == text
    assert corpus.train.endswith("\n") and corpus.valid.endswith("\n")


@pytest.mark.parametrize(
    "split", [(0.9, 0.1), (0.9, 0.05, 0.06), (1.0, 0.0, 0.0), (1.1, -0.05, -0.05)]
)
def test_bad_split_fractions(split) -> None:
    with pytest.raises(ValueError, match="split"):
        split_text(_lines(200), split)


def test_load_text_file(tmp_path) -> None:
    path = tmp_path / "book.txt"
    text = _lines(500)
    path.write_text(text, encoding="utf-8")
    corpus = load_text_file(path)
    assert corpus.name == "book.txt"
    assert corpus.train + corpus.valid + corpus.test == text
    assert load_text_file(str(path), name="b").name == "b"


def test_line_endings_and_bom_are_normalised(tmp_path) -> None:
    path = tmp_path / "dos.txt"
    text = _lines(300)
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    corpus = load_text_file(path)
    assert corpus.train + corpus.valid + corpus.test == text


def test_load_split_files(tmp_path) -> None:
    paths = []
    for name, n in (("ptb.train.txt", 100), ("ptb.valid.txt", 10), ("ptb.test.txt", 12)):
        p = tmp_path / name
        p.write_text(_lines(n), encoding="utf-8")
        paths.append(p)
    corpus = load_split_files(*paths)
    assert corpus.name == "ptb.train.txt"
    assert (corpus.train, corpus.valid, corpus.test) == (_lines(100), _lines(10), _lines(12))
    small = tmp_path / "tiny.txt"
    small.write_text("a b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="valid file .*tiny.txt"):
        load_split_files(paths[0], small, paths[2])
    with pytest.raises(CorpusError, match="not found.*nope.txt"):
        load_split_files(paths[0], paths[1], tmp_path / "nope.txt")


def test_error_cases(tmp_path) -> None:
    assert issubclass(CorpusError, ValueError)
    with pytest.raises(CorpusError, match="not found.*missing.txt"):
        load_text_file(tmp_path / "missing.txt")
    with pytest.raises(CorpusError, match="not a regular file"):
        load_text_file(tmp_path)
    cases = {
        "empty.txt": (b"", "empty"),
        "blank.txt": (b"  \n\n \t\n", "empty"),
        "nul.bin": (b"text" * 50 + b"\x00\x01" + b"more\n" * 50, "binary: NUL byte at offset 200"),
        "latin1.txt": ("caf\u00e9\n".encode("latin-1") * 100, "not UTF-8 text"),
        "small.txt": (b"just a few words\nand lines\n", "too small"),
        "oneline.txt": (b"x" * 10_000, "has 10000 characters but only 1 line.*break the text into more lines"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CorpusError, match=message) as info:
            load_text_file(path)
        assert name in str(info.value)


def test_minimum_split_size_is_enforced_exactly() -> None:
    line = "x" * (MIN_SPLIT_CHARS - 1) + "\n"  # one line is exactly the minimum
    split_text(line * 3, (1 / 3, 1 / 3, 1 / 3))
    with pytest.raises(CorpusError, match="valid would get 0"):
        split_text(line * 3, (0.9, 0.05, 0.05))
