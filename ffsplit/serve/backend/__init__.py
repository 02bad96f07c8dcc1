"""Triton Python-backend model code: files copied into a model repository (``serve.triton``), never imported
by ffsplit itself (they import Triton's ``triton_python_backend_utils``, which only the backend stub has)."""
