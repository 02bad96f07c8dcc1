"""The manifest: its schema (every section a verb reads, with its type and bounds) and ``Manifest``, the typed
view of a checked one that the verbs read.

A manifest is a file ffsplit did not just write: it may have been edited by
hand, damaged, or crafted. ``manifest_problems`` lists every way one departs
from the schema (a wrong type, a missing key, a number out of range, a name
that could leave the folder), so a verb refuses it in one line instead of
failing somewhere deep inside with a traceback. Sections no verb reads
(timings, versions, free-text sources) are only checked for kind.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, TypeVar

from ffsplit.errors import UsageError
from ffsplit.precisions import PRECISIONS

# The newest manifest layout: 2 added `checks` (the limits `check` applies, decided at export).
FORMAT = 2
# Keys the export learns after the model was saved, or records about the run itself (when it ran); every
# other key is also embedded in model.onnx, so two exports of the same source with the same options and
# library versions write the same model.onnx.
POST_EXPORT_KEYS = frozenset({"exporter", "separation", "parity", "run", "files", "packed", "build",
                              "created", "timings", "memory"})  # the last three: where format 2 kept `run`'s parts
# Where the source was on the exporting machine: in manifest.json (check finds the source there), not in
# the copy inside model.onnx, which is the same on every machine that exports the same source.
LOCAL_SOURCE_KEYS = ("path", "spec")


def embedded_view(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What of a manifest the copy inside model.onnx holds: everything decided before the model was saved,
    except where the source lay on the exporting machine."""
    view = {k: v for k, v in manifest.items() if k not in POST_EXPORT_KEYS}
    if isinstance(view.get("source"), dict):
        view["source"] = {k: v for k, v in view["source"].items() if k not in LOCAL_SOURCE_KEYS}
    return view


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")

Check = Callable[[Any, str, list[str]], None]
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MODULE = re.compile(r"[A-Za-z0-9_.]{1,512}")
BIG = 1 << 40  # parameter and byte counts


def _kind(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def integer(lo: int, hi: int) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if isinstance(v, bool) or not isinstance(v, int):
            errors.append(f"{where} must be an integer, not {_kind(v)}")
        elif not lo <= v <= hi:
            errors.append(f"{where} = {v} is outside [{lo}, {hi}]")

    return check


def number(lo: float = -math.inf, hi: float = math.inf) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errors.append(f"{where} must be a number, not {_kind(v)}")
        elif not math.isfinite(v) or not lo <= v <= hi:
            errors.append(f"{where} = {v} is outside [{lo:g}, {hi:g}]")

    return check


def text(max_len: int = 4096, pattern: re.Pattern[str] | None = None, choices: tuple[str, ...] = ()) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, str):
            errors.append(f"{where} must be a string, not {_kind(v)}")
        elif len(v) > max_len or "\0" in v:
            errors.append(f"{where} is too long or holds a NUL byte")
        elif choices and v not in choices:
            errors.append(f"{where} '{v[:40]}' is not one of {', '.join(choices)}")
        elif pattern is not None and not pattern.fullmatch(v):
            errors.append(f"{where} '{v[:40]}' is malformed")

    return check


def boolean(v: Any, where: str, errors: list[str]) -> None:
    if not isinstance(v, bool):
        errors.append(f"{where} must be true or false, not {_kind(v)}")


def optional(inner: Check) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if v is not None:
            inner(v, where, errors)

    return check


def either(*options: Check) -> Check:
    """The first option that accepts ``v``; the last one's complaint otherwise."""

    def check(v: Any, where: str, errors: list[str]) -> None:
        for option in options:
            mine: list[str] = []
            option(v, where, mine)
            if not mine:
                return
        errors.extend(mine)

    return check


def table(fields: dict[str, Check], *, optional_keys: frozenset[str] = frozenset()) -> Check:
    """A JSON object with these keys (extra keys are allowed and left unread)."""

    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, dict):
            errors.append(f"{where} must be an object, not {_kind(v)}")
            return
        for key, inner in fields.items():
            if key not in v:
                if key not in optional_keys:
                    errors.append(f"{where}.{key} is missing")
                continue
            inner(v[key], f"{where}.{key}", errors)

    return check


