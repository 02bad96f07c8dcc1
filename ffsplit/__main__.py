"""Entry point for ``python -m ffsplit``."""

from ffsplit.cli import main

raise SystemExit(main())
