"""The package's version, at the bottom of the import graph so the artifact layer can record it."""

__version__ = "0.1.0"
