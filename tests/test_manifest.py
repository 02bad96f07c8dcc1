"""Manifest: the typed record of an export, written once, and the refusals of a manifest.json that departs from
its schema."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

import ffsplit.manifest as manifest_module
from ffsplit.errors import UsageError
from ffsplit.manifest import FORMAT, LayerPlan, Manifest
from ffsplit.schema import record_check


def test_typed_view_reads_what_the_file_says(tiny_none_artifact: Path) -> None:
    raw = json.loads((tiny_none_artifact / "manifest.json").read_text())
    m = Manifest.from_json(raw)
    assert m.task == raw["task"] == "feature-extraction" and m.target_name == "cpu"
    assert m.source.sha256 == raw["source"]["sha256"] and m.source.max_positions == raw["source"]["max_positions"]
    assert m.limits == raw["checks"]["limits"] and m.exact is True
    assert m.max_length == raw["calibration"]["max_length"] and m.evaluation.texts == raw["evaluation"]["texts"]
    assert m.evaluation.bundled and [p.to_json() for p in m.layers] == raw["layers"] and m.files == raw["files"]
    assert m.params.to_json() == raw["params"] and m.recipe.light_recipe == raw["recipe"]["light"]["recipe"]
    assert (m.built.status, m.built.target, m.built.deferred) == ("built", "cpu", False)
    assert m.exporter is not None and m.exporter.name == raw["exporter"]["name"]
    assert m.parity is not None and m.parity.passed and m.parity.comparisons["fidelity"].passed
    assert m.separation is not None and m.separation.passed and m.run is not None and m.run.timings
    assert [p.name for p in m.graph_passes] == [p["name"] for p in raw["graph_passes"]]
    assert m.to_json() == raw  # written once from the record: read back, nothing lost or added
    assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


@pytest.mark.parametrize(("change", "says"), [
    (lambda m: m.update(format=FORMAT - 1), f"format {FORMAT - 1}, made by an older ffsplit"),
    (lambda m: m.update(task="translation"), "manifest.task 'translation' is not one of"),
    (lambda m: m.update(build={"status": "maybe", "target": "cpu"}), "manifest.build.status 'maybe'"),
    (lambda m: m.update(build={"status": "built", "target": "../x"}), "manifest.build.target '../x' is malformed"),
    (lambda m: m.pop("parity"), "manifest.parity is missing"),
    (lambda m: m["layers"][0].pop("heavy"), r"manifest.layers\[0\].heavy is missing"),
    (lambda m: m["parity"]["comparisons"]["fidelity"].update(passed="yes"),
     "manifest.parity.comparisons.fidelity.passed must be true or false"),
    (lambda m: m["run"]["memory"].update(per_stage=1), "manifest.run.memory.per_stage must be true or false"),
])
def test_a_manifest_off_the_schema_is_refused(tiny_none_artifact: Path, change: object, says: str) -> None:
    raw = json.loads((tiny_none_artifact / "manifest.json").read_text())
    change(raw)  # type: ignore[operator]
    with pytest.raises(UsageError, match=f"^m.json .*{says.replace('(', '.').replace(')', '.')}"):
        Manifest.from_json(raw, where="m.json")


RECORDS = [getattr(manifest_module, n) for n in manifest_module.__all__
           if is_dataclass(getattr(manifest_module, n)) and isinstance(getattr(manifest_module, n), type)]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.__name__)
def test_every_record_field_carries_its_bounds(record: type) -> None:
    """One definition per section: a field added to a record without bounds fails here (and at import)."""
    assert record_check(record) is not None
    assert all("check" in f.metadata for f in fields(record)), record.__name__


def test_a_layer_row_may_leave_out_exactly_the_fields_with_a_default(tiny_none_artifact: Path) -> None:
    row = json.loads((tiny_none_artifact / "manifest.json").read_text())["layers"][0]
    for f in fields(LayerPlan):
        errors: list[str] = []
        LayerPlan.check()({k: v for k, v in row.items() if k != f.name}, "row", errors)
        assert bool(errors) == f.metadata["required"], (f.name, errors)
    assert LayerPlan.from_json(row).to_json() == row
