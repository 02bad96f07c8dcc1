"""Hardware targets: the TOML files ffsplit ships (``shipped/``) or a user gives, their schema (``schema``: the
bounds of every key, the rules keys obey together) and the ``Target`` they are read into (``target``)."""

from ffsplit.targets.target import (
    GRAPH_FIELDS,
    Target,
    cpu_has_vnni,
    gpu_present,
    list_targets,
    load_target,
    require_supported,
    target_problems,
    weight_range,
)

__all__ = [
    "GRAPH_FIELDS", "Target", "cpu_has_vnni", "gpu_present", "list_targets", "load_target", "require_supported",
    "target_problems", "weight_range",
]
