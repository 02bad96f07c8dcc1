"""Assertions for users' own test suites (pytest or unittest): an artifact still meets its parity.

    from ffsplit.testing import assert_parity, assert_golden

    def test_model_parity():
        assert_parity("out/minilm", {"cosine_min": 0.99})   # three-way, needs torch and the source model

    def test_model_golden():
        assert_golden("out/minilm")                          # the runtime alone, no torch, no source model
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ffsplit.manifest import GoldenReplay, ParityReport


def assert_parity(folder: str | Path, limits: Mapping[str, float] | None = None, *,
                  source: str | Path | None = None, eval_size: int | None = None) -> ParityReport:
    """``ffsplit check``: the separation guard and the three-way parity, with ``limits`` (metric -> value,
    as ``--limit``) replacing the export's limits on what compression may cost. AssertionError naming every
    failure; returns the report."""
    from ffsplit import api

    report = api.check(folder, eval_size=eval_size, source=source, limits=dict(limits or {}))
    assert report.passed, f"{folder}: " + "; ".join(report.failures())
    return report


def assert_golden(folder: str | Path, *, tolerance: float | None = None) -> GoldenReplay:
    """``ffsplit check --golden``: the outputs saved at export, reproduced by the target's runtime."""
    from ffsplit.api import check_golden

    result = check_golden(folder, tolerance=tolerance)
    assert result.passed, f"{folder}: {result.failure()}"
    return result
