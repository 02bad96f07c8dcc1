"""ffsplit: split transformer FFNs into heavy and light branches, export, build and prove parity.

``ffsplit.load(folder)`` runs an output folder from Python (``encode`` / ``predict`` / ``generate``);
``ffsplit.api`` holds the CLI's verbs as functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ffsplit.version import __version__

if TYPE_CHECKING:
    from pathlib import Path

    from ffsplit.inference import Model

__all__ = ["__version__", "load"]


def load(folder: str | Path, *, verify: bool = True) -> Model:
    """The artifact in ``folder`` bound to its target's runtime and tokenizer (see ``ffsplit.inference``)."""
    from ffsplit.inference import load as _load

    return _load(folder, verify=verify)
