"""ffsplit against the strongest recipes a user would pick instead, on MiniLM, measured side by side in one process.

Run: .venv/bin/pip install -e '.[bench]' && .venv/bin/python benchmarks/peers.py
Writes benchmarks/results/peers.{md,json,png}. About 35 minutes on 2 cores. ``--profile`` (after a run,
models cached in ``--work``) writes peers-profile.md: OpenVINO's per-node counters of each OpenVINO point.

Peers (every one from the same dynamo export of the original model, with ffsplit's exact generic
rewrites, the ones ``ffsplit bench`` gives its baseline):
* ONNX Runtime fp32;
* ONNX Runtime fp32 + onnxscript's ``optimize_for_ort`` fusions (Attention, SkipLayerNormalization, BiasGelu);
* that + ONNX Runtime dynamic int8 (``quantize_dynamic``, per channel, its defaults otherwise);
* ONNX Runtime static QDQ int8 (``quantize_static``, per channel, MinMax on 128 calibration texts);
* OpenVINO fp32;
* OpenVINO + NNCF static int8 (``model_type=TRANSFORMER``, 128 calibration texts): the recipe
  sentence-transformers recommends on CPU;
* that with the FFN down-projections in NNCF's ignored scope: NNCF's way to more accuracy (those
  multiplies take the activations with outliers), the peer to compare with at equal accuracy.
ffsplit points are ``ffsplit export`` artifacts for the cpu-int8, cpu-int8-full and openvino-int8
targets (a few heavy ratios), run exactly as they ship.

Speed: p50 latency at batch 1 and 8 x sequence 128, every model in this process, timed in blocks
interleaved across models with worker-thread spinning off for every ONNX Runtime session (see
``ffsplit.bench.harness``), warm-up excluded. Accuracy against the original torch model on the
bundled evaluation texts that no export check uses (every one after the first 256):
pooled-embedding cosine (mean, min), retrieval agreement@10 and linear-probe accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))
CALIBRATION = 128  # texts, for every static int8 recipe (peers); ffsplit's exports use their default 256
HELD_OUT_FROM = 256  # export checks use the first 256 evaluation texts
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
DEMO_FLOOR = 0.96  # make demo takes the fastest point holding this retrieval@10


def _peak_rss_mb(model: Path, runtime: str) -> float:
    """Peak RSS (VmHWM) of a fresh process that loads ``model`` and runs batch 8 x 128 once (not ru_maxrss:
    Linux carries that across exec from the forked parent)."""
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
    """On disk: the ONNX file and its external data, or an OpenVINO IR's .xml and .bin."""
    files = [model, *model.parent.glob(model.name + ".data")]
    if model.suffix == ".xml":
        files.append(model.with_suffix(".bin"))
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def _machine() -> dict[str, Any]:
    import onnxruntime
    import openvino
    import torch
    import transformers

    cpu = platform.processor()
    flags = ""
    with contextlib.suppress(OSError, StopIteration):
        info = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        have = set(next(line.split(":", 1)[1].split() for line in info if line.startswith("flags")))
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in have)
    return {"cpu": cpu, "cpu flags": flags, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def _calibration_feeds(tokenizer: Any) -> list[dict[str, np.ndarray]]:
    from ffsplit.split.calibration import calibration_feeds, calibration_texts

    return calibration_feeds(tokenizer, calibration_texts(limit=CALIBRATION), max_length=128, names=set(INPUTS))


def build(work: Path, log: Any) -> list[dict[str, Any]]:
    """Every configuration: name, kind (peer / ffsplit), model file, runtime, and its export manifest if any."""
    import onnx_ir as ir
    import openvino as ov
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    from ffsplit import api
    from ffsplit.exporter import export_program, save_model
    from ffsplit.graph_passes.pipeline import generic_passes, run_passes
    from ffsplit.loading import load_model

    lm = load_model("minilm")
    configs: list[dict[str, Any]] = []

    def add(name: str, kind: str, path: Path, runtime: str = "onnxruntime", manifest: dict | None = None) -> None:
        configs.append({"name": name, "kind": kind, "model": path, "runtime": runtime, "manifest": manifest})

    def made(path: Path, make: Any) -> Path:
        if not path.is_file():
            log(f"building {path.parent.name} ...")
            path.parent.mkdir(parents=True, exist_ok=True)
            make(path)
        return path

    original = made(work / "original" / "model.onnx", lambda p: save_model(
        run_passes(export_program(lm.model, lm.tokenizer, lm.task), generic_passes())[0], p))
    add("ORT fp32", "peer", original)
    fused = made(work / "ort-fused" / "model.onnx", lambda p: ir.save(optimize_for_ort(ir.load(original))[0], p))
    add("ORT fp32 + onnxscript fusions", "peer", fused)
    add("ORT fused + dynamic int8 (per channel)", "peer", made(
        work / "ort-fused-dynamic-int8" / "model.onnx",
        lambda p: quantize_dynamic(fused, p, weight_type=QuantType.QInt8, per_channel=True)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(_calibration_feeds(lm.tokenizer))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    add("ORT static QDQ int8 (per channel, MinMax)", "peer", made(
        work / "ort-static-qdq" / "model.onnx",
        lambda p: quantize_static(original, p, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                  activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                  op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax)))
    add("OpenVINO fp32", "peer", original, "openvino")

    def nncf_int8(path: Path, ignored: list[str] | None = None) -> None:
        import nncf

        model = nncf.quantize(ov.convert_model(str(original)), nncf.Dataset(_calibration_feeds(lm.tokenizer)),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=CALIBRATION,
                              ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
        ov.save_model(model, str(path), compress_to_fp16=False)

    add("OpenVINO + NNCF static int8", "peer", made(work / "ov-nncf-int8" / "model.xml", nncf_int8), "openvino")

    def ffn_down_projections() -> list[str]:
        # what a user does for more accuracy from NNCF: the FFN down-projections, whose inputs carry the
        # outliers, in the ignored scope (found by weight shape: d_ff x d_model)
        import onnx

        down = (lm.model.config.intermediate_size, lm.model.config.hidden_size)
        graph = onnx.load(str(original), load_external_data=False).graph
        shapes = {i.name: tuple(i.dims) for i in graph.initializer}
        return [n.name for n in graph.node if n.op_type == "MatMul" and any(shapes.get(i) == down for i in n.input)]

    add("OpenVINO + NNCF static int8, FFN down-projections fp32", "peer",
        made(work / "ov-nncf-int8-ffn-out-fp32" / "model.xml", lambda p: nncf_int8(p, ffn_down_projections())),
        "openvino")

    loose = {"cosine_mean": 0.0, "cosine_min": 0.0, "retrieval_at10": 0.0}

    def down(base: str) -> str:  # the shipped target in the "down" split form
        path = work / f"{base}-down.toml"
        path.write_text(f'extends = "{base}"\nsplit = "down"\n')
        return str(path)

    runs = [
        ("ffsplit cpu-int8 (light int8, heavy 10% fp32)", {"target": "cpu-int8"}),
        ("ffsplit cpu-int8-full, heavy 10% fp32", {"target": "cpu-int8-full"}),
        ("ffsplit openvino-int8, heavy 10% fp32", {"target": "openvino-int8"}),
        ("ffsplit openvino-int8, heavy 5% fp32", {"target": "openvino-int8", "heavy_ratio": 0.05}),
        ("ffsplit openvino-int8, heavy 10% int8 (own scales)", {"target": "openvino-int8", "heavy": "int8"}),
        # fewer heavy hitters: the fp32 multiplies are what the split costs (OpenVINO's per-node counters)
        ("ffsplit openvino-int8, heavy 2% fp32", {"target": "openvino-int8", "heavy_ratio": 0.02}),
        ("ffsplit openvino-int8, heavy 1% fp32", {"target": "openvino-int8", "heavy_ratio": 0.01}),
        ("ffsplit openvino-int8, heavy 2% int8 (own scales)",
         {"target": "openvino-int8", "heavy": "int8", "heavy_ratio": 0.02}),
        # one up-projection over all neurons, only the down-projection split
        ("ffsplit openvino-int8 split=down, heavy 10% fp32", {"target": down("openvino-int8")}),
        ("ffsplit openvino-int8 split=down, heavy 5% fp32", {"target": down("openvino-int8"), "heavy_ratio": 0.05}),
        ("ffsplit cpu-int8-full split=down, heavy 10% fp32", {"target": down("cpu-int8-full")}),
        # a structured light branch: the lowest-scoring light neurons pruned from both projections
        ("ffsplit openvino-int8 split=down, heavy 10% fp32, light prune:0.25",
         {"target": down("openvino-int8"), "light": "prune:0.25"}),
        ("ffsplit openvino-int8 split=down, heavy 10% fp32, light prune:0.5",
         {"target": down("openvino-int8"), "light": "prune:0.5"}),
    ]
    for name, kwargs in runs:
        out = work / "".join(c if c.isalnum() else "-" for c in name)
        if not (out / "manifest.json").is_file():
            log(f"exporting {name} ...")
            t0 = time.perf_counter()
            api.export("minilm", out, limits=loose, force=True, progress=False, **kwargs)
            log(f"  {time.perf_counter() - t0:.0f} s")
        manifest = json.loads((out / "manifest.json").read_text())
        if manifest["target"]["int8_compute"] == "nncf":
            add(name, "ffsplit", out / "runtime" / manifest["target"]["name"] / "model.xml", "openvino", manifest)
        else:
            add(name, "ffsplit", out / "model.onnx", "onnxruntime", manifest)
    return configs


def _runner(cfg: dict[str, Any]) -> Any:
    """ffsplit's own runner for a configuration, set up for side-by-side timing.

    OpenVINO compiles the file given (an ONNX model or an IR) at f32 inference precision; ffsplit's ONNX
    Runtime points run with their target's session config, peers with the plain cpu target's.
    """
    from ffsplit.runtimes.base import make_runner
    from ffsplit.targets import Target, load_target

    if cfg["runtime"] == "openvino":
        target = load_target("openvino")
    elif cfg.get("manifest"):
        target = Target.from_json(cfg["manifest"]["target"])
    else:
        target = load_target("cpu")
    return make_runner(cfg["model"], target, timing=True).activate()


def accuracy(configs: list[dict[str, Any]], log: Any) -> dict[str, Any]:
    from ablation import probe_accuracy

    from ffsplit.loading import load_model
    from ffsplit.parity.check import run_torch
    from ffsplit.parity.metrics import Outputs, compare
    from ffsplit.split.calibration import evaluation_texts

    lm = load_model("minilm")
    held_out = evaluation_texts(10**6)[HELD_OUT_FROM:]
    texts = [t.text for t in held_out]
    counts = Counter(t.source for t in held_out)
    classes = sorted(s for s, n in counts.items() if n >= 10)
    labels = np.array([t.source for t in held_out])
    probe = np.isin(labels, classes)
    rng = np.random.default_rng(0)
    train = np.zeros(len(labels), bool)
    for c in classes:
        idx = np.flatnonzero(labels == c)
        train[rng.permutation(idx)[: len(idx) // 2]] = True
    ref = run_torch(lm.model, lm.tokenizer, texts, lm.task, batch_size=32, max_length=128)

    def pooled(outs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([(o * b["attention_mask"][..., None]).sum(1) / b["attention_mask"].sum(1, keepdims=True)
                               for o, b in zip(outs, ref.batches, strict=True)])

    original = probe_accuracy(pooled(ref.outputs)[probe], labels[probe], train[probe])
    for cfg in configs:
        log(f"accuracy: {cfg['name']}")
        runner = _runner(cfg)
        # every configuration takes MiniLM's three inputs (an IR has no ONNX signature to check the feed against)
        outs = [runner.infer({k: b[k] for k in INPUTS}, check=False)["last_hidden_state"] for b in ref.batches]
        runner.deactivate()
        m = compare(ref, Outputs(outs, ref.batches))
        cfg["accuracy"] = {"cosine_mean": m["cosine_mean"], "cosine_min": m["cosine_min"],
                           "retrieval_at10": m["retrieval_at10"],
                           "probe_accuracy": probe_accuracy(pooled(outs)[probe], labels[probe], train[probe])}
    return {"texts": len(texts), "probe_texts": int(probe.sum()), "probe_classes": len(classes),
            "original_probe_accuracy": original}


def latency(configs: list[dict[str, Any]], shapes: list[tuple[int, int]], runs: int, log: Any) -> None:
    from ffsplit.bench.harness import make_feed, time_interleaved
    from ffsplit.loading import load_model
    from ffsplit.split.calibration import evaluation_texts

    tok = load_model("minilm").tokenizer
    texts = [t.text for t in evaluation_texts(64)]
    runners = {c["name"]: _runner(c) for c in configs}
    for b, s in shapes:
        log(f"timing batch {b} x {s} ...")
        feed = make_feed(tok, texts, list(INPUTS), batch=b, sequence=s)
        times = time_interleaved(runners, feed, warmup=3, runs=runs)
        for cfg in configs:
            arr = np.asarray(times[cfg["name"]]) * 1000
            cfg.setdefault("latency", {})[f"{b}x{s}"] = {
                "p50_ms": float(np.percentile(arr, 50)), "p90_ms": float(np.percentile(arr, 90)), "runs": len(arr),
                "seq_per_s": float(b / np.percentile(arr, 50) * 1000),
            }
    for runner in runners.values():
        runner.deactivate()


def _speed(c: dict[str, Any], base: dict[str, Any], shape: str) -> float:
    return base["latency"][shape]["p50_ms"] / c["latency"][shape]["p50_ms"]


def goals(configs: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, each met or missed, from the measured numbers."""
    by = {c["name"]: c for c in configs}
    shapes = ["1x128", "8x128"]
    lines = []

    def speeds(c: dict[str, Any], ref: dict[str, Any]) -> str:
        return " / ".join(f"{_speed(c, ref, s):.2f}x" for s in shapes)

    nncf = by["OpenVINO + NNCF static int8"]
    ov_peers = [c for c in configs if c["kind"] == "peer" and c["runtime"] == "openvino"]
    ov_points = [c for c in configs if c["kind"] == "ffsplit" and c["runtime"] == "openvino"]

    def at_least_as_accurate(c: dict[str, Any], p: dict[str, Any]) -> bool:
        return all(c["accuracy"][k] >= p["accuracy"][k] for k in ("retrieval_at10", "cosine_min"))

    def slowest(c: dict[str, Any], ref: dict[str, Any]) -> float:  # speed vs ref at the worse of the two batches
        return min(_speed(c, ref, s) for s in shapes)

    def closest(points: list[dict[str, Any]], what: str) -> str:
        if not points:
            return f"no ffsplit point is {what}"
        best = max(points, key=lambda c: slowest(c, nncf))
        return (f"closest {what}: {best['name']}, {speeds(best, nncf)} of NNCF int8's speed, retrieval@10 "
                f"{best['accuracy']['retrieval_at10']:.3f}, cosine min {best['accuracy']['cosine_min']:.4f}")

    # the three goals against NNCF int8 of the original (ratios at b1 and b8 x 128)
    as_accurate = [c for c in ov_points if at_least_as_accurate(c, nncf)]
    hit = [c for c in as_accurate if slowest(c, nncf) >= 1.10]
    lines.append(f"- dominance, an ffsplit point >= 1.10x NNCF int8 at b1 and b8, retrieval@10 and cosine min at or "
                 f"above its: {'met' if hit else '**missed**'}; " + closest(hit or as_accurate, "as accurate"))
    precise = [c for c in ov_points if c["accuracy"]["retrieval_at10"] >= 0.965 and c["accuracy"]["cosine_min"] >= 0.997]
    hit = [c for c in precise if slowest(c, nncf) >= 1.0]
    lines.append(f"- accuracy at speed, an ffsplit point >= 1.0x NNCF int8 at b1 and b8 with retrieval@10 >= 0.965 and "
                 f"cosine min >= 0.997: {'met' if hit else '**missed**'}; "
                 + closest(hit or precise, "that accurate"))
    ours = [c for c in configs if c["kind"] == "ffsplit"]
    # the fp32 peers are exact: matching their accuracy takes the exact recipe, not a lossy point
    uncovered = [p["name"] for p in configs if p["kind"] == "peer" and p["accuracy"]["cosine_min"] < 0.99999 and not any(
        at_least_as_accurate(c, p) and all(c["latency"][s]["p50_ms"] <= p["latency"][s]["p50_ms"] for s in shapes)
        for c in ours)]
    lines.append("- frontier, every lossy peer point matched by an ffsplit point at least as fast (b1 and b8) and as accurate: "
                 + ("met" if not uncovered else f"**missed** for {', '.join(uncovered)}"))
    lossy_ov = [p for p in ov_peers if p["accuracy"]["cosine_min"] < 0.99999]
    for c in ov_points:
        lines.append(f"- {c['name']}:")
        for p in lossy_ov:  # each lossy peer on the same runtime: speed, and both accuracy figures side by side
            faster = all(c["latency"][s]["p50_ms"] <= p["latency"][s]["p50_ms"] for s in shapes)
            slower = all(c["latency"][s]["p50_ms"] > p["latency"][s]["p50_ms"] for s in shapes)
            better, worse = at_least_as_accurate(c, p), at_least_as_accurate(p, c)
            relation = ("dominates it" if faster and better else "is dominated by it" if slower and worse else
                        "more accurate, slower" if better and slower else "faster, less accurate" if faster and worse
                        else "mixed")
            lines.append(
                f"  - vs {p['name']}: {speeds(c, p)} of its speed; retrieval@10 {c['accuracy']['retrieval_at10']:.3f} "
                f"vs {p['accuracy']['retrieval_at10']:.3f}, cosine min {c['accuracy']['cosine_min']:.4f} vs "
                f"{p['accuracy']['cosine_min']:.4f}: {relation}"
            )
    ort_peers = [c for c in configs if c["kind"] == "peer" and c["runtime"] == "onnxruntime"]
    lossy = [p for p in ort_peers if p["accuracy"]["cosine_min"] < 0.99999]
    ort_ours = [c for c in configs if c["kind"] == "ffsplit" and c["runtime"] == "onnxruntime"]
    fastest_peer = min(ort_peers, key=lambda p: p["latency"]["8x128"]["p50_ms"])
    for c in ort_ours:
        slower = [p["name"] for p in ort_peers if any(c["latency"][s]["p50_ms"] > p["latency"][s]["p50_ms"] for s in shapes)]
        less = [p["name"] for p in lossy if c["accuracy"]["retrieval_at10"] <= p["accuracy"]["retrieval_at10"]
                or c["accuracy"]["cosine_min"] <= p["accuracy"]["cosine_min"]]
        verdict = "met" if not slower and not less else "**missed**"
        lines.append(
            f"- {c['name']} at least as fast as every ORT peer and more accurate than each lossy one: {verdict}"
            + (f" (slower than {', '.join(slower)} at b1 or b8; vs the fastest, {fastest_peer['name']}: "
               f"{speeds(c, fastest_peer)})" if slower else "")
            + (f" (not more accurate than {', '.join(less)})" if less else "")
        )
    ok = [c for c in configs if c["kind"] == "ffsplit" and c["accuracy"]["retrieval_at10"] >= DEMO_FLOOR]
    base = by["ORT fp32"]
    if ok:
        best = max(ok, key=lambda c: _speed(c, base, "8x128"))
        lines.append(f"- fastest ffsplit point holding retrieval@10 >= {DEMO_FLOOR} (what `make demo` uses): {best['name']}, "
                     f"{speeds(best, base)} vs ORT fp32 at retrieval@10 {best['accuracy']['retrieval_at10']:.3f}")
    else:
        lines.append(f"- no ffsplit point holds retrieval@10 >= {DEMO_FLOOR} on this machine")
    return lines


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both latency (lower) and accuracy (higher)."""
    return [i for i, (x, y) in enumerate(points)
            if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for x2, y2 in points)]


def write(configs: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: (str(v) if isinstance(v, Path) else v) for k, v in c.items() if k != "manifest"} for c in configs]
    (out / "peers.json").write_text(json.dumps({"meta": meta, "configs": rows}, indent=1))
    base = next(c for c in configs if c["name"] == "ORT fp32")
    shapes = list(base["latency"])
    head = ("| kind | configuration | runtime | " + " | ".join(f"p50 ms {s} (speedup)" for s in shapes)
            + " | size MB | peak RSS MB | cosine mean | cosine min | retrieval@10 | probe acc |")
    lines = [
        "# ffsplit vs the strongest peers on all-MiniLM-L6-v2", "",
        "Command: `python benchmarks/peers.py` (one process, same inputs, timed in blocks interleaved across "
        "models, ONNX Runtime worker spinning off for every session, warm-up excluded; speedups against ORT fp32).", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()), "",
        f"Accuracy against the original torch model on {meta['accuracy']['texts']} held-out evaluation texts "
        f"(none used by any export check); linear probe over {meta['accuracy']['probe_classes']} modules "
        f"({meta['accuracy']['probe_texts']} texts), original {meta['accuracy']['original_probe_accuracy']:.3f}.", "",
        head, "|" + "---|" * (head.count("|") - 1),
    ]
    for c in configs:
        a = c["accuracy"]
        cells = " | ".join(f"{c['latency'][s]['p50_ms']:.1f} ({_speed(c, base, s):.2f}x)" for s in shapes)
        lines.append(
            f"| {c['kind']} | {c['name']} | {c['runtime']} | {cells} | {c['size_mb']:.1f} | {c['peak_rss_mb']:.0f} | "
            f"{a['cosine_mean']:.4f} | {a['cosine_min']:.4f} | {a['retrieval_at10']:.3f} | {a['probe_accuracy']:.3f} |"
        )
    lines += ["", "## Goals", "", *goals(configs), ""]
    (out / "peers.md").write_text("\n".join(lines))
    plot(configs, out / "peers.png")


def _place_labels(ys: list[float], gap: float) -> list[float]:
    """Label heights pushed apart by at least ``gap`` (points keep their place; the labels move)."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    placed = list(ys)
    for prev, cur in zip(order, order[1:], strict=False):
        placed[cur] = max(placed[cur], placed[prev] + gap)
    return placed


def plot(configs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    for ax, shape in zip(axes, ("1x128", "8x128"), strict=True):
        xs = [c["latency"][shape]["p50_ms"] for c in configs]
        ys = [c["accuracy"]["retrieval_at10"] for c in configs]
        front = sorted(pareto(list(zip(xs, ys, strict=True))), key=lambda i: xs[i])
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="tab:red", alpha=0.5,
                label="Pareto frontier")
        span = (max(ys) - min(ys)) or 1.0
        label_y = _place_labels(ys, gap=span * 0.045)
        right = max(xs) + (max(xs) - min(xs)) * 0.05
        for c, x, y, ly in zip(configs, xs, ys, label_y, strict=True):
            marker, color = {"peer": ("s", "tab:gray")}.get(c["kind"], ("o", "tab:blue"))
            ax.scatter(x, y, marker=marker, color=color, s=55, zorder=3)
            ax.annotate(c["name"].replace("ffsplit ", ""), (x, y), xytext=(right, ly), fontsize=7,
                        va="center", arrowprops={"arrowstyle": "-", "color": "0.75", "lw": 0.6})
        ax.set_xlim(min(xs) * 0.9, right + (max(xs) - min(xs)) * 1.6)
        ax.set_xlabel(f"p50 latency, batch {shape.replace('x', ' x ')} (ms, lower is better)")
        ax.set_ylabel("retrieval agreement@10 vs original (higher is better)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("MiniLM on this CPU: squares peers, circles ffsplit; the frontier is drawn")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def profile(configs: list[dict[str, Any]], out: Path, runs: int, log: Any) -> None:
    """Where the time goes: OpenVINO's per-node performance counters of every OpenVINO point, summed by node
    type per inference (b1 and b8 x 128), beside NNCF int8 of the original: peers-profile.md."""
    import openvino as ov

    from ffsplit.bench.harness import make_feed
    from ffsplit.loading import load_model
    from ffsplit.split.calibration import evaluation_texts

    tok = load_model("minilm").tokenizer
    texts = [t.text for t in evaluation_texts(64)]
    points = [c for c in configs if c["runtime"] == "openvino" and c["name"] != "OpenVINO fp32"]
    core = ov.Core()
    lines = ["# Where the time goes: OpenVINO's per-node counters (ms per inference, summed by node type)", "",
             "Command: `python benchmarks/peers.py --profile`. Counters are each node's own time; wall is the "
             "median of the same runs (they differ by what runs between nodes).", ""]
    for b in (1, 8):
        log(f"profiling batch {b} x 128 ...")
        feed = make_feed(tok, texts, list(INPUTS), batch=b, sequence=128)
        sums: dict[str, Counter] = {}
        walls: dict[str, float] = {}
        for c in points:
            request = core.compile_model(str(c["model"]), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                  "PERF_COUNT": "YES"}).create_infer_request()
            for _ in range(3):
                request.infer(feed)
            total: Counter = Counter()
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                request.infer(feed)
                times.append(time.perf_counter() - t0)
                for info in request.profiling_info:
                    total[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds() * 1e3 / runs
            sums[c["name"]], walls[c["name"]] = total, float(np.median(times)) * 1e3
        kinds = sorted({k for t in sums.values() for k in t}, key=lambda k: -max(t[k] for t in sums.values()))
        kinds = [k for k in kinds if max(t[k] for t in sums.values()) >= 0.05]
        lines += [f"## Batch {b} x 128", "", "| node type (kernel) | " + " | ".join(sums) + " |",
                  "|---|" + "---|" * len(sums)]
        lines += [f"| {k} | " + " | ".join(f"{sums[n][k]:.2f}" for n in sums) + " |" for k in kinds]
        lines += ["| **sum of counters** | " + " | ".join(f"**{sum(t.values()):.2f}**" for t in sums.values()) + " |",
                  "| wall (median) | " + " | ".join(f"{walls[n]:.2f}" for n in sums) + " |", ""]
    (out / "peers-profile.md").write_text("\n".join(lines))


def replot(results: Path) -> None:
    """Rewrite peers.md and peers.png from peers.json (no re-measuring)."""
    data = json.loads((results / "peers.json").read_text())
    write(data["configs"], data["meta"], results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path.home() / ".cache" / "ffsplit" / "peers-v3"), help="where models are built")
    ap.add_argument("--runs", type=int, default=25, help="timed runs per model and shape")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--replot", action="store_true", help="only rewrite peers.md and peers.png from peers.json")
    ap.add_argument("--profile", action="store_true",
                    help="only write peers-profile.md: OpenVINO's per-node counters of the OpenVINO points")
    a = ap.parse_args()
    if a.replot:
        replot(Path(a.out))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def log(msg: str) -> None:
        print(f"[peers] {msg}", file=sys.stderr, flush=True)

    configs = build(Path(a.work), log)
    if a.profile:
        profile(configs, Path(a.out), a.runs, log)
        return
    for c in configs:
        c["size_mb"] = _size_mb(c["model"])
        c["peak_rss_mb"] = _peak_rss_mb(c["model"], c["runtime"])
    meta: dict[str, Any] = {"machine": _machine(), "accuracy": accuracy(configs, log)}
    latency(configs, [(1, 128), (8, 128)], a.runs, log)
    write(configs, meta, Path(a.out))
    print((Path(a.out) / "peers.md").read_text())


if __name__ == "__main__":
    main()
