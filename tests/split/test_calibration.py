"""Calibration and evaluation text: deterministic, disjoint, user files validated."""

from __future__ import annotations

from pathlib import Path

import pytest

from ffsplit.errors import UsageError
from ffsplit.split.calibration import bundled_corpus, calibration_texts, evaluation_texts


def test_bundled_sets_are_disjoint_and_large_enough() -> None:
    calib, evaluation = bundled_corpus()
    assert len(calib) >= 512 and len(evaluation) >= 256
    assert not {t.text for t in calib} & {t.text for t in evaluation}
    assert len({t.source for t in evaluation[:256]}) >= 50  # many topics in the first texts


def test_bundled_text_is_deterministic() -> None:
    first = calibration_texts(limit=100)
    bundled_corpus.cache_clear()
    assert calibration_texts(limit=100) == first
    assert [t.text for t in evaluation_texts(10)] == [t.text for t in evaluation_texts(10)]


def test_user_file_one_text_per_line(tmp_path: Path) -> None:
    f = tmp_path / "calib.txt"
    f.write_text("first text\n\n  second text  \nthird\n", encoding="utf-8")
    assert calibration_texts(f) == ["first text", "second text", "third"]
    assert calibration_texts(f, limit=2) == ["first text", "second text"]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"\n  \n", "is empty"), (b"caf\xe9\n", "not UTF-8"), (b"\x00\x01\x02", "is binary")],
)
def test_bad_user_file(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "calib.txt"
    f.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        calibration_texts(f)


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        calibration_texts(tmp_path / "nope.txt")
