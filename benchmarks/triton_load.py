"""A bounded load run against a real Triton server: the original model and an ffsplit artifact side by side.

Run: make test (installs the server wheel), then
     .venv/bin/python benchmarks/triton_load.py out/minilm-cpu-int8-full [--requests 2000 --clients 8]
Writes benchmarks/results/triton_load.{md,json}.

One tritonserver (from the nvidia-pytriton wheel, Python backend over ONNX Runtime) serves both
models. Each model gets the same requests (real evaluation text, batch 1, padded to 128 tokens)
from ``--clients`` concurrent HTTP clients (tritonclient), until ``--requests`` have been sent;
the run ends by itself. Reported per model: throughput, p50 / p99 latency, and the number of
failed or lost requests (must be 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def run_load(server, model: str, feeds: list[dict[str, np.ndarray]], clients: int) -> dict:  # noqa: ANN001
    import tritonclient.http as httpclient

    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    local = threading.local()

    def one(feed: dict[str, np.ndarray]) -> None:
        if not hasattr(local, "client"):
            local.client = httpclient.InferenceServerClient(server.url, connection_timeout=60, network_timeout=120)
        inputs = []
        for name, array in feed.items():
            t = httpclient.InferInput(name, list(array.shape), "INT64")
            t.set_data_from_numpy(array)
            inputs.append(t)
        t0 = time.perf_counter()
        try:
            out = local.client.infer(model, inputs).as_numpy("last_hidden_state")
            ok = out is not None and out.shape[:2] == feed["input_ids"].shape
        except Exception as exc:  # every failure is counted, none is fatal
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}"[:200])
            return
        with lock:
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append("wrong output shape")

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, feeds))
    wall = time.perf_counter() - t0
    arr = np.asarray(latencies) * 1000
    return {
        "requests": len(feeds), "answered": len(latencies), "failed_or_lost": len(feeds) - len(latencies),
        "failures": failures[:5], "wall_s": round(wall, 2), "throughput_rps": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(arr, 50)), 2) if arr.size else None,
        "p99_ms": round(float(np.percentile(arr, 99)), 2) if arr.size else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--out", default=str(RESULTS))
    a = ap.parse_args()

    from ffsplit.artifact.opened import Artifact
    from ffsplit.bench.baseline import baseline_onnx
    from ffsplit.bench.harness import machine_info, make_feed
    from ffsplit.serve.triton import start_server, triton_home
    from ffsplit.split.calibration import evaluation_texts
    from ffsplit.stages.reload import load_source

    sys.path.insert(0, str(triton_home()))
    art = Artifact.open(a.artifact)
    loaded = load_source(art)
    original = baseline_onnx(art.manifest, art.target, loaded)
    texts = [t.text for t in evaluation_texts(256)]
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = [make_feed(loaded.tokenizer, [texts[i % len(texts)]], names, batch=1, sequence=128) for i in range(a.requests)]
    server = start_server(Path(a.artifact), models={"original": original})
    results = {}
    try:
        for model in (server.model, "original", server.model, "original"):  # twice each, alternating; the second counts
            results[model] = run_load(server, model, feeds, a.clients)
            print(model, results[model], file=sys.stderr, flush=True)
    finally:
        server.stop()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"artifact": a.artifact, "requests": a.requests, "clients": a.clients, "machine": machine_info()}
    (out / "triton_load.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    lines = [
        "# Triton load run", "",
        f"Command: `python benchmarks/triton_load.py {a.artifact} --requests {a.requests} --clients {a.clients}`; "
        "one tritonserver (nvidia-pytriton, Python backend over ONNX Runtime), batch 1 x 128 requests, "
        "each model run twice alternating, the second run reported.", "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items()), "",
        "| model | requests | answered | failed or lost | throughput req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|",
    ]
    for model, r in results.items():
        label = "original" if model == "original" else f"ffsplit ({model})"
        lines.append(f"| {label} | {r['requests']} | {r['answered']} | {r['failed_or_lost']} | {r['throughput_rps']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} |")
    (out / "triton_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
