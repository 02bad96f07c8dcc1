"""Decoders at the size users ship: export memory and time of generated Llama-shaped models.

    python benchmarks/decoders.py make --size 0.5b --out /tmp/llama-0.5b      # random weights, bf16
    python benchmarks/decoders.py export /tmp/llama-0.5b --target cpu --light int4

``make`` writes a Llama-shaped model with random weights (say so wherever a
figure from it is quoted: random weights have no heavy hitters, so they
measure memory and speed, never accuracy) in the dtype users download
(bf16 unless ``--dtype``), with the MiniLM package's tokenizer. It is
generated, never committed. ``export`` runs ``ffsplit export`` on it in a
child process and reports the child's peak resident memory against the
size of the stored weights, with the per-stage peaks from the manifest;
results go to ``benchmarks/results/decoders.json`` and ``decoders.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RANDOM_WEIGHT_LIMITS = ["--limit", "top1_agreement=0", "--limit", "top5_agreement=0", "--limit", "perplexity_ratio=1000"]
# Llama-shaped, grouped-query attention, untied head, vocab 32,000 (the MiniLM tokenizer's ids fit)
SIZES: dict[str, dict[str, int]] = {
    "0.1b": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 8,
             "num_key_value_heads": 2},
    "0.5b": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 4},
    "1.5b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 26, "num_attention_heads": 32,
             "num_key_value_heads": 8},
}


def make(size: str, out: Path, dtype: str) -> None:
    import torch
    import transformers

    from ffsplit.loading import resolve_model

    cfg = transformers.LlamaConfig(vocab_size=32000, max_position_embeddings=2048, pad_token_id=0,
                                   bos_token_id=101, eos_token_id=102, **SIZES[size])
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(getattr(torch, {"bf16": "bfloat16", "fp16": "float16",
                                                                   "fp32": "float32"}[dtype])).eval()
    model.save_pretrained(out, safe_serialization=True)
    tok = resolve_model("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tok / name, out / name)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out}: {params / 1e6:,.0f}M parameters, {stored_bytes(out) / 1e9:.2f} GB of {dtype} weights")


def stored_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def export(model_dir: Path, out: Path, args: list[str]) -> dict:
    cmd = [sys.executable, "-m", "ffsplit", "export", str(model_dir), "--out", str(out), "--force", *args]
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child's, in bytes
    stored = stored_bytes(model_dir)
    row = {"model": model_dir.name, "command": " ".join(["ffsplit export", model_dir.name, *args]),
           "exit": proc.returncode, "stored_gb": round(stored / 1e9, 3), "peak_gb": round(peak / 1e9, 3),
           "peak_over_stored": round(peak / stored, 2), "wall_s": round(wall, 1), "cpu": cpu_name(),
           "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    manifest = out / "manifest.json"
    if proc.returncode == 0 and manifest.is_file():
        m = json.loads(manifest.read_text())
        row["stages_s"] = m.get("timings", {})
        row["stages_peak_mb"] = (m.get("memory") or {}).get("peak_mb", {})
        row["onnx_gb"] = round(sum((out / k).stat().st_size for k in m["files"] if k.startswith("model.onnx")) / 1e9, 3)
    print(json.dumps(row, indent=1))
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    m.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    m.add_argument("--out", type=Path, required=True)
    e = sub.add_parser("export")
    e.add_argument("model", type=Path)
    e.add_argument("--out", type=Path, default=None)
    e.add_argument("--record", action="store_true", help="append the row to benchmarks/results/decoders.json")
    a, rest = p.parse_known_args()
    if a.cmd == "make":
        make(a.size, a.out, a.dtype)
        return
    # Random weights have no heavy hitters and int4 moves their next token a lot: the export's accuracy
    # limits are opened (fidelity, split torch vs the runtime, stays as tight as ever) so the run completes
    # and every stage is measured.
    rest = rest or ["--target", "cpu", "--light", "int4", "--task", "causal-lm", "--calib-size", "32",
                    "--eval-size", "16", "--max-length", "64", *RANDOM_WEIGHT_LIMITS]
    row = export(a.model, a.out or Path(f"/tmp/ffsplit-bench-{a.model.name}"), rest)
    if a.record:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "decoders.json"
        rows = json.loads(path.read_text()) if path.is_file() else []
        rows.append(row)
        path.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
