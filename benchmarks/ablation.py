"""FFSplit vs uniform compression vs a random split, at matched FFN budgets, on MiniLM (torch).

Run: .venv/bin/pip install -e '.[bench]' && .venv/bin/python benchmarks/ablation.py
Writes benchmarks/results/ablation.{md,json,png}.

For each compressor, at a matched FFN parameter (low rank, prune) or byte (int4)
budget:
* ffsplit: the top 10% of neurons by heavy-hitter score kept at full precision,
  the light rest compressed;
* uniform: the whole FFN compressed with the same compressor, its setting chosen
  to spend the same budget;
* random: a heavy branch of the same size chosen at random, the rest compressed
  like ffsplit.
Metrics against the original model on the bundled evaluation text (disjoint from
calibration): embedding cosine, retrieval agreement@10, and the accuracy of a
linear probe (logistic regression on the embeddings predicting which standard
library module a docstring came from; train and test texts disjoint).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ffsplit.loading import load_model
from ffsplit.parity.check import run_torch
from ffsplit.parity.metrics import compare
from ffsplit.split.adapters import find_adapter
from ffsplit.split.apply import split_layer
from ffsplit.split.calibration import calibration_texts, evaluation_texts
from ffsplit.split.compress import parse_light
from ffsplit.split.profile import LayerProfile, profile_model

RESULTS = Path(__file__).resolve().parent / "results"
HEAVY = 0.1


def apply(model, adapter, profiles: list[LayerProfile], *, heavy: int, recipe: str, heavy_precision: str = "fp32",  # noqa: ANN001
          random_seed: int | None = None) -> dict[str, int]:
    """Split every layer with ``heavy`` neurons kept (0: uniform); random heavy choice when a seed is given."""
    params = bytes_ = before = 0
    gen = torch.Generator().manual_seed(random_seed) if random_seed is not None else None
    for layer, prof in zip(adapter.layer_modules(model), profiles, strict=True):
        if gen is not None:
            prof = LayerProfile(scores=torch.rand(len(prof.scores), generator=gen, dtype=torch.float64),
                                mean_abs_act=prof.mean_abs_act, input_moment=prof.input_moment,
                                act_moment=prof.act_moment, tokens=prof.tokens, act_mean=prof.act_mean)
        ffn = adapter.weights(layer)
        res = split_layer(ffn, prof, heavy, parse_light(recipe), heavy_precision)
        adapter.install(layer, res.split)
        params += sum(p.numel() for p in res.split.parameters())
        bytes_ += res.nbytes("heavy") + res.nbytes("light") + (0 if res.split.bias is None else 4 * res.split.bias.numel())
        before += ffn.params()
    return {"ffn_params": params, "ffn_bytes": bytes_, "ffn_params_before": before, "ffn_bytes_before": 4 * before}


def probe_accuracy(emb: np.ndarray, labels: np.ndarray, train: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    x = normalize(emb)
    clf = LogisticRegression(max_iter=2000, C=10.0)
    clf.fit(x[train], labels[train])
    return float(clf.score(x[~train], labels[~train]))


def configs(d_model: int, d_ff: int) -> list[dict]:
    k = max(8, int(round(HEAVY * d_ff / 8)) * 8)
    light = d_ff - k
    out = []
    for rank in (64, 128, 192):
        # uniform rank with the same parameters: R' (d + d_ff) * 2 = k * 2d + R (d + light) * 2
        budget = 2 * k * d_model + 2 * rank * (d_model + light)
        uniform_rank = round(budget / (2 * (d_model + d_ff)))
        out.append({"compressor": "lowrank", "setting": f"R={rank}", "budget": "params", "runs": [
            ("ffsplit", k, f"lowrank:{rank}", "fp32", None), ("uniform", 0, f"lowrank:{uniform_rank}", "fp32", None),
            ("random", k, f"lowrank:{rank}", "fp32", 0)]})
    for p in (0.5, 0.75):
        kept = k + (light - int(np.ceil(p * light)))
        uniform_p = 1 - kept / d_ff
        out.append({"compressor": "prune", "setting": f"P={p}", "budget": "params", "runs": [
            ("ffsplit", k, f"prune:{p}", "fp32", None), ("uniform", 0, f"prune:{uniform_p:.4f}", "fp32", None),
            ("random", k, f"prune:{p}", "fp32", 0)]})
    # int4: ffsplit spends 10% at fp32; uniform spends the same bytes as finer blocks (block 8).
    out.append({"compressor": "int4", "setting": "heavy fp32", "budget": "bytes", "runs": [
        ("ffsplit", k, "int4", "fp32", None), ("uniform", 0, "int4:8", "fp32", None), ("random", k, "int4", "fp32", 0)]})
    # ... and with the heavy branch at int8 the bytes nearly match plain int4 block 32.
    out.append({"compressor": "int4", "setting": "heavy int8", "budget": "bytes", "runs": [
        ("ffsplit", k, "int4", "int8", None), ("uniform", 0, "int4", "fp32", None), ("random", k, "int4", "int8", 0)]})
    # int8 is NOT byte-matched: uniform int8 has no finer setting to spend the heavy branch's bytes on.
    out.append({"compressor": "int8", "setting": "heavy fp32", "budget": "unmatched", "runs": [
        ("ffsplit", k, "int8", "fp32", None), ("uniform", 0, "int8", "fp32", None), ("random", k, "int8", "fp32", 0)]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--calib-size", type=int, default=256)
    ap.add_argument("--min-per-class", type=int, default=10, help="probe classes: modules with at least this many texts")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(a.model)
    adapter = find_adapter(lm.model)
    profiles = profile_model(lm.model, adapter, lm.tokenizer, calibration_texts(limit=a.calib_size), progress=False)
    # Every evaluation text of the modules with enough texts for a probe; all metrics use these texts.
    every = evaluation_texts(10**6)
    counts = Counter(t.source for t in every)
    classes = sorted(s for s, n in counts.items() if n >= a.min_per_class)
    evals = [t for t in every if t.source in classes]
    texts = [t.text for t in evals]
    in_probe = np.ones(len(evals), bool)
    labels = np.array([t.source for t in evals])[in_probe]
    rng = np.random.default_rng(0)
    train = np.zeros(len(labels), bool)
    for c in classes:  # half of each class to train, half to test
        idx = np.flatnonzero(labels == c)
        train[rng.permutation(idx)[: len(idx) // 2]] = True
    ref = run_torch(lm.model, lm.tokenizer, texts, lm.task, batch_size=32, max_length=128)
    ref_emb = np.concatenate([(o * b["attention_mask"][..., None]).sum(1) / b["attention_mask"].sum(1, keepdims=True)
                              for o, b in zip(ref.outputs, ref.batches, strict=True)])
    base_probe = probe_accuracy(ref_emb[in_probe], labels, train)
    first = adapter.weights(adapter.layer_modules(lm.model)[0])
    rows = []
    for cfg in configs(first.w_in.shape[1], first.w_in.shape[0]):
        for method, k, recipe, heavy_precision, seed in cfg["runs"]:
            model = copy.deepcopy(lm.model)
            size = apply(model, adapter, profiles, heavy=k, recipe=recipe, heavy_precision=heavy_precision, random_seed=seed)
            out = run_torch(model, lm.tokenizer, texts, lm.task, batch_size=32, max_length=128)
            m = compare(ref, out)
            emb = np.concatenate([(o * b["attention_mask"][..., None]).sum(1) / b["attention_mask"].sum(1, keepdims=True)
                                  for o, b in zip(out.outputs, out.batches, strict=True)])
            row = {"compressor": cfg["compressor"], "setting": cfg["setting"], "budget": cfg["budget"], "method": method,
                   "recipe": recipe, "heavy": k, "heavy_precision": heavy_precision, **size,
                   "cosine_mean": m["cosine_mean"], "cosine_min": m["cosine_min"],
                   "retrieval_at10": m["retrieval_at10"], "probe_accuracy": probe_accuracy(emb[in_probe], labels, train)}
            rows.append(row)
            print(f"{row['compressor']:<8} {row['setting']:<11} {method:<8} {recipe:<18} bytes {size['ffn_bytes'] / size['ffn_bytes_before']:.3f} "
                  f"params {size['ffn_params'] / size['ffn_params_before']:.3f} cos {m['cosine_mean']:.4f} "
                  f"r@10 {m['retrieval_at10']:.3f} probe {row['probe_accuracy']:.3f}", flush=True)
    write(Path(a.out), rows, base_probe, len(classes), int(in_probe.sum()), a)


def write(out: Path, rows: list[dict], base_probe: float, n_classes: int, n_probe: int, a: argparse.Namespace) -> None:
    import onnxruntime
    import transformers

    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": a.model, "calib_texts": a.calib_size, "eval_texts": n_probe, "probe_classes": n_classes,
            "probe_texts": n_probe, "original_probe_accuracy": base_probe, "heavy_ratio": HEAVY,
            "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}",
            "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__}
    (out / "ablation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = [
        "# FFSplit ablation on MiniLM (torch)", "",
        "Made by `.venv/bin/python benchmarks/ablation.py`. "
        f"Probe: logistic regression over {n_classes} standard-library modules, {n_probe} texts, half train / half test; "
        f"the original model scores {base_probe:.3f}.", "",
        "| compressor | setting | method | recipe | heavy | FFN bytes kept | FFN params kept | cosine mean | cosine min | retrieval@10 | probe acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['compressor']} | {r['setting']} | {r['method']} | {r['recipe']} | {r['heavy']} {r['heavy_precision']} | "
            f"{r['ffn_bytes'] / r['ffn_bytes_before']:.1%} | {r['ffn_params'] / r['ffn_params_before']:.1%} | "
            f"{r['cosine_mean']:.4f} | {r['cosine_min']:.4f} | {r['retrieval_at10']:.3f} | {r['probe_accuracy']:.3f} |"
        )
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot written")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    style = {"ffsplit": ("o", "tab:blue"), "uniform": ("s", "tab:orange"), "random": ("^", "tab:gray")}
    for method, (marker, colour) in style.items():
        pts = [r for r in rows if r["method"] == method]
        ax.scatter([r["ffn_bytes"] / r["ffn_bytes_before"] for r in pts], [r["retrieval_at10"] for r in pts],
                   marker=marker, color=colour, label=method, s=50)
        for r in pts:
            ax.annotate(f"{r['compressor']} {r['setting']}", (r["ffn_bytes"] / r["ffn_bytes_before"], r["retrieval_at10"]),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("FFN bytes kept (fraction of fp32)")
    ax.set_ylabel("retrieval agreement@10 vs original")
    ax.set_title("MiniLM: FFSplit vs uniform vs random split at matched budgets")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)


if __name__ == "__main__":
    main()
