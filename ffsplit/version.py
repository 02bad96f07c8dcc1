"""The package's version, and the versions of what an export runs on, at the bottom of the import graph so the
artifact layer can record them."""

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """The versions an artifact records (and the bench baseline cache is keyed on)."""
    import platform

    import onnx
    import onnx_ir
    import onnxruntime
    import torch
    import transformers

    return {
        "ffsplit": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnx_ir": onnx_ir.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
