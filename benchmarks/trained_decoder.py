"""A small decoder that is actually trained, so int4 recipes can be compared on accuracy.

    python benchmarks/trained_decoder.py --out ~/.cache/ffsplit/trained-llama --minutes 10

Random weights have no heavy hitters, so they cannot show what the split is
worth. This trains a Llama-shaped model (hidden 256, 4 layers, FFN 1024, tied
embeddings, MiniLM's tokenizer) from scratch on the Python standard library's
docstrings, which ffsplit already reads at run time for its bundled
calibration and evaluation texts. Every paragraph ffsplit holds out for
evaluation (the same hash rule) is left out of training, so accuracy measured
on ffsplit's evaluation texts is measured on held-out text. The model is
written as safetensors (fp32) with the tokenizer; it is generated, cached,
never committed. Seeds are fixed; the training is time-boxed, so the number
of steps (recorded in ``training.json`` beside the weights) depends on the
machine.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sysconfig
import time
from pathlib import Path

SHAPE = {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 512, "tie_word_embeddings": True}
SEQ = 128
BATCH = 16


def training_text() -> list[str]:
    """Docstring paragraphs of every standard-library module, without those ffsplit holds out."""
    from ffsplit.split.calibration import _docstrings, _is_eval, _paragraphs

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out = []
    for path in sorted(stdlib.rglob("*.py")):
        if "test" in path.parts or "site-packages" in path.parts or "idlelib" in path.parts:
            continue
        for doc in _docstrings(path):
            for para in _paragraphs(doc):
                if para not in seen and not _is_eval(para):
                    seen.add(para)
                    out.append(para)
    return out


def train(out: Path, minutes: float, seed: int = 0) -> dict:
    import torch
    import transformers

    from ffsplit.loading import resolve_model, set_offline

    set_offline()
    torch.manual_seed(seed)
    tok_dir = resolve_model("minilm")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    ids: list[int] = []
    for para in training_text():
        ids += tokenizer(para, add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]
    data = torch.tensor(ids, dtype=torch.long)
    cfg = transformers.LlamaConfig(vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, **SHAPE)
    model = transformers.LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    start, step, losses = time.perf_counter(), 0, []
    budget = minutes * 60
    while time.perf_counter() - start < budget:
        frac = (time.perf_counter() - start) / budget
        for group in opt.param_groups:  # warm-up, then cosine decay over the time budget
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[s:s + SEQ] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            print(f"step {step}, {time.perf_counter() - start:.0f} s, loss {sum(losses[-50:]) / 50:.3f}", flush=True)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.eval().save_pretrained(tmp, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(tok_dir / name, tmp / name)
    record = {"steps": step, "tokens_seen": step * BATCH * SEQ, "corpus_tokens": len(data), "seconds": round(budget),
              "final_loss": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 3), "shape": SHAPE, "seed": seed}
    (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path.home() / ".cache" / "ffsplit" / "trained-llama")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--force", action="store_true", help="train again even if --out holds a model")
    a = p.parse_args()
    if (a.out / "training.json").is_file() and not a.force:
        print(f"{a.out} holds a trained model ({(a.out / 'training.json').read_text().strip()}); --force trains again")
        return
    print(json.dumps(train(a.out, a.minutes)))


if __name__ == "__main__":
    main()
