"""DistilBERT: every model type the adapter lists, exported exactly for every task in its row."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_exact_export, export_cases


@pytest.mark.parametrize(("model_type", "task"), export_cases("distilbert"))
def test_exact_export(model_type: str, task: str, family_root: Path, tmp_path: Path, cache_dir: Path) -> None:
    assert_exact_export(model_type, task, family_root, tmp_path)
