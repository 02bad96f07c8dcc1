"""stages.verify.guard: the record the export writes from what a runtime executes (a stand-in runner)."""

from __future__ import annotations

from types import SimpleNamespace

from conftest import layer_plan

from ffsplit.graph_passes.check_branch_separation_pass import LayerRecord
from ffsplit.stages.verify import guard

# one layer of the "down" split form: heavy down-projection int8, light int4
PLANS = [layer_plan(split="down", gated=True, light_recipe="int4", heavy_precision="int8", light_precision="int4")]


def _runner(records: list[LayerRecord]) -> SimpleNamespace:
    return SimpleNamespace(layer_records=lambda: records, runtime_graph="executed graph",
                           target=SimpleNamespace(runtime="openvino"))


def test_a_separate_graph_passes_with_counts_and_precisions() -> None:
    record = guard(_runner([LayerRecord("h", "FullyConnected", ((0, "heavy"),), "int8"),
                            LayerRecord("l", "FullyConnected", ((0, "light"), (0, "merge")), "int4")]), PLANS)
    assert record.passed and record.failure is None and record.findings == ()
    assert record.matmuls == {"0": {"heavy": 1, "light": 1}}
    assert record.precisions == {"0": {"heavy": ["int8"], "light": ["int4"]}}
    assert record.graph == "executed graph"


def test_merged_branches_fail_with_one_line_naming_the_runtime_and_layer() -> None:
    record = guard(_runner([LayerRecord("hl", "FullyConnected", ((0, "heavy"), (0, "light")), "int4")]), PLANS)
    assert not record.passed and len(record.findings) == 3  # merged, and each branch's multiply missing
    assert record.failure is not None and record.failure.startswith("branch separation failed in what openvino runs: ")
    assert "L0 heavy, L0 light" in record.failure and "\n" not in record.failure


def test_a_branch_at_another_precision_fails() -> None:
    record = guard(_runner([LayerRecord("h", "FullyConnected", ((0, "heavy"),), "int4"),
                            LayerRecord("l", "FullyConnected", ((0, "light"),), "int4")]), PLANS)
    assert not record.passed
    assert record.findings == ("layer 0: heavy FullyConnected 'h' runs at int4, the target asked for int8",)