def items(inner: Check, *, max_len: int, min_len: int = 0) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, list):
            errors.append(f"{where} must be a list, not {_kind(v)}")
        elif not min_len <= len(v) <= max_len:
            errors.append(f"{where} has {len(v)} entries (allowed {min_len} to {max_len})")
        else:
            for i, item in enumerate(v):
                inner(item, f"{where}[{i}]", errors)
                if len(errors) > 20:
                    return

    return check


def mapping(inner: Check, *, max_len: int = 10_000, key: re.Pattern[str] | None = None) -> Check:
    def check(v: Any, where: str, errors: list[str]) -> None:
        if not isinstance(v, dict):
            errors.append(f"{where} must be an object, not {_kind(v)}")
            return
        if len(v) > max_len:
            errors.append(f"{where} has {len(v)} entries (at most {max_len})")
            return
        for k, item in v.items():
            if key is not None and not key.fullmatch(k):
                errors.append(f"{where} key '{k[:40]}' is malformed")
            inner(item, f"{where}.{k}", errors)

    return check


def anything(_v: Any, _where: str, _errors: list[str]) -> None:
    return None


_PRECISION = text(choices=PRECISIONS)
_COUNT = integer(0, BIG)
_FRACTION = number(0.0, 1.0)
_LIMITS = mapping(number(0.0, 1e6), max_len=32, key=re.compile(r"[a-z0-9_]{1,40}"))

T = TypeVar("T")


def _record(cls: type[T], data: Mapping[str, Any]) -> T:
    """The dataclass ``cls`` from a checked JSON table: its fields that the table has (other keys ignored)."""
    return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # type: ignore[arg-type]


@dataclass(kw_only=True)
class LayerPlan:
    """One row of the manifest's per-layer table: how one FFN was split (written by the split, read by every
    verb through ``Manifest.layers``). A field with a default may be absent from a row."""

    layer: int
    module: str
    d_model: int
    d_ff: int
    heavy: int
    light: int
    light_recipe: str
    heavy_precision: str
    light_precision: str
    ffn_params_before: int
    heavy_params: int
    light_params: int
    ffn_params_after: int
    heavy_score_share: float
    gated: bool | None = None  # None: not recorded
    light_kept: int | None = None  # light neurons left after pruning (None: low rank, or not recorded)
    # bytes as the runtime stores each part (``split.apply.Storage``)
    ffn_bytes_before: int
    heavy_bytes: int
    light_bytes: int
    ffn_bytes_after: int
    light_in_error: float | None = None
    light_out_error: float | None = None
    calib_error: float | None = None  # budget mode: relative FFN output error on calibration inputs
    split: str = "both"  # "down": one shared up-projection, only the down-projection split

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> LayerPlan:
        """A row of a checked manifest (``LAYER``)."""
        return _record(cls, row)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def lowrank(self) -> bool:
        """Whether the light branch is low-rank factors (the recipe's structure, its first step)."""
        return self.light_recipe.startswith("lowrank:")

    @property
    def projections(self) -> int:
        """Matrix multiplies of one dense branch: its down-projection alone in the ``down`` form, else 2, or 3
        when gated."""
        return 1 if self.split == "down" else 3 if self.gated else 2


# The bounds of each LayerPlan field; the fields with a default may be absent
_LAYER_FIELDS: dict[str, Check] = {
    "layer": integer(0, 100_000), "module": text(512, _MODULE), "d_model": integer(1, 1 << 20),
    "d_ff": integer(1, 1 << 24), "heavy": integer(0, 1 << 24), "light": integer(0, 1 << 24),
    "light_recipe": text(200), "heavy_precision": _PRECISION, "light_precision": _PRECISION,
    "ffn_params_before": _COUNT, "heavy_params": _COUNT, "light_params": _COUNT, "ffn_params_after": _COUNT,
    "heavy_score_share": _FRACTION, "gated": optional(boolean), "light_kept": optional(integer(0, 1 << 24)),
    "ffn_bytes_before": _COUNT, "heavy_bytes": _COUNT, "light_bytes": _COUNT, "ffn_bytes_after": _COUNT,
    "light_in_error": optional(number(0.0)), "light_out_error": optional(number(0.0)),
    "calib_error": optional(number(0.0)), "split": text(choices=("both", "down")),
}
LAYER = table(_LAYER_FIELDS, optional_keys=frozenset(f.name for f in fields(LayerPlan) if f.default is not MISSING))


