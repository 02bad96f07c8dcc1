"""The manifest's sections as typed records, each field with its bounds beside it (``ffsplit.schema``).

The export builds these; ``Manifest`` holds them; every verb reads their
attributes. The bounds are what a manifest read back from disk is held to.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ffsplit.limits import METRICS
from ffsplit.precisions import PRECISIONS, SPLIT_FORMS
from ffsplit.schema import (
    NAME,
    Record,
    anything,
    boolean,
    bound,
    either,
    integer,
    items,
    mapping,
    nested,
    nested_items,
    number,
    optional,
    table,
    text,
)
from ffsplit.tasks import TASKS

SHA256 = text(64, re.compile(r"[0-9a-f]{64}"))  # a file's or a corpus's hash
_MODULE = re.compile(r"[A-Za-z0-9_.]{1,512}")
BIG = 1 << 40  # parameter and byte counts
_PRECISION = text(choices=PRECISIONS)
_COUNT = integer(0, BIG)
_FRACTION = number(0.0, 1.0)
_METRIC_NAME = re.compile(r"[a-z0-9_]{1,40}")  # a metric a comparison reports
_LIMITS = mapping(number(0.0, 1e6), max_len=32, key=_METRIC_NAME)
_SECONDS = mapping(number(0.0), max_len=100)
_FREE = mapping(anything, max_len=100_000)  # a section no verb reads: checked for kind only
_METRIC = re.compile("|".join(METRICS))  # a metric a limit may be on


@dataclass(frozen=True)
class Source(Record):
    """The model an artifact was exported from."""

    spec: str = bound(text())  # what the user passed (a folder or an alias)
    path: str = bound(text())  # where it was on the exporting machine
    model_type: str = bound(text(200))
    architecture: str = bound(text(200))
    sha256: str = bound(SHA256)
    max_positions: int | None = bound(optional(integer(1, 1 << 24)), default=None, required=True)  # None: unknown


@dataclass(frozen=True)
class Recipe(Record):
    """How the FFNs were split: the heavy share and precision, the light branch's recipe and its parameters."""

    heavy_ratio: float | str = bound(either(number(0.0, 1.0), text(100)))  # a text: "per layer (budget)"
    light: Mapping[str, Any] = bound(table({"recipe": text(200)}))  # the recipe and its parameters
    heavy_precision: str = bound(_PRECISION)
    heavy_selection: str = bound(text(), default="")
    light_precision: str = bound(text(100), default="")
    # how integer grids are stored in the graph: "fp32", or per bit width its form
    graph_storage: str | Mapping[str, str] = bound(either(text(100), mapping(text(100), max_len=8)), default="fp32")
    int8_weight_max: int | None = bound(optional(integer(1, 127)), default=None)

    @property
    def light_recipe(self) -> str:
        return str(self.light["recipe"])


@dataclass(frozen=True)
class Calibration(Record):
    """The text the neurons were profiled (and NNCF calibrated) on."""

    texts: int = bound(integer(1, 10_000_000))
    max_length: int = bound(integer(2, 1 << 20))
    source: str = bound(text(), default="")
    tokens: int = bound(_COUNT, default=0)
    sha256: str | None = bound(optional(SHA256), default=None)


@dataclass(frozen=True)
class Evaluation(Record):
    """The texts the export's parity was checked on."""

    texts: int = bound(integer(1, 100_000))
    source: str = bound(text(), default="")  # a file path, or "bundled: ..."
    sha256: str | None = bound(optional(SHA256), default=None)

    @property
    def bundled(self) -> bool:
        return self.source.startswith("bundled")


@dataclass(frozen=True)
class Limits(Record):
    """Per comparison, metric -> limit."""

    compression: Mapping[str, float] = bound(_LIMITS)
    fidelity: Mapping[str, float] = bound(_LIMITS)
    shipped: Mapping[str, float] = bound(_LIMITS)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"compression": dict(self.compression), "fidelity": dict(self.fidelity), "shipped": dict(self.shipped)}


