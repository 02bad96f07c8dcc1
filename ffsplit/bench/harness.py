"""Latency and throughput of several models, measured side by side.

All models run in one process, in the same runtime, with the same session
options, on the same inputs; runs are interleaved in short blocks (the order
flips every round) and warm-up runs are excluded, so the machine's drift hits
every model alike and the ratios mean something even when the absolute
numbers are noisy. The first run of each block is not counted: a runtime's
worker threads keep spinning for a while after a run (ONNX Runtime's default),
and the next model's first run would pay for them. Measured on a 2-core
machine, strict one-by-one alternation made ONNX Runtime fp32 MiniLM look 2x
slower (68 ms instead of 34 ms at batch 1 x 128).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from ffsplit.split.calibration import positions_from_mask

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ffsplit.manifest import Manifest


@dataclass
class Timing:
    model: str
    batch: int
    sequence: int
    runs: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # sequences per second at p50
    speedup: float | None = None  # reference p50 / this p50

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def make_feed(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], input_names: list[str], *, batch: int, sequence: int
) -> dict[str, np.ndarray]:
    """Real token ids, every row padded or cut to exactly ``sequence`` tokens."""
    rows = [texts[i % len(texts)] for i in range(batch)]
    # Repeat text so rows are real tokens up to the full length, not mostly padding.
    rows = [" ".join([r] * 64) for r in rows]
    enc = dict(tokenizer(rows, padding="max_length", truncation=True, max_length=sequence, return_tensors="np"))
    enc["position_ids"] = positions_from_mask(enc["attention_mask"])
    return {n: enc[n].astype(np.int64) for n in input_names if n in enc}


def time_interleaved(
    runners: Mapping[str, object],
    feed: dict[str, np.ndarray],
    *,
    warmup: int,
    runs: int,
    min_seconds: float = 0.0,
    block: int = 3,
) -> dict[str, list[float]]:
    """Seconds per run of each runner, ``runs`` each (more while ``min_seconds`` has not passed), after
    ``warmup`` untimed runs each.

    Every round runs each runner ``block`` times in a row and counts all but
    the first of them; the order flips every round.
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name].infer(feed, check=False)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {n: [] for n in names}
    start = time.perf_counter()
    i = 0
    while min(len(t) for t in times.values()) < runs or (time.perf_counter() - start) < min_seconds:
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            for k in range(block):
                t0 = time.perf_counter()
                runners[name].infer(feed, check=False)  # type: ignore[attr-defined]
                wanted = len(times[name]) < runs or time.perf_counter() - start < min_seconds
                if (k or block == 1) and wanted:
                    times[name].append(time.perf_counter() - t0)
        i += 1
    return times


def summarise(times: dict[str, list[float]], *, batch: int, sequence: int, reference: str) -> list[Timing]:
    ref_p50 = float(np.percentile(times[reference], 50))
    out = []
    for name, ts in times.items():
        arr = np.asarray(ts) * 1000.0
        p50 = float(np.percentile(arr, 50))
        out.append(
            Timing(
                model=name,
                batch=batch,
                sequence=sequence,
                runs=len(ts),
                p50_ms=p50,
                p90_ms=float(np.percentile(arr, 90)),
                mean_ms=float(arr.mean()),
                throughput=batch / (p50 / 1000.0),
                speedup=(ref_p50 * 1000.0) / p50,
            )
        )
    return out


def format_table(rows: list[Timing]) -> str:
    head = f"{'model':<10} {'batch':>5} {'seq':>5} {'runs':>5} {'p50 ms':>9} {'p90 ms':>9} {'seq/s':>9} {'speedup':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.model:<10} {r.batch:>5} {r.sequence:>5} {r.runs:>5} {r.p50_ms:>9.2f} {r.p90_ms:>9.2f} "
            f"{r.throughput:>9.1f} {r.speedup:>7.2f}x"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, str]:
    """CPU model, cores and the library versions, for reports."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "os": platform.platform()}


def report_markdown(
    manifest: Manifest, rows: list[Timing], versions: dict[str, str], command: str, *,
    accuracy: dict | None = None,
) -> str:
    """One artifact's benchmark report: machine, timings side by side, size, accuracy from its checks (and,
    against a lossy baseline, both models' ``accuracy`` as ``api.bench_accuracy`` measured it)."""
    src, recipe, params = manifest.source, manifest.recipe, manifest.params
    shipped = manifest.parity.comparisons["shipped"].metrics if manifest.parity else {}
    lines = [
        f"# ffsplit bench: {src.spec} ({src.architecture}) for target {manifest.target_name}", "",
        f"Command: `{command}` (original and split in one process, same inputs, runs interleaved, warm-up excluded).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in {**machine_info(), **versions}.items()), "",
        f"Recipe: light {recipe.light_recipe}, heavy ratio {recipe.heavy_ratio}, "
        f"heavy precision {recipe.heavy_precision}; FFN parameters "
        f"{params.ffn_reduction:.1%} fewer, FFN bytes {params.ffn_bytes_reduction:.1%} fewer.",
        "",
        "| model | batch | sequence | runs | p50 ms | p90 ms | seq/s | speedup |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.model} | {r.batch} | {r.sequence} | {r.runs} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | "
                     f"{r.throughput:.1f} | {r.speedup:.2f}x |")
    if accuracy:
        names = list(accuracy["original"])
        lines += ["", f"original = {accuracy['baseline']}.", "", f"Accuracy against the original torch model on {accuracy['texts']} evaluation texts, both "
                  "models measured by this run:", "", "| model | " + " | ".join(names) + " |",
                  "|---|" + "---|" * len(names)]
        lines += [f"| {m} | " + " | ".join(f"{accuracy[m][n]:.4f}" for n in names) + " |" for m in ("original", "ffsplit")]
    if shipped:
        lines += ["", "Accuracy of what ships (original torch vs the runtime, from the export's parity check): "
                  + ", ".join(f"{k} {v:.4g}" for k, v in shipped.items() if isinstance(v, (int, float))) + "."]
    return "\n".join(lines) + "\n"