@dataclass(frozen=True)
class Params:
    """The manifest's ``params``: parameters and bytes of the FFNs, and parameters of the whole model, before
    and after the split (a reduction is the fraction saved: 1 - after / before)."""

    ffn_before: int
    ffn_after: int
    ffn_reduction: float
    total_before: int
    total_after: int
    total_reduction: float
    ffn_bytes_before: int
    ffn_bytes_after: int
    ffn_bytes_reduction: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Params:
        return _record(cls, data)


# The bounds of each Params field (every one required)
_PARAMS_FIELDS: dict[str, Check] = {
    "ffn_before": integer(1, BIG), "ffn_after": _COUNT, "ffn_reduction": number(-1e6, 1.0),
    "total_before": integer(1, BIG), "total_after": _COUNT, "total_reduction": number(-1e6, 1.0),
    "ffn_bytes_before": _COUNT, "ffn_bytes_after": _COUNT, "ffn_bytes_reduction": number(-1e6, 1.0),
}


@dataclass(frozen=True)
class BudgetLayer:
    """What ``--budget`` chose for one layer."""

    layer: int
    heavy: int
    heavy_ratio: float
    recipe: str
    error: float  # relative FFN output error on the calibration inputs


@dataclass(frozen=True)
class Budget:
    """The manifest's ``budget``: the ``--budget`` an export was given and what it chose per layer."""

    kind: str
    value: float
    limit: float
    used: float
    plan: tuple[BudgetLayer, ...]
    used_fraction_of_limit: float | None = None  # recorded by exports since the budget summary had them
    total_error: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Budget:
        return _record(cls, {**data, "plan": tuple(_record(BudgetLayer, row) for row in data["plan"])})


def layer_totals(layers: list[LayerPlan]) -> dict[str, int]:
    """The FFN totals the manifest's ``params`` records, summed over its rows."""
    return {
        "ffn_before": sum(p.ffn_params_before for p in layers), "ffn_after": sum(p.ffn_params_after for p in layers),
        "ffn_bytes_before": sum(p.ffn_bytes_before for p in layers),
        "ffn_bytes_after": sum(p.ffn_bytes_after for p in layers),
    }


SCHEMA = table(
    {
        "format": integer(FORMAT, FORMAT),
        "ffsplit_version": text(64),
        "source": table({
            "spec": text(), "path": text(), "model_type": text(200), "architecture": text(200),
            "sha256": text(64, _HEX64), "max_positions": optional(integer(1, 1 << 24)),
        }),
        "task": text(choices=("feature-extraction", "text-classification", "causal-lm", "causal-lm-with-past")),
        "adapter": text(200),
        "layout": text(2000),
        "target": table({"name": text(200)}),  # the full target schema is runtimes.targets'
        "budget": optional(table({
            "kind": text(40), "value": number(0.0, BIG), "limit": number(-BIG, BIG), "used": number(0, BIG),
            "plan": items(table({
                "layer": integer(0, 100_000), "heavy": integer(0, 1 << 24), "heavy_ratio": _FRACTION,
                "recipe": text(200), "error": number(0.0),
            }), max_len=100_000),
        })),
        "recipe": table({
            "heavy_ratio": either(number(0.0, 1.0), text(100)),
            "light": table({"recipe": text(200)}),
            "heavy_precision": _PRECISION,
        }),
        "calibration": table({"texts": integer(1, 10_000_000), "max_length": integer(2, 1 << 20)}),
        "evaluation": table({"texts": integer(1, 100_000)}),
        "checks": table({
            "exact": boolean,
            "limits": table({"compression": _LIMITS, "fidelity": _LIMITS, "shipped": _LIMITS}),
        }),
        "layers": items(LAYER, min_len=1, max_len=100_000),
        "params": table(_PARAMS_FIELDS),
        "versions": mapping(text(200), max_len=100),
        "graph_passes": items(table({"pass": text(200), "modified": boolean}), max_len=1000),
        "separation": table({"graph": text(200)}),
        "parity": table({"passed": boolean}),
        # what the run records about itself, the only part of an export that differs between two runs
        "run": table({
            "created": text(64), "timings": mapping(number(0.0), max_len=100),
            "memory": table({"peak_mb": mapping(number(0.0, BIG), max_len=100), "per_stage": boolean}),
        }),
        "timings": mapping(number(0.0), max_len=100),
        # peak resident memory per stage, in MB (per_stage false: each figure is the process's peak so far)
        "memory": table({"peak_mb": mapping(number(0.0, BIG), max_len=100), "per_stage": boolean}),
        "files": mapping(text(64, _HEX64), max_len=100_000),
        # a slim copy made by `ffsplit pack`: what it left out (the torch side of `check`, the guard's graphs)
        "packed": table({"dropped": items(text(1000), max_len=100_000)}),
        # whether the runtime was built and guarded (at export, or later by `ffsplit build`) or is still to be
        "build": table({
            "status": text(choices=("built", "deferred")), "target": text(100, _NAME), "reason": optional(text()),
            "runtime_target": optional(table({"name": text(100, _NAME)})),
        }, optional_keys=frozenset({"reason", "runtime_target"})),
    },
    optional_keys=frozenset({"run", "timings", "memory", "exporter", "packed", "build", "layout"}),
)


