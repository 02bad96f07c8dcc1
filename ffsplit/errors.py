"""The exceptions that map to ffsplit's exit codes (ARCHITECTURE.md, "Exit codes")."""

from __future__ import annotations


class FFSplitError(Exception):
    """Base class: an error ffsplit reports in one line, without a traceback."""

    exit_code = 1


class UsageError(FFSplitError):
    """Bad input or usage (exit 2). The message says what is wrong and how to fix it."""

    exit_code = 2


class CheckFailed(FFSplitError):
    """A parity check, a separation guard or a threshold failed (exit 1).

    ``details``: what was measured before the failure (an export's manifest so far), for ``--json``.
    """

    exit_code = 1

    def __init__(self, message: str, *, details: dict | None = None) -> None:
        super().__init__(message)
        self.details = details
