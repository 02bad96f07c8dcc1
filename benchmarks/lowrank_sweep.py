"""Accuracy of the low-rank light branch on MiniLM across heavy ratios and ranks (torch, no export).

Run: .venv/bin/python benchmarks/lowrank_sweep.py [--calib-size 256] [--eval-size 256]
Prints a markdown table: FFN parameters kept, embedding cosine and retrieval agreement@10
of the split model against the original, on the bundled evaluation text.
"""

from __future__ import annotations

import argparse
import copy

from ffsplit.loading import load_model
from ffsplit.parity.check import run_torch
from ffsplit.parity.metrics import compare
from ffsplit.split.adapters import find_adapter
from ffsplit.split.apply import split_model
from ffsplit.split.calibration import calibration_texts, evaluation_texts
from ffsplit.split.compress import parse_light
from ffsplit.split.profile import profile_model

GRID = [(0.1, "lowrank:64"), (0.1, "lowrank:128"), (0.25, "lowrank:128"), (0.1, "lowrank:192"),
        (0.25, "lowrank:192"), (0.1, "lowrank:256"), (0.1, "none")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--eval-size", type=int, default=256)
    a = ap.parse_args()
    lm = load_model(a.model)
    adapter = find_adapter(lm.model)
    prof = profile_model(lm.model, adapter, lm.tokenizer, calibration_texts(limit=a.calib_size), progress=False)
    texts = [t.text for t in evaluation_texts(a.eval_size)]
    ref = run_torch(lm.model, lm.tokenizer, texts, lm.task, batch_size=32, max_length=128)
    print("| heavy ratio | light | FFN params kept | cosine mean | cosine min | retrieval@10 |")
    print("|---|---|---|---|---|---|")
    for ratio, spec in GRID:
        model = copy.deepcopy(lm.model)
        plans, _, _ = split_model(model, adapter, prof, heavy_ratio=ratio, recipe=parse_light(spec))
        r = compare(ref, run_torch(model, lm.tokenizer, texts, lm.task, batch_size=32, max_length=128))
        kept = sum(p.ffn_params_after for p in plans) / sum(p.ffn_params_before for p in plans)
        print(f"| {ratio} | {spec} | {kept:.1%} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['retrieval_at10']:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
