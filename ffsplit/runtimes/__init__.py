"""Hardware targets (TOML files) and one module per runtime."""

from ffsplit.runtimes.targets import Target, list_targets, load_target

__all__ = ["Target", "list_targets", "load_target"]
