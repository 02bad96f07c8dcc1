"""torch.onnx export (dynamo) per task: feature-extraction, text-classification, causal-lm."""

from ffsplit.exporter.export import STRATEGIES, CaptureStrategy, export_program, input_names_for, save_model
from ffsplit.tasks import TASKS

__all__ = ["STRATEGIES", "TASKS", "CaptureStrategy", "export_program", "input_names_for", "save_model"]