@dataclass(frozen=True)
class Checks(Record):
    """What ``check`` holds the artifact to, decided once at export."""

    exact: bool = bound(boolean)
    limits: Limits = nested(Limits)


@dataclass(kw_only=True)
class LayerPlan(Record):
    """One row of the manifest's per-layer table: how one FFN was split (written by the split, read by every
    verb through ``Manifest.layers``). A field with a default may be absent from a row."""

    layer: int = bound(integer(0, 100_000))
    module: str = bound(text(512, _MODULE))
    d_model: int = bound(integer(1, 1 << 20))
    d_ff: int = bound(integer(1, 1 << 24))
    heavy: int = bound(integer(0, 1 << 24))
    light: int = bound(integer(0, 1 << 24))
    light_recipe: str = bound(text(200))
    heavy_precision: str = bound(_PRECISION)
    light_precision: str = bound(_PRECISION)
    ffn_params_before: int = bound(_COUNT)
    heavy_params: int = bound(_COUNT)
    light_params: int = bound(_COUNT)
    ffn_params_after: int = bound(_COUNT)
    heavy_score_share: float = bound(_FRACTION)
    gated: bool | None = bound(optional(boolean), default=None)  # None: not recorded
    # light neurons left after pruning (None: low rank, or not recorded)
    light_kept: int | None = bound(optional(integer(0, 1 << 24)), default=None)
    # bytes as the runtime stores each part (``split.apply.Storage``)
    ffn_bytes_before: int = bound(_COUNT)
    heavy_bytes: int = bound(_COUNT)
    light_bytes: int = bound(_COUNT)
    ffn_bytes_after: int = bound(_COUNT)
    light_in_error: float | None = bound(optional(number(0.0)), default=None)
    light_out_error: float | None = bound(optional(number(0.0)), default=None)
    # budget mode: relative FFN output error on calibration inputs
    calib_error: float | None = bound(optional(number(0.0)), default=None)
    split: str = bound(text(choices=SPLIT_FORMS), default="both")  # "down": one shared up-projection

    @property
    def lowrank(self) -> bool:
        """Whether the light branch is low-rank factors (the recipe's structure, its first step)."""
        return self.light_recipe.startswith("lowrank:")

    @property
    def projections(self) -> int:
        """Matrix multiplies of one dense branch: its down-projection alone in the ``down`` form, else 2, or 3
        when gated."""
        return 1 if self.split == "down" else 3 if self.gated else 2


@dataclass(frozen=True)
class Params(Record):
    """Parameters and bytes of the FFNs, and parameters of the whole model, before and after the split (a
    reduction is the fraction saved: 1 - after / before)."""

    ffn_before: int = bound(integer(1, BIG))
    ffn_after: int = bound(_COUNT)
    ffn_reduction: float = bound(number(-1e6, 1.0))
    total_before: int = bound(integer(1, BIG))
    total_after: int = bound(_COUNT)
    total_reduction: float = bound(number(-1e6, 1.0))
    ffn_bytes_before: int = bound(_COUNT)
    ffn_bytes_after: int = bound(_COUNT)
    ffn_bytes_reduction: float = bound(number(-1e6, 1.0))


@dataclass(frozen=True)
class BudgetLayer(Record):
    """What ``--budget`` chose for one layer."""

    layer: int = bound(integer(0, 100_000))
    heavy: int = bound(integer(0, 1 << 24))
    heavy_ratio: float = bound(_FRACTION)
    recipe: str = bound(text(200))
    error: float = bound(number(0.0))  # relative FFN output error on the calibration inputs
    params: int | None = bound(optional(_COUNT), default=None)
    flops: int | None = bound(optional(_COUNT), default=None)
    nbytes: int | None = bound(optional(_COUNT), default=None)


