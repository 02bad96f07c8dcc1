"""README stays true: the support matrix is the one the registry generates; the two commands are shown."""

from __future__ import annotations

from pathlib import Path

from ffsplit.split.adapters import support_matrix

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_support_matrix_is_generated() -> None:
    assert support_matrix() in README.read_text(encoding="utf-8"), "run `ffsplit support` and paste it into README"


def test_readme_shows_the_two_commands_the_makefile_and_ci_run() -> None:
    """README's install section starts with exactly `make demo` and `make test`, the Makefile defines both
    (demo creating the venv), and CI runs exactly `make test`."""
    import re

    root = README.parent
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Install and the two commands.*?```(?:\w+)?\n(.*?)```", text, re.S)
    assert block, "README has no code block under 'Install and the two commands'"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"], commands
    makefile = (root / "Makefile").read_text(encoding="utf-8")
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"
    assert re.search(r"^demo:.*\$\(VENV\)|^demo: install", makefile, re.M), "make demo must install first"
    ci = [line.strip() for line in (root / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test", ci
