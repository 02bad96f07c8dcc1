"""Manifest: the typed view of a schema-checked manifest.json, and the refusals of one that is not."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from ffsplit.errors import UsageError
from ffsplit.manifest import _LAYER_FIELDS, _PARAMS_FIELDS, FORMAT, LAYER, LayerPlan, Manifest, Params


def test_typed_view_reads_what_the_file_says(tiny_none_artifact: Path) -> None:
    raw = json.loads((tiny_none_artifact / "manifest.json").read_text())
    m = Manifest.from_json(raw)
    assert m.task == raw["task"] == "feature-extraction" and m.target_name == "cpu"
    assert m.source.sha256 == raw["source"]["sha256"] and m.source.max_positions == raw["source"]["max_positions"]
    assert m.limits == raw["checks"]["limits"] and m.exact is True
    assert m.max_length == raw["calibration"]["max_length"] and m.evaluation.texts == raw["evaluation"]["texts"]
    assert m.evaluation.bundled and [p.to_json() for p in m.layers] == raw["layers"] and m.files == raw["files"]
    assert dataclasses.asdict(m.params) == raw["params"]
    assert (m.build.status, m.build.target, m.build.deferred) == ("built", "cpu", False)
    assert m.to_json() == raw and dict(m) == raw and m == raw  # nothing lost: a Mapping over the JSON
    # an artifact from before build-later has no build record: it was built at export
    old = Manifest.from_json({k: v for k, v in raw.items() if k != "build"})
    assert (old.build.status, old.build.target) == ("built", "cpu")


@pytest.mark.parametrize(("change", "says"), [
    (lambda m: m.update(format=FORMAT - 1), "format 1, made by an older ffsplit"),
    (lambda m: m.update(task="translation"), "manifest.task 'translation' is not one of"),
    (lambda m: m.update(build={"status": "maybe", "target": "cpu"}), "manifest.build.status 'maybe'"),
    (lambda m: m.update(build={"status": "built", "target": "../x"}), "manifest.build.target '../x' is malformed"),
])
def test_a_manifest_off_the_schema_is_refused(tiny_none_artifact: Path, change: object, says: str) -> None:
    raw = json.loads((tiny_none_artifact / "manifest.json").read_text())
    change(raw)  # type: ignore[operator]
    with pytest.raises(UsageError, match=f"^m.json .*{says.replace('(', '.').replace(')', '.')}"):
        Manifest.from_json(raw, where="m.json")


def test_the_layer_schema_bounds_every_field_of_the_typed_row_and_no_other(tiny_none_artifact: Path) -> None:
    """One record: a field added to LayerPlan without bounds (or bounds without a field) fails here; the fields
    with a default are the ones a row may leave out."""
    assert set(_LAYER_FIELDS) == {f.name for f in fields(LayerPlan)}
    assert set(_PARAMS_FIELDS) == {f.name for f in fields(Params)}
    row = json.loads((tiny_none_artifact / "manifest.json").read_text())["layers"][0]
    for f in fields(LayerPlan):
        errors: list[str] = []
        LAYER({k: v for k, v in row.items() if k != f.name}, "row", errors)
        assert bool(errors) == (f.default is MISSING), (f.name, errors)
    assert LayerPlan.from_json(row).to_json() == row
