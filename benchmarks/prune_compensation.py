"""How much a pruned light branch costs MiniLM, and how much a least-squares compensation buys back (torch only).

Run: .venv/bin/python benchmarks/prune_compensation.py [--calib 256]

Per layer, the heavy 10% of FFN neurons (by ffsplit's score, mean |a| x ||W_out column||) are kept and the
lowest-scoring fraction P of the rest is removed from the down-projection, two ways:

* ``mean``: what ``--light prune:P`` does, each removed neuron's mean activation folded into the output bias;
* ``least squares``: the removed neurons' activations regressed on the kept ones over the calibration tokens
  (centred, ridge ``lam`` x the mean diagonal), the regression folded into the kept columns and the bias:
  what a compensated prune could do with the second moments the profile already gathers for low rank.

Accuracy against the original on the held-out evaluation texts (every one after the first 256): retrieval@10
and pooled cosine, as benchmarks/peers.py measures them. Prints one line per variant; nothing is written.
"""

from __future__ import annotations

import argparse
import copy
import math

import torch

from ffsplit.loading import load_model
from ffsplit.parity.check import run_torch
from ffsplit.parity.metrics import Outputs, compare
from ffsplit.split.calibration import calibration_texts, encode_batches, evaluation_texts

HEAVY = 0.10


def activations(model: torch.nn.Module, tokenizer, texts: list[str]) -> dict[int, torch.Tensor]:  # noqa: ANN001
    """Each layer's FFN activations (GELU output) on the real calibration tokens, float64."""
    seen: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(model.encoder.layer))}
    masks = []
    hooks = [layer.intermediate.register_forward_hook(lambda m, i, o, k=k: seen[k].append(o.detach()))
             for k, layer in enumerate(model.encoder.layer)]
    with torch.no_grad():
        for batch in encode_batches(tokenizer, texts, batch_size=32, max_length=128):
            model(**batch)
            masks.append(batch["attention_mask"].bool())
    for h in hooks:
        h.remove()
    return {k: torch.cat([a[m] for a, m in zip(v, masks, strict=True)]).double() for k, v in seen.items()}


def pruned(model: torch.nn.Module, acts: dict[int, torch.Tensor], p: float, how: str, lam: float) -> torch.nn.Module:
    out = copy.deepcopy(model)
    for k, layer in enumerate(out.encoder.layer):
        w, b, a = layer.output.dense.weight.data.double(), layer.output.dense.bias.data.double(), acts[k]
        order = torch.argsort(a.abs().mean(0) * w.norm(dim=0), descending=True)
        heavy = round(HEAVY * a.shape[1])
        light = order[heavy:]
        dropped = light[len(light) - math.ceil(p * len(light)):]
        kept = torch.sort(torch.cat([order[:heavy], light[: len(light) - len(dropped)]])).values
        mu = a.mean(0)
        w2 = w.clone()
        if how == "mean":
            b = b + w[:, dropped] @ mu[dropped]
        else:
            ak, ad = a[:, kept] - mu[kept], a[:, dropped] - mu[dropped]
            gram = ak.T @ ak
            gram += lam * gram.diagonal().mean() * torch.eye(len(kept), dtype=gram.dtype)
            coef = torch.linalg.solve(gram, ak.T @ ad)  # (kept, dropped)
            w2[:, kept] += w[:, dropped] @ coef.T
            b = b + w[:, dropped] @ (mu[dropped] - coef.T @ mu[kept])
        w2[:, dropped] = 0
        layer.output.dense.weight.data, layer.output.dense.bias.data = w2.float(), b.float()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calib", type=int, default=256, help="calibration texts")
    a = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model("minilm")
    acts = activations(lm.model.eval(), lm.tokenizer, calibration_texts(limit=a.calib))
    print(f"calibration tokens: {len(acts[0])}")
    held = [t.text for t in evaluation_texts(10**6)[256:]]
    ref = run_torch(lm.model, lm.tokenizer, held, lm.task, batch_size=32, max_length=128)
    for p in (0.25, 0.5):
        for how, lam in (("mean", 0.0), ("least squares", 1e-3), ("least squares", 1e-2), ("least squares", 1e-1)):
            out = run_torch(pruned(lm.model, acts, p, how, lam), lm.tokenizer, held, lm.task, batch_size=32,
                            max_length=128)
            m = compare(ref, Outputs(out.outputs, ref.batches))
            print(f"prune {p:g}, {how}{f' (lam {lam:g})' if lam else ''}: retrieval@10 {m['retrieval_at10']:.3f}, "
                  f"cosine min {m['cosine_min']:.4f}, mean {m['cosine_mean']:.4f}", flush=True)


if __name__ == "__main__":
    main()