def manifest_problems(manifest: Any) -> list[str]:
    """Every departure of ``manifest`` from the schema, as short phrases (empty when it conforms)."""
    errors: list[str] = []
    SCHEMA(manifest, "manifest", errors)
    return errors


# -- the typed view verbs read


@dataclass(frozen=True)
class Source:
    """The model an artifact was exported from."""

    spec: str  # what the user passed (a folder or an alias)
    path: str
    sha256: str
    model_type: str
    architecture: str
    max_positions: int | None  # the longest input the model computes (None when unknown)


@dataclass(frozen=True)
class Evaluation:
    """The texts the export's parity was checked on."""

    texts: int
    source: str  # a file path, or "bundled: ..."
    sha256: str | None

    @property
    def bundled(self) -> bool:
        return self.source.startswith("bundled")


@dataclass(frozen=True)
class Build:
    """Whether the artifact's runtime was built and guarded, and for which target."""

    status: str  # "built" | "deferred"
    target: str
    reason: str | None = None  # why a deferred build could not run where the export ran
    runtime_target: Mapping[str, Any] | None = None  # a target of the same graph that `ffsplit build` used

    @property
    def deferred(self) -> bool:
        return self.status == "deferred"


class Manifest(Mapping[str, Any]):
    """A schema-checked manifest of format ``FORMAT``: typed properties for what the verbs read, and the
    JSON object as written underneath (``manifest["key"]``, ``to_json()``), so nothing is lost in a round trip.

    Build one with ``Manifest.from_json``, which refuses anything that departs from the schema.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

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
        return cls(data)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Manifest(task={self.task!r}, target={self.target_name!r}, layers={len(self.layers)})"

    def to_json(self) -> dict[str, Any]:
        return dict(self._data)

    @property
    def task(self) -> str:
        return str(self._data["task"])

    @property
    def target_name(self) -> str:
        return str(self._data["target"]["name"])

    @property
    def source(self) -> Source:
        s = self._data["source"]
        return Source(s["spec"], s["path"], s["sha256"], s["model_type"], s["architecture"], s.get("max_positions"))

    @property
    def budget(self) -> Budget | None:
        """What ``--budget`` chose, or None for an export without one."""
        b = self._data.get("budget")
        return Budget.from_json(b) if b else None

    @property
    def params(self) -> Params:
        return Params.from_json(self._data["params"])

    @property
    def layers(self) -> list[LayerPlan]:
        return [LayerPlan.from_json(row) for row in self._data["layers"]]

    @property
    def exact(self) -> bool:
        return bool(self._data["checks"]["exact"])

    @property
    def limits(self) -> dict[str, dict[str, float]]:
        """Per comparison, metric -> limit: what `check` holds the artifact to (decided at export)."""
        return {name: dict(values) for name, values in self._data["checks"]["limits"].items()}

    @property
    def max_length(self) -> int:
        """The longest calibration and evaluation text, in tokens."""
        return int(self._data["calibration"]["max_length"])

    @property
    def evaluation(self) -> Evaluation:
        e = self._data["evaluation"]
        return Evaluation(int(e["texts"]), str(e.get("source", "")), e.get("sha256"))

    @property
    def files(self) -> dict[str, str]:
        return dict(self._data["files"])

    @property
    def packed(self) -> bool:
        return bool(self._data.get("packed"))

    @property
    def build(self) -> Build:
        """The build record; artifacts written before build-later were built at export."""
        b = self._data.get("build") or {"status": "built", "target": self.target_name}
        return Build(b["status"], b["target"], b.get("reason"), b.get("runtime_target"))
