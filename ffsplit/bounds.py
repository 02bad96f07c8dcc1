"""Bounds on every number a user passes, checked before any work starts.

A number outside what a machine can meet (a batch of 100,000, a benchmark of
infinite seconds, a NaN tolerance) is bad input: exit 2 with one line that
names the flag and the range, not an out-of-memory kill or a run that never
ends. The CLI and the Python API check through the same functions.
"""

from __future__ import annotations

import math

from ffsplit.errors import UsageError

MAX_TEXTS = 100_000  # calibration or evaluation texts
MAX_LENGTH = 1 << 20  # tokens per text
MAX_BATCH = 1024
MAX_TOKENS = 1 << 18  # batch x sequence in one benchmark run (MiniLM's activations then take about 1 GB)
MAX_RUNS = 100_000
MAX_WARMUP = 10_000
MAX_SECONDS = 3600.0
MIN_EVAL_TEXTS = 11  # retrieval@10 needs ten neighbours besides the text itself


def require_int(flag: str, value: object, lo: int, hi: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UsageError(f"{flag} {value}: pass a whole number from {lo:,} to {hi:,}{' ' + why if why else ''}")
    return value


def require_float(flag: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    ok = (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        and (lo < value if lo_open else lo <= value) and value <= hi
    )
    if not ok:
        low = f"above {lo:g}" if lo_open else f"from {lo:g}"
        raise UsageError(f"{flag} {value}: pass a finite number {low} to {hi:g}")
    return float(value)  # type: ignore[arg-type]


def require_shape(batch: int, sequence: int, max_positions: int | None) -> None:
    """One benchmark shape: each size in range and the run small enough for this machine's memory."""
    require_int("--batch", batch, 1, MAX_BATCH)
    if max_positions is not None and isinstance(sequence, int) and sequence > max_positions:
        raise UsageError(
            f"--seq {sequence} is longer than the model's maximum of {max_positions} positions: pass --seq <= {max_positions}"
        )
    require_int("--seq", sequence, 1, max_positions or MAX_LENGTH)
    if batch * sequence > MAX_TOKENS:
        raise UsageError(
            f"batch {batch} x sequence {sequence} = {batch * sequence:,} tokens in one run: "
            f"pass at most {MAX_TOKENS:,} (a smaller --batch or --seq)"
        )
