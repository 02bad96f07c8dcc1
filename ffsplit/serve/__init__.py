"""Serving: Triton model repositories and a local Triton server."""
