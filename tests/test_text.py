"""Tokenisation and vocabularies (recurrax.lm.text)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recurrax.lm.text import (
    EOS,
    UNK,
    UnknownTokenError,
    Vocabulary,
    build_vocabulary,
    tokenize,
)

PTB_SAMPLE = (
    " aer banknote berlitz calloway centrust cluett fromstein gitano guterman \n"
    " pierre <unk> N years old will join the board as a nonexecutive director nov. N \n"
    " mr. <unk> is chairman of <unk> n.v. the dutch publishing group \n"
)


def test_tokenize_word_level_lines_end_in_eos() -> None:
    assert tokenize("a b\nc\n", "word") == ["a", "b", EOS, "c", EOS]
    assert tokenize("a b\nc", "word") == ["a", "b", EOS, "c", EOS]
    assert tokenize("a\n\nb\n", "word") == ["a", EOS, EOS, "b", EOS]
    assert tokenize("  a \t b  \r\n", "word") == ["a", "b", EOS]
    assert tokenize("", "word") == []


def test_tokenize_word_level_without_final_eos() -> None:
    assert tokenize("the cat", "word", eos=False) == ["the", "cat"]
    assert tokenize("a\nthe cat", "word", eos=False) == ["a", EOS, "the", "cat"]
    # A text that ends in a newline has a complete last line either way.
    assert tokenize("the cat\n", "word", eos=False) == ["the", "cat", EOS]


def test_tokenize_char_level_and_bad_level() -> None:
    assert tokenize("ab\n c", "char") == ["a", "b", "\n", " ", "c"]
    with pytest.raises(ValueError, match="level"):
        tokenize("x", "byte")  # type: ignore[arg-type]


def test_char_vocabulary_is_sorted_set_and_round_trips() -> None:
    text = "hello world\nhi"
    vocab = build_vocabulary(text, "char")
    assert vocab.tokens == tuple(sorted(set(text)))
    assert len(vocab) == len(set(text))
    assert vocab.unk is None and vocab.eos is None
    ids = vocab.encode(text)
    assert ids.dtype == np.int32
    assert [vocab.tokens[i] for i in ids] == list(text)
    assert vocab.decode(ids) == text


def test_char_vocabulary_unknown_characters() -> None:
    vocab = build_vocabulary("abc", "char")
    with pytest.raises(UnknownTokenError) as info:
        vocab.encode("abxzx")
    assert isinstance(info.value, ValueError)
    assert info.value.unknown == ("x", "z")
    assert "'x'" in str(info.value) and "'z'" in str(info.value)
    np.testing.assert_array_equal(vocab.encode("abxzc", unknown="skip"), [0, 1, 2])
    with pytest.raises(ValueError, match="no unk token"):
        vocab.encode("ab", unknown="unk")
    with pytest.raises(ValueError, match="unknown must be"):
        vocab.encode("ab", unknown="drop")  # type: ignore[arg-type]


def test_word_vocabulary_counts_and_min_count() -> None:
    text = "b a b\nc b a\nd\n"
    vocab = build_vocabulary(text, "word")
    # specials first, then by descending frequency, ties in code-point order
    assert vocab.tokens == (EOS, UNK, "b", "a", "c", "d")
    assert vocab.eos_id == 0 and vocab.unk_id == 1
    rare = build_vocabulary(text, "word", min_count=2)
    assert rare.tokens == (EOS, UNK, "b", "a")
    ids = rare.encode("d b zebra\n")
    assert rare.decode(ids) == "<unk> b <unk>\n"
    with pytest.raises(UnknownTokenError):
        rare.encode("zebra", unknown="error")
    with pytest.raises(ValueError, match="min_count"):
        build_vocabulary(text, "word", min_count=0)
    with pytest.raises(ValueError, match="min_count"):
        build_vocabulary(text, "char", min_count=2)
    with pytest.raises(ValueError, match="empty"):
        build_vocabulary("", "word")
    with pytest.raises(ValueError, match="empty"):
        build_vocabulary("", "char")


def test_ptb_form_text_loads_as_is() -> None:
    vocab = build_vocabulary(PTB_SAMPLE, "word")
    assert vocab.tokens.count(UNK) == 1
    ids = vocab.encode(PTB_SAMPLE)
    tokens = tokenize(PTB_SAMPLE, "word")
    assert len(ids) == len(tokens) == sum(len(line.split()) + 1 for line in PTB_SAMPLE.splitlines())
    # the literal <unk> of the text is the vocabulary's unk token
    assert int((ids == vocab.unk_id).sum()) == PTB_SAMPLE.count("<unk>") == 3
    assert int((ids == vocab.eos_id).sum()) == 3
    expected = "".join(" ".join(line.split()) + "\n" for line in PTB_SAMPLE.splitlines())
    assert vocab.decode(ids) == expected
    assert "<unk> N years" in vocab.decode(ids)


def test_encode_token_list_and_decode_errors() -> None:
    vocab = build_vocabulary("x y\n", "word")
    np.testing.assert_array_equal(
        vocab.encode(["x", EOS, "nope"]), [vocab.tokens.index("x"), vocab.eos_id, vocab.unk_id]
    )
    x, y = vocab.tokens.index("x"), vocab.tokens.index("y")
    assert vocab.encode("x y", eos=False).tolist() == [x, y]
    with pytest.raises(ValueError, match="out of range"):
        vocab.decode([0, len(vocab)])
    with pytest.raises(ValueError, match="out of range"):
        vocab.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        vocab.decode([[0, 1]])
    assert vocab.decode([]) == ""


def test_vocabulary_validation() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(("a", "b", "a"), "char")
    with pytest.raises(ValueError, match="single characters"):
        Vocabulary(("a", "bc"), "char")
    with pytest.raises(ValueError, match="unk"):
        Vocabulary(("a", EOS), "word", unk=UNK, eos=EOS)
    with pytest.raises(ValueError, match="no unk or eos"):
        Vocabulary(("a",), "char", unk="a")
    with pytest.raises(ValueError, match="at least one"):
        Vocabulary((), "char")
    vocab = Vocabulary(["b", "a"], "char")  # a list is accepted and stored as a tuple
    assert vocab.tokens == ("b", "a") and "a" in vocab and "c" not in vocab
    assert hash(vocab) == hash(Vocabulary(("b", "a"), "char"))


@pytest.mark.parametrize("level", ["char", "word"])
def test_save_load_round_trip(tmp_path, level: str) -> None:
    vocab = build_vocabulary(PTB_SAMPLE + "naïve café — ok\n", level)  # type: ignore[arg-type]
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.encode(PTB_SAMPLE).tolist() == vocab.encode(PTB_SAMPLE).tolist()
    assert Vocabulary.from_json(vocab.to_json()) == vocab
    assert os.listdir(tmp_path) == ["vocab.json"]  # no temp file left behind
    # saving again replaces the file
    other = build_vocabulary("zz\n", level)  # type: ignore[arg-type]
    other.save(str(path))
    assert Vocabulary.load(str(path)) == other


def test_save_is_atomic_when_replace_fails(tmp_path, monkeypatch) -> None:
    path = tmp_path / "vocab.json"
    original = build_vocabulary("abc", "char")
    original.save(path)
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        build_vocabulary("xyz", "char").save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["vocab.json"]


def test_load_corrupt_files_name_the_file(tmp_path) -> None:
    good = build_vocabulary(PTB_SAMPLE, "word").to_json()
    cases = {
        "truncated.json": good[: len(good) // 2].encode(),
        "garbage.json": b"\xff\xfe\x00garbage",
        "empty.json": b"",
        "wrong.json": json.dumps({"format": "something-else"}).encode(),
        "badtokens.json": json.dumps(
            {
                "format": "recurrax.vocabulary",
                "version": 1,
                "level": "word",
                "unk": UNK,
                "eos": EOS,
                "tokens": "abc",
            }
        ).encode(),
        "badversion.json": good.replace('"version": 1', '"version": 99').encode(),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError, match="corrupt vocabulary file") as info:
            Vocabulary.load(path)
        assert name in str(info.value)
    with pytest.raises(FileNotFoundError):
        Vocabulary.load(tmp_path / "missing.json")


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="ab c\n\té", min_size=1, max_size=60))
def test_round_trip_property(text: str) -> None:
    chars = build_vocabulary(text, "char")
    assert chars.decode(chars.encode(text)) == text
    words = build_vocabulary(text, "word")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    expected = "".join(" ".join(line.split()) + "\n" for line in lines)
    assert words.decode(words.encode(text)) == expected