@dataclass(frozen=True)
class Budget(Record):
    """The ``--budget`` an export was given and what it chose per layer."""

    kind: str = bound(text(40))
    value: float = bound(number(0.0, BIG))
    limit: float = bound(number(-BIG, BIG))
    used: float = bound(number(0, BIG))
    plan: tuple[BudgetLayer, ...] = nested_items(BudgetLayer, max_len=100_000)
    used_fraction_of_limit: float | None = bound(optional(number()), default=None)
    total_error: float | None = bound(optional(number(0.0)), default=None)
    candidates_per_layer: tuple[int, ...] = bound(items(integer(0, 1 << 20), max_len=100_000), default=())


@dataclass(frozen=True)
class GraphPass(Record):
    """One graph pass the export ran, and whether it changed the graph."""

    name: str = bound(text(200))
    modified: bool = bound(boolean)


@dataclass(frozen=True)
class Attempt(Record):
    """An exporter that was tried and why it was not kept."""

    exporter: str = bound(text(100))
    failed: str = bound(text(20_000))


@dataclass(frozen=True)
class Exporter(Record):
    """Which exporter captured the graph (None: every one failed), at which opset, after which attempts."""

    name: str | None = bound(optional(text(100)), default=None, required=True)
    opset: int | None = bound(optional(integer(1, 100)), default=None)
    attempts: tuple[Attempt, ...] = nested_items(Attempt, max_len=100, default=())


@dataclass(frozen=True)
class Separation(Record):
    """The separation guard's record: whether each layer's branches stayed apart in what the runtime runs."""

    passed: bool | None = bound(optional(boolean), required=True)  # None: not run (the build is deferred)
    graph: str = bound(text(200))  # what the guard read
    matmuls: Mapping[str, Any] | None = bound(optional(_FREE), default=None)
    precisions: Mapping[str, Any] | None = bound(optional(_FREE), default=None)
    findings: tuple[str, ...] = bound(items(text(), max_len=100_000), default=())
    failure: str | None = bound(optional(text(1 << 20)), default=None)  # one line naming the layers


@dataclass(frozen=True)
class Comparison(Record):
    """One comparison of the three-way parity check: its metrics, their limits and whether all held."""

    what: str = bound(text(200))
    output: str = bound(text(200))
    metrics: Mapping[str, float] = bound(mapping(number(), max_len=32, key=_METRIC_NAME))
    limits: Mapping[str, float] = bound(mapping(number(), max_len=32, key=_METRIC))
    passed: bool = bound(boolean)

    def failures(self, name: str) -> list[str]:
        out = []
        for metric, lim in self.limits.items():
            value = self.metrics[metric]
            if METRICS[metric].holds(value, lim):
                continue
            if METRICS[metric].ceiling:
                out.append(f"{name} ({self.what}) {self.output} {metric} {value:.3g} > {lim:.3g} (over by {value - lim:.3g})")
            else:
                out.append(f"{name} ({self.what}) {metric} {value:.4f} < {lim:.4f} (short by {lim - value:.4f})")
        return out


@dataclass(frozen=True)
class PooledCheck(Record):
    """The graph's ``sentence_embedding`` output against its token output pooled as sentence-transformers does."""

    max_abs: float = bound(number(0.0))
    limit: float = bound(number(0.0))
    passed: bool = bound(boolean)
    pooling: tuple[str, ...] = bound(items(text(100), max_len=16), default=())  # sentence-transformers' modes
    normalize: bool = bound(boolean, default=False)


