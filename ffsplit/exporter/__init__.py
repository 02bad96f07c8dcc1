"""torch.onnx export (dynamo) per task; this issue covers feature-extraction."""

from ffsplit.exporter.export import TASKS, export_program, input_names_for, save_model

__all__ = ["TASKS", "export_program", "input_names_for", "save_model"]
