"""The PyTorch side: FFN adapters, calibration text, heavy-hitter profiling, compression, SplitFFN."""
