"""ffsplit against what a user would ship instead, on MiniLM, measured side by side in one process.

Run: .venv/bin/pip install -e '.[bench,openvino]' && .venv/bin/python benchmarks/peers.py
Writes benchmarks/results/peers.{md,json,png}. About 20 minutes on 2 cores.

Peers (all from the same dynamo export of the original model):
* original fp32 ONNX in ONNX Runtime (what ``torch.onnx.export`` gives);
* ONNX Runtime's transformer optimizer on it;
* ONNX Runtime dynamic int8 quantisation of the whole model (``quantize_dynamic``, per channel);
* uniform low rank of every FFN at the FFN parameter count of ffsplit's low-rank point, exported the same way;
* OpenVINO on the original (fp32 inference precision).
ffsplit points: ``ffsplit export`` artifacts (light lowrank, light int8 on cpu-int8, light int4,
heavy-int8 + light-int4, a budget-mode plan, and cpu-int8-full at heavy ratios 0.1 / 0.2 / 0.3),
and cpu-int8-full again after ONNX Runtime's transformer optimizer, kept only if the
separation guard still passes on it.

Per model: p50 / p90 latency at batch 1, 8 and 32 x sequence 128 and batch 1 x 512 (runs
interleaved across models, warm-up excluded), throughput, size on disk, peak resident memory of a
process that loads the model and runs batch 8 x 128 once, and accuracy against the original torch
model on the bundled evaluation text: pooled-embedding cosine (mean, min), retrieval agreement@10
and linear-probe accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections import Counter
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))


def _peak_rss_mb(model: Path, runtime: str) -> float:
    """Peak RSS (VmHWM) of a fresh process that loads ``model`` and runs batch 8 x 128 once.

    Not ru_maxrss: Linux carries that across exec from the forked parent, so every child would report this
    process's size.
    """
    code = f"""
