"""The manifest of an artifact: its typed sections (``records``) and the ``Manifest`` that holds them
(``document``), each field with its bounds beside it."""

from ffsplit.manifest.document import (
    FORMAT,
    LOCAL_SOURCE_KEYS,
    POST_EXPORT_KEYS,
    Manifest,
    embedded_view,
    layer_totals,
    manifest_problems,
)
from ffsplit.manifest.records import (
    Attempt,
    Budget,
    BudgetLayer,
    Build,
    Calibration,
    Checks,
    Comparison,
    Evaluation,
    Exporter,
    GoldenReplay,
    GraphPass,
    LayerPlan,
    Limits,
    Memory,
    Packed,
    Params,
    ParityReport,
    PooledCheck,
    Recipe,
    Run,
    Separation,
    Source,
)

__all__ = [
    "FORMAT", "LOCAL_SOURCE_KEYS", "POST_EXPORT_KEYS", "Attempt", "Budget", "BudgetLayer", "Build", "Calibration",
    "Checks", "Comparison", "Evaluation", "Exporter", "GoldenReplay", "GraphPass", "LayerPlan", "Limits", "Manifest", "Memory",
    "Packed", "ParityReport", "Params", "PooledCheck", "Recipe", "Run", "Separation", "Source", "embedded_view",
    "layer_totals", "manifest_problems",
]
