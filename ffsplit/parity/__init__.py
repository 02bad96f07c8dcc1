"""Parity: metrics between two models' outputs, the three-way check and its report."""
