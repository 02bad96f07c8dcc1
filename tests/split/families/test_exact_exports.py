"""Every registered family, exported exactly: its first model type for every task in its row, every other
model type it lists for its hardest task. A new adapter is covered by being registered; a family's own file
holds only what is particular to it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_exact_export, export_cases

from ffsplit.split.adapters import registry

# exported by the family's own file instead, through the CLI (then checked and benchmarked there)
ELSEWHERE = {("gpt2", "causal-lm-with-past")}
CASES = [(family, model_type, task) for family in sorted(registry())
         for model_type, task in export_cases(family) if (model_type, task) not in ELSEWHERE]


@pytest.mark.parametrize(("family", "model_type", "task"), CASES, ids=[f"{m}-{t}" for _, m, t in CASES])
def test_exact_export(family: str, model_type: str, task: str, family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    assert_exact_export(model_type, task, family_root, tmp_path)