import numpy as np
ids = np.full((8, 128), 2023, dtype=np.int64)
feed = {{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}}
if {runtime!r} == "openvino":
    import openvino as ov
    c = ov.Core().compile_model({str(model)!r}, "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
    names = {{i.get_any_name() for i in c.inputs}}
    c.create_infer_request().infer({{k: v for k, v in feed.items() if k in names}})
else:
    import onnxruntime as ort
    so = ort.SessionOptions(); so.log_severity_level = 3
    s = ort.InferenceSession({str(model)!r}, so, providers=["CPUExecutionProvider"])
    names = {{i.name for i in s.get_inputs()}}
    s.run(None, {{k: v for k, v in feed.items() if k in names}})
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _size_mb(model: Path) -> float:
    files = [model, *model.parent.glob(model.name + ".data")]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def _embeddings(outputs: list[np.ndarray], batches: list[dict]) -> np.ndarray:
    return np.concatenate([(o * b["attention_mask"][..., None]).sum(1) / b["attention_mask"].sum(1, keepdims=True)
                           for o, b in zip(outputs, batches, strict=True)])


def _machine() -> dict[str, Any]:
    import onnxruntime
    import torch
    import transformers

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import openvino

        info["openvino"] = openvino.__version__
    except ImportError:
        pass
    return info


def build(work: Path, budget: bool, log: Any) -> list[dict[str, Any]]:
    """Every configuration: name, kind (peer / ffsplit), ONNX path, runtime, and its export manifest if any."""
    import onnx_ir as ir
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from ffsplit import api
    from ffsplit.exporter import export_program, save_model
    from ffsplit.graph_passes import (
        check_separation,
        expected_matmuls,
        expected_precisions,
        records_from_onnx,
    )
    from ffsplit.graph_passes.cleanup_graph_pass import CleanupGraphPass
    from ffsplit.graph_passes.remove_softmax_nan_guard_pass import RemoveSoftmaxNanGuardPass
    from ffsplit.loading import load_model
    from ffsplit.split.adapters import find_adapter
    from ffsplit.split.calibration import calibration_texts
    from ffsplit.split.profile import profile_model

    lm = load_model("minilm")
    configs: list[dict[str, Any]] = []

    def peer(name: str, path: Path, runtime: str = "onnxruntime") -> None:
        configs.append({"name": name, "kind": "peer", "model": path, "runtime": runtime})

    original = work / "original" / "model.onnx"
    if not original.is_file():
        original.parent.mkdir(parents=True, exist_ok=True)
        save_model(export_program(lm.model, lm.tokenizer, lm.task), original)
    peer("original fp32 (ORT)", original)
    # ffsplit's target-independent rewrites alone (cleanup, NaN guards), to tell their share from the split's
    cleaned = work / "original-cleaned" / "model.onnx"
    if not cleaned.is_file():
        cleaned.parent.mkdir(parents=True, exist_ok=True)
        program = ir.load(original)
        for p in (CleanupGraphPass(), RemoveSoftmaxNanGuardPass()):
            p(program)
        save_model(program, cleaned)
    configs.append({"name": "original fp32 + ffsplit's generic rewrites only", "kind": "reference", "model": cleaned,
                    "runtime": "onnxruntime"})
    opt = work / "ort-optimizer" / "model.onnx"
    if not opt.is_file():
        opt.parent.mkdir(parents=True, exist_ok=True)
        optimize_model(str(original), model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(str(opt))
    peer("ORT transformer optimizer", opt)
    q = work / "ort-int8" / "model.onnx"
    if not q.is_file():
        q.parent.mkdir(parents=True, exist_ok=True)
        quantize_dynamic(str(original), str(q), weight_type=QuantType.QInt8, per_channel=True)
    peer("ORT dynamic int8 (whole model)", q)

    # uniform low rank at ffsplit's lowrank:128 FFN parameter count (same formula as benchmarks/ablation.py)
    from ablation import apply

    first = find_adapter(lm.model).weights(find_adapter(lm.model).layer_modules(lm.model)[0])
    d_ff, d_model = first.w_in.shape
    k = max(8, int(round(0.1 * d_ff / 8)) * 8)
    uniform_rank = round((2 * k * d_model + 2 * 128 * (d_model + d_ff - k)) / (2 * (d_model + d_ff)))
    uni = work / f"uniform-lowrank{uniform_rank}" / "model.onnx"
    if not uni.is_file():
        import copy

        uni.parent.mkdir(parents=True, exist_ok=True)
        adapter = find_adapter(lm.model)
        profiles = profile_model(lm.model, adapter, lm.tokenizer, calibration_texts(limit=256), progress=False)
        model = copy.deepcopy(lm.model)
        with torch.no_grad():
            apply(model, adapter, profiles, heavy=0, recipe=f"lowrank:{uniform_rank}")
        program = export_program(model, lm.tokenizer, lm.task)
        for p in (CleanupGraphPass(), RemoveSoftmaxNanGuardPass()):
            p(program)
        save_model(program, uni)
    peer(f"uniform lowrank:{uniform_rank} (same FFN params as ffsplit lowrank:128)", uni)
    if find_spec("openvino") is not None:
        peer("OpenVINO fp32 (original)", original, "openvino")

    loose = {"cosine_mean": 0.0, "cosine_min": 0.0, "retrieval_at10": 0.0}
    runs = [
        ("ffsplit lowrank:128", {"light": "lowrank:128"}),
        ("ffsplit light int8 (cpu-int8)", {"target": "cpu-int8"}),
        ("ffsplit light int4", {"light": "int4:32"}),
        ("ffsplit heavy int8 + light int4", {"light": "int4:32", "heavy": "int8"}),
        ("ffsplit cpu-int8-full, heavy 0.1", {"target": "cpu-int8-full"}),
        ("ffsplit cpu-int8-full, heavy 0.2", {"target": "cpu-int8-full", "heavy_ratio": 0.2}),
        ("ffsplit cpu-int8-full, heavy 0.3", {"target": "cpu-int8-full", "heavy_ratio": 0.3}),
    ]
    if budget:
        runs.append(("ffsplit budget ffn-params=0.5", {"budget": "ffn-params=0.5"}))
    for name, kwargs in runs:
        out = work / name.replace(" ", "_").replace(":", "").replace(",", "").replace("(", "").replace(")", "")
        if not (out / "manifest.json").is_file():
            log(f"exporting {name} ...")
            t0 = time.perf_counter()
            api.export("minilm", out, limits=loose, force=True, progress=False, **kwargs)
            log(f"  {time.perf_counter() - t0:.0f} s")
        manifest = json.loads((out / "manifest.json").read_text())
        configs.append({"name": name, "kind": "ffsplit", "model": out / "model.onnx", "runtime": "onnxruntime",
                        "manifest": manifest})
    # cpu-int8-full after the ORT transformer optimizer, if the branches survive it
    base = next(c for c in configs if c["name"] == "ffsplit cpu-int8-full, heavy 0.2")
    fused = work / "ffsplit-int8-full-h02-ort-optimizer" / "model.onnx"
    if not fused.is_file():
        fused.parent.mkdir(parents=True, exist_ok=True)
        optimize_model(str(base["model"]), model_type="bert", num_heads=12, hidden_size=384).save_model_to_file(str(fused))
    layers = base["manifest"]["layers"]
    _, _, findings = check_separation(records_from_onnx(ir.load(fused)), expected_matmuls(layers), expected_precisions(layers))
    if findings:
        log(f"ORT optimizer merged branches, point dropped: {findings[0]}")
    else:
        configs.append({"name": "ffsplit cpu-int8-full, heavy 0.2 + ORT transformer optimizer", "kind": "ffsplit", "model": fused,
                        "runtime": "onnxruntime", "manifest": base["manifest"]})
    return configs


def _runner(cfg: dict[str, Any]) -> Any:
    from ffsplit.runtimes.base import make_runner
    from ffsplit.runtimes.targets import load_target

    target = load_target("openvino" if cfg["runtime"] == "openvino" else "cpu")
    return make_runner(cfg["model"], target).activate()


def accuracy(configs: list[dict[str, Any]], log: Any) -> dict[str, Any]:
    from ablation import probe_accuracy

    from ffsplit.loading import load_model
    from ffsplit.parity.check import run_torch
    from ffsplit.parity.metrics import Outputs, compare
    from ffsplit.split.calibration import evaluation_texts

    lm = load_model("minilm")
    every = evaluation_texts(10**6)
    counts = Counter(t.source for t in every)
    classes = sorted(s for s, n in counts.items() if n >= 10)
    evals = [t for t in every if t.source in classes]
    texts = [t.text for t in evals]
    labels = np.array([t.source for t in evals])
    rng = np.random.default_rng(0)
    train = np.zeros(len(labels), bool)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        train[rng.permutation(idx)[: len(idx) // 2]] = True
    ref = run_torch(lm.model, lm.tokenizer, texts, lm.task, batch_size=32, max_length=128)
    base = {"probe_accuracy": probe_accuracy(_embeddings(ref.outputs, ref.batches), labels, train)}
    for cfg in configs:
        log(f"accuracy: {cfg['name']}")
        runner = _runner(cfg)
        names = set(runner.input_signature())
        outs = [runner.infer({k: v for k, v in b.items() if k in names})["last_hidden_state"] for b in ref.batches]
        runner.deactivate()
        m = compare(ref, Outputs(outs, ref.batches))
        cfg["accuracy"] = {"cosine_mean": m["cosine_mean"], "cosine_min": m["cosine_min"],
                           "retrieval_at10": m["retrieval_at10"],
                           "probe_accuracy": probe_accuracy(_embeddings(outs, ref.batches), labels, train)}
    return {"texts": len(texts), "probe_classes": len(classes), "original_probe_accuracy": base["probe_accuracy"]}


def latency(configs: list[dict[str, Any]], shapes: list[tuple[int, int]], runs: int, log: Any) -> None:
    from ffsplit.bench.harness import make_feed, time_interleaved
    from ffsplit.loading import load_model
    from ffsplit.split.calibration import evaluation_texts

    tok = load_model("minilm").tokenizer
    texts = [t.text for t in evaluation_texts(64)]
    runners = {c["name"]: _runner(c) for c in configs}
    for b, s in shapes:
        log(f"timing batch {b} x {s} ...")
        feed = make_feed(tok, texts, ["input_ids", "attention_mask", "token_type_ids"], batch=b, sequence=s)
        n = max(5, runs // (4 if b * s >= 4096 else 1))
        times = time_interleaved(runners, feed, warmup=3, runs=n)
        for cfg in configs:
            arr = np.asarray(times[cfg["name"]]) * 1000
            cfg.setdefault("latency", {})[f"{b}x{s}"] = {
                "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)), "runs": len(arr),
                "seq_per_s": float(b / np.percentile(arr, 50) * 1000),
            }
    for r in runners.values():
        r.deactivate()


def pipeline_cost(work: Path) -> dict[str, float]:
    """Wall time and peak memory (VmHWM) of one full ``ffsplit export`` of MiniLM (cpu-int8-full), in a fresh process."""
    out = work / "pipeline-timing"
    shutil.rmtree(out, ignore_errors=True)
    code = (
        "from ffsplit.cli import main\n"
        f"rc = main(['export', 'minilm', '--out', {str(out)!r}, '--target', 'cpu-int8-full'])\n"
        "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024, rc)\n"
    )
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    peak, rc = done.stdout.strip().splitlines()[-1].split()
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(float(peak), 1), "exit_code": int(rc)}


def goals(configs: list[dict[str, Any]]) -> list[str]:
    key = "8x128"
    base = next(c for c in configs if c["name"] == "original fp32 (ORT)")["latency"][key]["p50_ms"]
    ours = [c for c in configs if c["kind"] == "ffsplit"]

    def dominates(c: dict[str, Any], p: dict[str, Any]) -> bool:
        return (c["latency"][key]["p50_ms"] < p["latency"][key]["p50_ms"]
                and c["accuracy"]["retrieval_at10"] >= p["accuracy"]["retrieval_at10"]
                and c["accuracy"]["cosine_mean"] >= p["accuracy"]["cosine_mean"])

    lines = []
    peers = [c for c in configs if c["kind"] == "peer"]
    every = [c["name"] for c in ours if all(dominates(c, p) for p in peers)]
    lines.append(
        "- One ffsplit configuration faster and at least as accurate (cosine mean and retrieval@10) as every peer "
        "at batch 8 x 128: " + (", ".join(every) if every else
                                "**missed**: the lossless peers (fp32 ORT, ORT optimizer, OpenVINO fp32) are exact, so "
                                "only an exact configuration could match their accuracy, and none is faster than the "
                                "fastest lossy peer")
    )
    for p in peers:
        beat = [c["name"] for c in ours if dominates(c, p)]
        lines.append(f"  - {p['name']}: " + (f"dominated by {', '.join(beat)}" if beat else "not dominated"))
    ok = [c for c in ours if c["accuracy"]["retrieval_at10"] >= 0.95 and c["accuracy"]["cosine_mean"] >= 0.99]
    if ok:
        best = max(ok, key=lambda c: base / c["latency"][key]["p50_ms"])
        speed = base / best["latency"][key]["p50_ms"]
        verdict = "met" if speed >= 2 else f"**missed by {2 - speed:.2f}x**"
        lines.append(f"- >= 2x at batch 8 x 128 with retrieval@10 >= 0.95 and cosine mean >= 0.99: best such point is "
                     f"{best['name']}, {speed:.2f}x at retrieval@10 {best['accuracy']['retrieval_at10']:.3f} ({verdict})")
    else:
        fastest = max(ours, key=lambda c: base / c["latency"][key]["p50_ms"])
        lines.append("- >= 2x at batch 8 x 128 with retrieval@10 >= 0.95 and cosine mean >= 0.99: **missed**: no ffsplit "
                     f"point reaches that accuracy; the fastest, {fastest['name']}, is "
                     f"{base / fastest['latency'][key]['p50_ms']:.2f}x at retrieval@10 "
                     f"{fastest['accuracy']['retrieval_at10']:.3f}")
    return lines


def write(configs: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: (str(v) if isinstance(v, Path) else v) for k, v in c.items() if k != "manifest"} for c in configs]
    (out / "peers.json").write_text(json.dumps({"meta": meta, "configs": rows}, indent=1))
    base = {k: v["p50_ms"] for k, v in configs[0]["latency"].items()}
    shapes = list(base)
    head = ("| kind | configuration | " + " | ".join(f"p50 / p90 ms {s}" for s in shapes)
            + " | speedup 8x128 | seq/s 8x128 | size MB | peak RSS MB | cosine mean | cosine min | retrieval@10 | probe acc |")
    lines = [
        "# ffsplit vs peers on all-MiniLM-L6-v2", "",
        "Command: `python benchmarks/peers.py` (one process, same inputs, runs interleaved, warm-up excluded).", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()), "",
        f"Accuracy against the original torch model on {meta['accuracy']['texts']} evaluation texts "
        f"(original probe accuracy {meta['accuracy']['original_probe_accuracy']:.3f} over "
        f"{meta['accuracy']['probe_classes']} classes).", "",
        head, "|" + "---|" * (head.count("|") - 1),
    ]
    for c in configs:
        lat = c["latency"]
        a = c["accuracy"]
        lines.append(
            f"| {c['kind']} | {c['name']} | " + " | ".join(f"{lat[s]['p50_ms']:.1f} / {lat[s]['p90_ms']:.1f}" for s in shapes)
            + f" | {base['8x128'] / lat['8x128']['p50_ms']:.2f}x | {lat['8x128']['seq_per_s']:.1f} | {c['size_mb']:.1f} | "
            f"{c['peak_rss_mb']:.0f} | {a['cosine_mean']:.4f} | {a['cosine_min']:.4f} | {a['retrieval_at10']:.3f} | "
            f"{a['probe_accuracy']:.3f} |"
        )
    lines += ["", "## Goals", "", *goals(configs),
              f"- profile + split + export + build + check of MiniLM (cpu-int8-full): {meta['pipeline']['wall_s']} s wall, "
              f"{meta['pipeline']['peak_rss_mb']:.0f} MB peak RSS (goal: under 60 s and 3 GB)", ""]
    if meta.get("profile"):
        lines += ["## Where the time goes (ORT profiler, batch 8 x 128, share of kernel time)", ""]
        for name, ops in meta["profile"].items():
            lines.append(f"- {name}: " + ", ".join(f"{op} {share:.0%}" for op, share in ops))
        lines.append("")
    (out / "peers.md").write_text("\n".join(lines))
    _plot(configs, out / "peers.png")


def _plot(configs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for c in configs:
        x = c["latency"]["8x128"]["p50_ms"]
        y = c["accuracy"]["retrieval_at10"]
        style = {"peer": ("s", "tab:gray"), "reference": ("^", "tab:olive")}.get(c["kind"], ("o", "tab:blue"))
        ax.scatter(x, y, marker=style[0], color=style[1], s=60)
        ax.annotate(c["name"].replace("ffsplit ", ""), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("p50 latency, batch 8 x 128 (ms, lower is better)")
    ax.set_ylabel("retrieval agreement@10 vs original (higher is better)")
    ax.set_title("MiniLM: accuracy vs latency (squares: peers, circles: ffsplit, triangle: generic rewrites only)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def profile_ops(configs: list[dict[str, Any]], names: list[str]) -> dict[str, list[tuple[str, float]]]:
    import onnxruntime as ort

    from ffsplit.bench.harness import make_feed
    from ffsplit.loading import load_model
    from ffsplit.split.calibration import evaluation_texts

    tok = load_model("minilm").tokenizer
    feed = make_feed(tok, [t.text for t in evaluation_texts(16)], ["input_ids", "attention_mask", "token_type_ids"],
                     batch=8, sequence=128)
    out = {}
    for cfg in configs:
        if cfg["name"] not in names:
            continue
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.enable_profiling = True
        s = ort.InferenceSession(str(cfg["model"]), so, providers=["CPUExecutionProvider"])
        inputs = {i.name for i in s.get_inputs()}
        for _ in range(5):
            s.run(None, {k: v for k, v in feed.items() if k in inputs})
        trace = s.end_profiling()
        per_op: Counter[str] = Counter()
        for e in json.loads(Path(trace).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                per_op[e["args"]["op_name"]] += e["dur"]
        Path(trace).unlink()
        total = sum(per_op.values())
        out[cfg["name"]] = [(op, d / total) for op, d in per_op.most_common(6)]
    return out


def replot(results: Path) -> None:
    """Redraw peers.png from peers.json (no re-measuring)."""
    data = json.loads((results / "peers.json").read_text())
    _plot(data["configs"], results / "peers.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "ffsplit" / "peers"), help="where models are built")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per model at the small shapes")
    ap.add_argument("--no-budget", action="store_true", help="skip the budget-mode point (its export takes ~2 min)")
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def log(msg: str) -> None:
        print(f"[peers] {msg}", file=sys.stderr, flush=True)

    work = Path(a.work)
    configs = build(work, not a.no_budget, log)
    for c in configs:
        c["size_mb"] = _size_mb(c["model"])
        c["peak_rss_mb"] = _peak_rss_mb(c["model"], c["runtime"])
    meta: dict[str, Any] = {"machine": _machine(), "accuracy": accuracy(configs, log)}
    latency(configs, [(1, 128), (8, 128), (32, 128), (1, 512)], a.runs, log)
    meta["profile"] = profile_ops(configs, ["original fp32 (ORT)", "ORT dynamic int8 (whole model)",
                                            "ffsplit cpu-int8-full, heavy 0.2 + ORT transformer optimizer"])
    meta["pipeline"] = pipeline_cost(work)
    write(configs, meta, Path(a.out))
    print((Path(a.out) / "peers.md").read_text())


if __name__ == "__main__":
    main()
