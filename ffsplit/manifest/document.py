"""``Manifest``: one export's record, built by the export from typed sections (``records``) and written
once; read back, it is refused in one line unless it holds to every section's bounds.

A manifest is a file ffsplit did not just write: it may have been edited by
hand, damaged, or crafted. ``manifest_problems`` lists every way one departs
from the schema (a wrong type, a missing key, a number out of range, a name
that could leave the folder), so a verb refuses it in one line instead of
failing somewhere deep inside with a traceback. Sections no verb reads
(versions, free-text sources) are only checked for kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ffsplit.errors import UsageError
from ffsplit.manifest.records import (
    SHA256,
    Budget,
    Build,
    Calibration,
    Checks,
    Evaluation,
    Exporter,
    GraphPass,
    LayerPlan,
    Packed,
    Params,
    ParityReport,
    Recipe,
    Run,
    Separation,
    Source,
)
from ffsplit.schema import Record, bound, integer, mapping, nested, nested_items, record_check, table, text
from ffsplit.tasks import TASKS

# The newest manifest layout: 2 added `checks` (the limits `check` applies, decided at export); 3 is the
# typed manifest (one `run` record, `graph_passes` rows named by `name`, `exporter` always recorded).
FORMAT = 3
# Keys the export learns after the model was saved, or records about the run itself (when it ran); every
# other key is also embedded in model.onnx, so two exports of the same source with the same options and
# library versions write the same model.onnx.
POST_EXPORT_KEYS = frozenset({"exporter", "separation", "parity", "run", "files", "packed", "build"})
# Where the source was on the exporting machine: in manifest.json (check finds the source there), not in
# the copy inside model.onnx, which is the same on every machine that exports the same source.
LOCAL_SOURCE_KEYS = ("path", "spec")


@dataclass(frozen=True)
class Manifest(Record):
    """A schema-checked manifest of format ``FORMAT``: what one export did, section by section.

    Build one from JSON with ``Manifest.from_json``, which refuses anything that departs from the schema; the
    export builds one from its sections and adds what it learns later with ``Manifest.replace``.
    """

    source: Source = nested(Source)
    task: str = bound(text(choices=tuple(TASKS)))
    adapter: str = bound(text(200))
    target: Mapping[str, Any] = bound(table({"name": text(200)}))  # the full target schema is ffsplit.targets'
    recipe: Recipe = nested(Recipe)
    calibration: Calibration = nested(Calibration)
    evaluation: Evaluation = nested(Evaluation)
    checks: Checks = nested(Checks)
    layers: tuple[LayerPlan, ...] = nested_items(LayerPlan, min_len=1, max_len=100_000)
    params: Params = nested(Params)
    versions: Mapping[str, str] = bound(mapping(text(200), max_len=100))
    format: int = bound(integer(FORMAT, FORMAT), default=FORMAT, required=True)
    ffsplit_version: str = bound(text(64), default="", required=True)
    # where the FFN layout came from: a family file, or what structural discovery found and proved
    layout: str = bound(text(2000), default="")
    budget: Budget | None = nested(Budget, default=None)  # what --budget chose (None: no budget)
    graph_passes: tuple[GraphPass, ...] = nested_items(GraphPass, max_len=1000, default=())
    # what the export learns after the model was saved (POST_EXPORT_KEYS); every written manifest has them
    exporter: Exporter | None = nested(Exporter, default=None, required=True)
    separation: Separation | None = nested(Separation, default=None, required=True)
    parity: ParityReport | None = nested(ParityReport, default=None, required=True)
    build: Build | None = nested(Build, default=None, required=True)
    run: Run | None = nested(Run, default=None, required=True)
    files: Mapping[str, str] = bound(mapping(SHA256, max_len=100_000), default_factory=dict, required=True)
    packed: Packed | None = nested(Packed, default=None)  # a slim copy made by `ffsplit pack`

    @classmethod
    def from_json(cls, data: Any, *, where: str = "the manifest") -> Manifest:
        if not isinstance(data, dict):
            raise UsageError(f"{where} is not an ffsplit manifest (not a JSON object): re-run ffsplit export")
        if data.get("format") != FORMAT:
            found = data.get("format")
            older = ", made by an older ffsplit" if isinstance(found, int) and found < FORMAT else ""
            raise UsageError(f"{where} is not an ffsplit manifest of format {FORMAT} (format {str(found)[:20]}"
                             f"{older}): re-run ffsplit export")
        problems = manifest_problems(data)
        if problems:
            more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
            raise UsageError(f"{where} is damaged ({'; '.join(problems[:3])}{more}): re-run ffsplit export")
        return super().from_json(data)

    def __repr__(self) -> str:
        return f"Manifest(task={self.task!r}, target={self.target_name!r}, layers={len(self.layers)})"

    def replace(self, **changes: Any) -> Manifest:
        """This manifest with some sections replaced (what a later stage learned)."""
        return dataclasses.replace(self, **changes)

    def embedded(self) -> dict[str, Any]:
        """What of the manifest the copy inside model.onnx holds: everything decided before the model was
        saved, except where the source lay on the exporting machine."""
        return embedded_view(self.to_json())

    @property
    def target_name(self) -> str:
        return str(self.target["name"])

    @property
    def exact(self) -> bool:
        return self.checks.exact

    @property
    def limits(self) -> dict[str, dict[str, float]]:
        """Per comparison, metric -> limit: what `check` holds the artifact to (decided at export)."""
        return self.checks.limits.as_dict()

    @property
    def max_length(self) -> int:
        """The longest calibration and evaluation text, in tokens."""
        return self.calibration.max_length

    @property
    def is_packed(self) -> bool:
        return self.packed is not None

    @property
    def built(self) -> Build:
        """The build record; an artifact without one was built at export."""
        return self.build or Build(status="built", target=self.target_name)


def embedded_view(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What of a manifest (as JSON) the copy inside model.onnx holds: everything decided before the model was
    saved, except where the source lay on the exporting machine."""
    view = {k: v for k, v in manifest.items() if k not in POST_EXPORT_KEYS}
    if isinstance(view.get("source"), dict):
        view["source"] = {k: v for k, v in view["source"].items() if k not in LOCAL_SOURCE_KEYS}
    return view


def manifest_problems(manifest: Any) -> list[str]:
    """Every departure of ``manifest`` from the schema, as short phrases (empty when it conforms)."""
    errors: list[str] = []
    record_check(Manifest)(manifest, "manifest", errors)
    return errors


def layer_totals(layers: tuple[LayerPlan, ...] | list[LayerPlan]) -> dict[str, int]:
    """The FFN totals the manifest's ``params`` records, summed over its rows."""
    return {
        "ffn_before": sum(p.ffn_params_before for p in layers), "ffn_after": sum(p.ffn_params_after for p in layers),
        "ffn_bytes_before": sum(p.ffn_bytes_before for p in layers),
        "ffn_bytes_after": sum(p.ffn_bytes_after for p in layers),
    }
