"""README stays true: the support matrix is the one the registry generates; the two commands are shown."""

from __future__ import annotations

from pathlib import Path

from ffsplit.split.adapters import support_matrix

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_support_matrix_is_generated() -> None:
    assert support_matrix() in README.read_text(encoding="utf-8"), "run `ffsplit support` and paste it into README"


def test_readme_shows_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