@dataclass
class ParityReport(Record):
    """The three-way parity check's result (``parity.check``), as the manifest records it."""

    task: str = bound(text(choices=tuple(TASKS)), default="feature-extraction")
    comparisons: dict[str, Comparison] = bound(mapping(Comparison.check(), max_len=8), default_factory=dict)
    texts: int = bound(integer(0, 10_000_000), default=0)
    separation: Separation | None = nested(Separation, default=None)  # the guard's record, when `check` ran it
    sentence_embedding: PooledCheck | None = nested(PooledCheck, default=None)

    @property
    def passed(self) -> bool:
        guard_ok = self.separation is None or bool(self.separation.passed)
        pooled_ok = self.sentence_embedding is None or self.sentence_embedding.passed
        return guard_ok and pooled_ok and all(c.passed for c in self.comparisons.values())

    def failures(self) -> list[str]:
        out = [] if self.separation is None or self.separation.passed else [str(self.separation.failure)]
        pooled = self.sentence_embedding
        if pooled is not None and not pooled.passed:
            out.append(f"sentence_embedding (the graph's pooling vs its token output pooled) max_abs "
                       f"{pooled.max_abs:.3g} > {pooled.limit:.3g}")
        for name, comp in self.comparisons.items():
            out += comp.failures(name)
        return out

    def to_json(self) -> dict[str, Any]:
        """The record, with ``passed`` and ``failures`` spelled out for whoever reads the file."""
        return {"passed": self.passed, **super().to_json(), "failures": self.failures()}


@dataclass(frozen=True)
class Memory(Record):
    """Peak resident memory per stage, in MB (per_stage false: each figure is the process's peak so far)."""

    peak_mb: Mapping[str, float] = bound(mapping(number(0.0, BIG), max_len=100))
    per_stage: bool = bound(boolean)


@dataclass(frozen=True)
class Run(Record):
    """What the run records about itself, the only part of an export that differs between two runs."""

    created: str = bound(text(64))
    timings: Mapping[str, float] = bound(_SECONDS)
    memory: Memory = nested(Memory)


@dataclass(frozen=True)
class Packed(Record):
    """A slim copy made by ``ffsplit pack``: what it left out (the torch side of `check`, the guard's graphs)."""

    dropped: tuple[str, ...] = bound(items(text(1000), max_len=100_000))


@dataclass(frozen=True)
class GoldenReplay(Record):
    """The golden inputs saved at export, run again on a target (``check --golden``, ``ffsplit build``): how far
    the runtime moved the golden output."""

    output: str = bound(text(200))
    target: str = bound(text(100, NAME))
    max_abs: float = bound(number(0.0))
    tolerance: float = bound(number(0.0))
    rows: int = bound(integer(1, BIG))
    passed: bool = bound(boolean)

    def summary(self) -> str:
        return (f"golden {self.output} on {self.target}: max abs {self.max_abs:.3g} (tolerance {self.tolerance:.3g}, "
                f"{self.rows} texts): {'pass' if self.passed else 'FAIL'}")

    def failure(self) -> str:
        return f"golden {self.output} moved by {self.max_abs:.3g} > {self.tolerance:.3g}"


@dataclass(frozen=True)
class Build(Record):
    """Whether the artifact's runtime was built and guarded (at export, or later by ``ffsplit build``), and for
    which target."""

    status: str = bound(text(choices=("built", "deferred")))
    target: str = bound(text(100, NAME))
    reason: str | None = bound(optional(text()), default=None)  # why a deferred build could not run where it was made
    # a target of the same graph that `ffsplit build` used (its full schema is ffsplit.targets')
    runtime_target: Mapping[str, Any] | None = bound(optional(table({"name": text(100, NAME)})), default=None)
    checked_on: str | None = bound(optional(text(200)), default=None)  # the CPU stand-in parity ran on
    golden: GoldenReplay | None = nested(GoldenReplay, default=None)  # `ffsplit build`'s replay
    created: str | None = bound(optional(text(64)), default=None)

    @property
    def deferred(self) -> bool:
        return self.status == "deferred"


__all__ = [
    "BIG", "NAME", "Attempt", "Budget", "BudgetLayer", "Build", "Calibration", "Checks", "Comparison", "Evaluation",
    "Exporter", "GoldenReplay", "GraphPass", "LayerPlan", "Limits", "Memory", "Packed", "ParityReport", "Params", "PooledCheck",
    "Recipe", "Run", "Separation", "Source",
]
