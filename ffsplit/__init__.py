"""ffsplit: split transformer FFNs into heavy and light branches, export, build and prove parity."""

__version__ = "0.1.0"
