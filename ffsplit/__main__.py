"""Entry point for ``python -m ffsplit``."""

from ffsplit.cli import run

run()
