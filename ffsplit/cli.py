"""Command line: ``ffsplit export | check | debug | bench | inspect | build | pack | triton | serve | targets | support``.

This module parses arguments, calls ``ffsplit.api`` and prints. Exit codes:
0 success, 1 a check failed, 2 bad input or usage (one line, no traceback),
3 an internal error (a bug: the traceback is printed for the report).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ffsplit import __version__
from ffsplit.errors import CheckFailed, FFSplitError, UsageError
from ffsplit.jsonio import dumps
from ffsplit.tasks import TASKS


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(printable(f"ffsplit: error: {message} (see '{self.prog} --help')"), file=sys.stderr)
        raise SystemExit(2)


def _log(msg: str) -> None:
    print(printable(f"[ffsplit] {msg}"), file=sys.stderr, flush=True)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' must list integers >= 1")
    return values


def _limits(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise UsageError(f"--limit '{item}' is not METRIC=VALUE, e.g. --limit cosine_min=0.8")
    return out


def _write_json(path: str | None, data: Any) -> None:
    from ffsplit.artifact import write_text_atomic

    if path:
        write_text_atomic(Path(path), dumps(data, indent=2) + "\n")


def _artifact_folders(a: argparse.Namespace) -> dict[str, Path]:
    """The artifact folders a verb reads or writes: no side output may land inside one."""
    folders = {}
    if getattr(a, "dir", None):
        folders["artifact"] = Path(a.dir)
    if a.verb in ("export", "pack") and getattr(a, "out", None):
        folders["output folder"] = Path(a.out)
    return folders


def _outputs_writable(a: argparse.Namespace) -> None:
    """Refuse a --json / --report destination that cannot be written, or lies inside an artifact, before any work."""
    from ffsplit.artifact import check_output_file, refuse_inside

    folders = _artifact_folders(a)
    for flag in ("json", "report"):
        value = getattr(a, flag, None)
        if isinstance(value, str) and value != "-":  # "-": inspect --json without a file prints
            refuse_inside(Path(value), folders, f"--{flag}")
            check_output_file(value, f"--{flag}")


_SOURCE_HELP = "the source model's folder, if it moved since the export (it must be the very same model)"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port from 0 to 65535 (0 picks a free one)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ffsplit", description="Split transformer FFNs into heavy and light branches; export, build, check, bench.")
    p.add_argument("--version", action="version", version=f"ffsplit {__version__}")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    _add_export(sub)
    _add_artifact_verbs(sub)
    sub.add_parser("targets", help="list the shipped targets and whether each can run here")
    sub.add_parser("support", help="print the support matrix (family x task) as markdown")
    return p


def _add_export(sub: Any) -> None:
    e = sub.add_parser("export", help="profile, split, export to ONNX, build for a target and check parity")
    e.add_argument("model", help="a local Hugging Face model folder, or an alias: minilm")
    e.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    e.add_argument("--target", default="cpu", help="shipped target name or a .toml path (default: cpu)")
    e.add_argument("--heavy-ratio", type=float, default=None, help="fraction of FFN neurons kept heavy, in (0, 1) (default 0.1)")
    e.add_argument(
        "--light", default=None,
        help="light-branch recipe: none | lowrank:R | prune:P | int8 | int4[:B][:sym|asym] | structure+quantiser, "
        "e.g. lowrank:128+int8 (default lowrank:256)",
    )
    e.add_argument("--heavy", default=None, help="heavy-branch precision: fp32 | fp16 | bf16 | int8 (default: the target's)")
    e.add_argument(
        "--budget", help="choose heavy ratio and light recipe per layer to minimise calibration error under "
        "ffn-params=FRACTION | flops=FRACTION | size-mb=MB (instead of --light / --heavy-ratio)",
    )
    e.add_argument("--calib", help="calibration text file, one text per line (default: bundled text)")
    e.add_argument("--eval", help="evaluation text file for the parity check, one text per line, at least 11 "
                   "(default: bundled text disjoint from calibration)")
    e.add_argument("--calib-size", type=int, default=256, help="calibration texts used (default 256)")
    e.add_argument("--eval-size", type=int, default=256, help="evaluation texts for the parity check (default 256)")
    e.add_argument("--max-length", type=int, default=128, help="token limit for calibration and evaluation (default 128)")
    e.add_argument("--min-cosine", type=float, help="lowest mean embedding cosine accepted vs the original (lossy recipes)")
    e.add_argument("--min-retrieval", type=float, help="lowest retrieval agreement@10 accepted vs the original (lossy recipes)")
    e.add_argument(
        "--limit", action="append", default=[], metavar="METRIC=VALUE",
        help="limit on what compression may cost, repeatable: cosine_mean, cosine_min, retrieval_at10, "
        "label_agreement, top1_agreement, top5_agreement (floors), perplexity_ratio (ceiling)",
    )
    e.add_argument(
        "--task", default="auto",
        help=" | ".join(["auto (from the model's architectures)", *TASKS]),
    )
    e.add_argument(
        "--exporter", default="auto", choices=["auto", "dynamo", "torchscript"],
        help="auto: dynamo, falling back to TorchScript only if dynamo fails or misses fidelity",
    )
    e.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    e.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code to run")
    e.add_argument("--json", help="also write the manifest to this file")


def _add_artifact_verbs(sub: Any) -> None:
    c = sub.add_parser("check", help="re-run the separation guard and three-way parity of an output folder")
    c.add_argument("dir")
    c.add_argument("--eval-size", type=int, help="evaluation texts (default: as at export)")
    c.add_argument("--eval", help="check on this text file, one text per line (default: what the export used)")
    c.add_argument(
        "--limit", action="append", default=[], metavar="METRIC=VALUE",
        help="replace an export limit on what compression may cost, repeatable (as for export); fidelity stays",
    )
    c.add_argument("--json", help="write the report (parity and separation) to this file, pass or fail")
    c.add_argument("--golden", action="store_true",
                   help="only re-run the golden inputs saved at export on the target and compare the outputs "
                   "(needs neither torch nor the source model; for CI)")
    c.add_argument("--tolerance", type=float, help="with --golden: max abs difference (default: the fidelity max_abs)")
    c.add_argument("--per-layer", action="store_true", help="also compare every FFN module's output (as ffsplit debug)")
    c.add_argument("--source", help=_SOURCE_HELP)

    d = sub.add_parser("debug", help="compare every FFN module's output between split torch and the runtime, layer by layer")
    d.add_argument("dir")
    d.add_argument("--batch", type=int, default=8, help="evaluation texts in the one batch compared (default 8)")
    d.add_argument("--tolerance", type=float, help="max abs error per unit of output magnitude (default: the target's fidelity max_abs)")
    d.add_argument("--json", help="write every module's comparison to this file")
    d.add_argument("--source", help=_SOURCE_HELP)

    b = sub.add_parser("bench", help="time the original and the split ONNX side by side")
    b.add_argument("dir")
    b.add_argument("--batch", type=_int_list, default=(1, 8), help="batch sizes, comma-separated (default 1,8)")
    b.add_argument("--seq", type=_int_list, default=(128,), help="sequence lengths, comma-separated (default 128)")
    b.add_argument("--runs", type=int, default=30, help="timed runs per model and shape (default 30)")
    b.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    b.add_argument("--min-seconds", type=float, default=2.0, help="keep timing at least this long per shape (default 2)")
    b.add_argument("--json", help="write the timings to this file")
    b.add_argument("--report", help="write a markdown report (machine, timings, size, accuracy) to this file")
    b.add_argument("--min-speedup", type=float, metavar="X",
                   help="exit 1 when ffsplit's speedup over the original is below X at any batch and sequence")
    b.add_argument("--source", help=_SOURCE_HELP)

    i = sub.add_parser("inspect", help="print the per-layer table and per-branch ops / precision of an output folder")
    i.add_argument("dir")
    i.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="write the manifest and the per-graph summary as JSON to FILE, as other verbs do "
                   "(without FILE: print it)")

    bd = sub.add_parser("build", help="build an output folder's runtime on this machine (e.g. the GPU one), guard it "
                        "and replay its golden outputs")
    bd.add_argument("dir")
    bd.add_argument("--target", help="a target name or .toml with the same graph as the export's (other shapes, "
                    "providers or builder options); default: the export's target")
    bd.add_argument("--tolerance", type=float, help="max abs change of the golden outputs (default: the fidelity max_abs)")
    bd.add_argument("--json", help="write the result to this file, pass or fail")

    pk = sub.add_parser("pack", help="copy an output folder with only what its target runs (for deployment)")
    pk.add_argument("dir")
    pk.add_argument("--out", required=True, help="the slim folder to write (must not exist unless --force)")
    pk.add_argument("--force", action="store_true", help="replace --out if it is an ffsplit output")

    tr = sub.add_parser("triton", help="write a Triton model repository for an output folder")
    tr.add_argument("dir")
    tr.add_argument("--repo", required=True, help="the model repository folder (created or added to)")
    tr.add_argument("--name", help="model name in the repository (default: ffsplit-<model>-<target>)")
    tr.add_argument("--backend", choices=["auto", "python", "text"], default="auto",
                    help="auto: Triton's onnxruntime / tensorrt backend; python: a Python-backend model over ONNX "
                    "Runtime; text: a Python-backend model taking strings and returning what ffsplit.load gives "
                    "(sentence_embedding or logits), the slim artifact inside")

    sv = sub.add_parser("serve", help="serve an output folder with a local Triton server until interrupted")
    sv.add_argument("dir")
    sv.add_argument("--http-port", type=_port, default=8000, help="HTTP port on 127.0.0.1 (default 8000; 0: any free port)")
    sv.add_argument("--grpc-port", type=_port, default=8001, help="gRPC port on 127.0.0.1 (default 8001; 0: any free port)")


def _params_line(m: dict[str, Any]) -> str:
    """Bytes first: an int8 or int4 light branch keeps its parameter count and shrinks its bytes."""
    p = m["params"]
    heavy = sum(r.get("heavy_bytes", 0) for r in m["layers"])
    light = sum(r.get("light_bytes", 0) for r in m["layers"])
    return (
        f"FFN weights {p['ffn_bytes_before'] / 1e6:,.2f} MB -> {p['ffn_bytes_after'] / 1e6:,.2f} MB "
        f"({p['ffn_bytes_reduction']:.1%} smaller; heavy {heavy / 1e6:,.2f} MB, light {light / 1e6:,.2f} MB); "
        f"FFN parameters {p['ffn_before']:,} -> {p['ffn_after']:,} ({p['ffn_reduction']:.1%} fewer); "
        f"model parameters {p['total_before']:,} -> {p['total_after']:,} ({p['total_reduction']:.1%} fewer)"
    )


def _size_line(out: Path, m: dict[str, Any]) -> str:
    """Size on disk: what the target runs beside the source's weights, and the whole folder."""
    def size(paths: list[Path]) -> float:
        return sum(q.stat().st_size for q in paths if q.is_file()) / 1e6

    graph = size([out / name for name in m["files"] if name == "model.onnx" or name.startswith("model.onnx.")])
    source = Path(m["source"]["path"])
    weights = size([*source.glob("*.safetensors")]) if source.is_dir() else 0.0
    total = size([out / name for name in m["files"]])
    return (f"on disk: model.onnx {graph:,.1f} MB (source weights {weights:,.1f} MB); the folder {total:,.1f} MB "
            "(with split.safetensors for check and the runtime's files)")


def _layer_table(m: dict[str, Any]) -> str:
    head = (
        f"{'layer':>5} {'d_ff':>6} {'heavy':>6} {'light':>6} {'light params':>13} {'FFN bytes':>10} {'recipe':<22} "
        f"{'precision (h/l)':<16} {'heavy score':>11} {'light err in/out':>17}"
    )
    lines = [head, "-" * len(head)]
    for r in m["layers"]:
        err = "/".join("-" if r.get(k) is None else f"{r[k]:.3g}" for k in ("light_in_error", "light_out_error"))
        err = "-" if err == "-/-" else err
        lines.append(
            f"{r['layer']:>5} {r['d_ff']:>6} {r['heavy']:>6} {r['light']:>6} {r['light_params']:>13,} "
            f"{r.get('ffn_bytes_after', 0):>10,} {r['light_recipe']:<22} "
            f"{r['heavy_precision'] + '/' + r['light_precision']:<16} {r['heavy_score_share']:>10.1%} {err:>17}"
        )
    return "\n".join(lines)


def _graph_table(graphs: dict[str, Any]) -> str:
    """Per layer and branch: ops and realised precision in each graph (exported, then each runtime's)."""
    lines = []
    for name, summary in graphs.items():
        lines.append(f"graph {name}:")
        if "error" in summary:
            lines.append(f"  {summary['error']}")
            continue
        lines.append(f"  {'layer':>5} {'branch':<6} {'precision':<10} ops")
        for layer, branches in summary.items():
            for branch, entry in branches.items():
                ops = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in entry["ops"].items())
                lines.append(f"  {layer:>5} {branch:<6} {','.join(entry['precisions']) or '-':<10} {ops}")
    return "\n".join(lines)


def _cmd_export(a: argparse.Namespace) -> int:
    from ffsplit import api
    from ffsplit.parity.check import format_table

    try:
        res = _export(a, api)
    except CheckFailed as exc:  # --json still says what was measured, and why nothing was written
        _write_json(a.json, {**(exc.details or {}), "passed": False, "error": str(exc)})
        raise
    m = res.manifest
    print(_layer_table(m))
    print(_params_line(m))
    print(_size_line(res.out, m))
    weights = _weight_range_line(m)
    if weights:
        print(weights)
    if m.get("budget"):
        b = m["budget"]
        print(f"budget {b['kind']}={b['value']:g}: used {b['used']:,} of {b['limit']:,.0f} "
              f"({b['used_fraction_of_limit']:.1%}); summed calibration error {b['total_error']:.4f}")
    build = m.get("build") or {}
    if build.get("status") == "deferred":
        print(f"build deferred: target '{build['target']}' cannot run here ({build['reason']}); parity was "
              f"checked on {build['checked_on']} (a CPU stand-in running the same graph); the separation guard "
              "waits for the build")
    else:
        print(f"branch separation in the runtime's optimised graph: pass ({m['separation']['graph']})")
    print(format_table(res.report))
    run = m.get("run") or m  # format 2 artifacts written before the `run` record kept its parts at the top
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in run.get("timings", {}).items()))
    memory = run.get("memory")
    if memory:
        kind = "peak memory per stage" if memory["per_stage"] else "peak memory so far, after each stage"
        print(f"{kind}: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in memory["peak_mb"].items()))
    print(f"wrote {res.out}")
    if build.get("status") == "deferred":
        print(f"next, on a machine where '{build['target']}' runs: ffsplit build {res.out}")
    _write_json(a.json, {**m, "passed": True})
    return 0


def _weight_range_line(m: Any) -> str | None:
    """Which int8 weight range the export used, when it quantised anything to int8: it decides where it runs well."""
    tgt = m["target"]
    int8 = tgt.get("other_matmuls") == "int8" or any(
        "int8" in (row.get("heavy_precision"), row.get("light_precision")) for row in m["layers"])
    if not int8:
        return None
    if tgt.get("int8_weight_range") == "full":
        return ("int8 weights: full range (+-127); CPUs without VNNI saturate on them: to run there, export "
                "with a target file saying int8_weight_range = \"reduced\"")
    return "int8 weights: within +-64, safe on CPUs without VNNI (on one with VNNI, int8_weight_range = \"full\" is more accurate)"


def _export(a: argparse.Namespace, api: Any) -> Any:
    return api.export(
        a.model, a.out, target=a.target, heavy_ratio=a.heavy_ratio, light=a.light, heavy=a.heavy, budget=a.budget, calib=a.calib, eval=a.eval,
        calib_size=a.calib_size, eval_size=a.eval_size, max_length=a.max_length, min_cosine=a.min_cosine,
        min_retrieval=a.min_retrieval, limits=_limits(a.limit), force=a.force, trust_remote_code=a.trust_remote_code, task=a.task,
        exporter=a.exporter,
        log=_log, progress=sys.stderr.isatty(),
    )


def _cmd_check(a: argparse.Namespace) -> int:
    if a.golden:
        return _check_golden(a)
    from ffsplit import api
    from ffsplit.parity.check import format_table

    report = api.check(a.dir, eval_size=a.eval_size, source=a.source, limits=_limits(a.limit), eval_file=a.eval,
                       log=_log, progress=sys.stderr.isatty())
    sep = report.separation or {}
    print(f"branch separation in the runtime's optimised graph: {'pass' if sep.get('passed') else 'FAIL'}")
    print(format_table(report))
    _write_json(a.json, report.to_json())
    failed = not report.passed
    if failed:
        print("ffsplit: check failed: " + "; ".join(report.failures()), file=sys.stderr)
    if a.per_layer:
        failed = _print_layers(api.debug(a.dir, source=a.source, log=_log)) or failed
    return 1 if failed else 0


def _check_golden(a: argparse.Namespace) -> int:
    from ffsplit import bounds
    from ffsplit.parity.golden import check_golden

    if a.limit or a.per_layer or a.source or a.eval_size or a.eval:
        raise UsageError("--golden runs only the saved inputs: drop --limit, --per-layer, --source, --eval and --eval-size")
    if a.tolerance is not None:
        bounds.require_float("--tolerance", a.tolerance, 0.0, 1e6)
    result = check_golden(a.dir, tolerance=a.tolerance)
    print(f"golden {result['output']} on {result['target']}: max abs {result['max_abs']:.3g} "
          f"(tolerance {result['tolerance']:.3g}, {result['rows']} texts): {'pass' if result['passed'] else 'FAIL'}")
    _write_json(a.json, result)
    if not result["passed"]:
        print(f"ffsplit: check failed: golden {result['output']} moved by {result['max_abs']:.3g} > "
              f"{result['tolerance']:.3g}", file=sys.stderr)
        return 1
    return 0


def _print_layers(results: list[Any]) -> bool:
    """Print the per-module table and the first divergence; True when one crossed its tolerance."""
    from ffsplit.parity.layers import first_failure

    head = f"{'layer':>5} {'module':<52} {'op':<22} {'precision':<10} {'max_abs':>10} {'tolerance':>10} result"
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r.layer:>5} {r.module:<52} {r.op_type:<22} {r.precision or '-':<10} {r.max_abs:>10.3g} "
              f"{r.tolerance:>10.3g} {'pass' if r.passed else 'FAIL'}")
    bad = first_failure(results)
    if bad is None:
        print(f"all {len(results)} FFN module outputs within tolerance")
        return False
    print(
        f"ffsplit: check failed: first divergence at layer {bad.layer}, {bad.module}: {bad.op_type} '{bad.node}'"
        f"{' (' + bad.precision + ')' if bad.precision else ''} max abs {bad.max_abs:.3g} > {bad.tolerance:.3g}",
        file=sys.stderr,
    )
    return True


def _cmd_debug(a: argparse.Namespace) -> int:
    from ffsplit import api

    results = api.debug(a.dir, batch=a.batch, tolerance=a.tolerance, source=a.source, log=_log)
    _write_json(a.json, [r.to_json() for r in results])
    if not results:
        print("ffsplit: check failed: no FFN module could be matched to a graph value", file=sys.stderr)
        return 1
    return 1 if _print_layers(results) else 0


def _cmd_bench(a: argparse.Namespace) -> int:
    from ffsplit import api, bounds
    from ffsplit.bench.harness import format_table

    if a.min_speedup is not None:
        bounds.require_float("--min-speedup", a.min_speedup, 0.0, 1000.0, lo_open=True)

    rows = api.bench(
        a.dir, batches=a.batch, sequences=a.seq, runs=a.runs, warmup=a.warmup, min_seconds=a.min_seconds,
        source=a.source, log=_log,
    )
    print(format_table(rows))
    accuracy = api.bench_accuracy(a.dir, source=a.source, log=_log)
    if accuracy:
        print(f"original = {accuracy['baseline']}")
        print(_accuracy_table(accuracy))
    _write_json(a.json, [r.to_json() for r in rows])
    slow = [r for r in rows if r.model == "ffsplit" and a.min_speedup is not None and (r.speedup or 0) < a.min_speedup]
    if a.report:
        from ffsplit.bench.harness import report_markdown

        manifest = api.inspect_artifact(a.dir, graphs=False)
        command = "ffsplit bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [a.dir])
        from ffsplit.artifact import versions, write_text_atomic

        write_text_atomic(Path(a.report), report_markdown(manifest, rows, versions(), command, accuracy=accuracy))
        print(f"wrote {a.report}")
    if slow:
        worst = min(slow, key=lambda r: r.speedup or 0)
        print(f"ffsplit: check failed: speedup {worst.speedup:.2f}x at batch {worst.batch} x sequence {worst.sequence} "
              f"is below --min-speedup {a.min_speedup:g} ({len(slow)} of the shapes)", file=sys.stderr)
        return 1
    return 0


def _accuracy_table(accuracy: dict[str, Any]) -> str:
    """Both bench models' accuracy against the original torch model, one row each."""
    names = list(accuracy["original"])
    head = f"accuracy vs the original torch model on {accuracy['texts']} evaluation texts\n{'model':<10} " + " ".join(
        f"{n:>15}" for n in names)
    rows = [f"{m:<10} " + " ".join(f"{accuracy[m][n]:>15.4f}" for n in names) for m in ("original", "ffsplit")]
    return "\n".join([head, *rows])


def _cmd_build(a: argparse.Namespace) -> int:
    from ffsplit import api

    try:
        m = api.build(a.dir, target=a.target, tolerance=a.tolerance, log=_log)
    except CheckFailed as exc:
        _write_json(a.json, {**(exc.details or {}), "passed": False, "error": str(exc)})
        raise
    b = m["build"]
    print(f"branch separation in what {b['target']} runs: pass ({m['separation']['graph']})")
    g = b["golden"]
    print(f"golden {g['output']} on {b['target']}: max abs {g['max_abs']:.3g} (tolerance {g['tolerance']:.3g}, "
          f"{g['rows']} texts): pass")
    print(f"built {b['target']} in {Path(a.dir).resolve()}")
    _write_json(a.json, {**m, "passed": True})
    return 0


def _cmd_pack(a: argparse.Namespace) -> int:
    from ffsplit import api

    m = api.pack(a.dir, a.out, force=a.force)
    out = Path(a.out).resolve()
    size = sum((out / rel).stat().st_size for rel in m["files"]) / 1e6
    before = sum(p.stat().st_size for p in Path(a.dir).rglob("*") if p.is_file() and not p.is_symlink()) / 1e6
    print(f"left out (not run by target {m['target']['name']}): {', '.join(m['packed']['dropped']) or 'nothing'}")
    print(f"{len(m['files'])} files, {size:,.1f} MB (the full folder: {before:,.1f} MB)")
    print(f"wrote {out}")
    return 0


def _cmd_inspect(a: argparse.Namespace) -> int:
    from ffsplit import api

    m = api.inspect_artifact(a.dir)
    if a.json == "-":
        print(dumps(m, indent=2))
        return 0
    if a.json:
        _write_json(a.json, m)
    src = m["source"]
    print(f"source: {src['spec']} ({src['architecture']}, {src['model_type']})  task: {m['task']}  target: {m['target']['name']}")
    from ffsplit.manifest import Manifest

    print(f"FFN layout: {m.get('layout') or 'family file ' + m['adapter']}")
    build = Manifest(m).build  # the manifest inspect read was schema-checked; inspect adds `graphs`
    if build.deferred:
        print(f"build: deferred ({build.reason}): run `ffsplit build {a.dir}` where '{build.target}' runs")
    else:
        print(f"build: built for {build.target}")
    print(f"recipe: heavy ratio {m['recipe']['heavy_ratio']}, light {m['recipe']['light']['recipe']}, "
          f"heavy precision {m['recipe'].get('heavy_precision', 'fp32')}")
    if m.get("budget"):
        b = m["budget"]
        print(f"budget {b['kind']}={b['value']:g}: used {b['used']:,} of {b['limit']:,.0f}")
        for row in b["plan"]:
            print(f"  layer {row['layer']}: heavy {row['heavy']} ({row['heavy_ratio']}), light {row['recipe']}, "
                  f"calibration error {row['error']:.4f}")
    print(_layer_table(m))
    print(_params_line(m))
    print(_graph_table(m.get("graphs", {})))
    parity = m.get("parity", {})
    print(f"parity at export: {'pass' if parity.get('passed') else 'FAIL'}")
    return 0


def _cmd_triton(a: argparse.Namespace) -> int:
    from ffsplit.serve.triton import python_repository, text_repository, write_repository

    write = {"python": python_repository, "text": text_repository}.get(a.backend, write_repository)
    model_dir = write(Path(a.dir), Path(a.repo), name=a.name)
    print(f"wrote {model_dir} (config.pbtxt and version 1)")
    return 0


def _cmd_serve(a: argparse.Namespace) -> int:
    import time

    from ffsplit.serve.triton import start_server

    server = start_server(Path(a.dir), http_port=a.http_port, grpc_port=a.grpc_port, log=_log)
    print(f"serving model '{server.model}' at http://{server.url}/v2/models/{server.model} (Ctrl-C stops)", flush=True)
    if server.text_model:
        print(f"and its text front end '{server.text_model}' (input 'text', strings) at "
              f"http://{server.url}/v2/models/{server.text_model}", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(0.5)
        how = server.how_it_ended()  # before stop() removes its log
    finally:
        server.stop()  # Ctrl-C / SIGTERM land here: the server is stopped in order, exit 130
    # nothing but ffsplit stops the server it started: ending on its own is a failure, however it ended
    print(printable(f"ffsplit: error: the Triton server stopped serving on its own ({how})"), file=sys.stderr)
    return 1


def _cmd_targets(_a: argparse.Namespace) -> int:
    from ffsplit import api

    for t, reason in api.targets():
        status = "usable" if reason is None else f"not usable here: {reason}"
        print(f"{t.name:<16} {t.heavy_precision}/{t.light_precision:<6} {status}  - {t.description}")
    return 0


def _cmd_support(_a: argparse.Namespace) -> int:
    from ffsplit.split.adapters import support_matrix

    print(support_matrix())
    return 0


def _on_sigterm(_signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C so staged output folders are removed.
    raise KeyboardInterrupt


def _on_unraisable(hook: Any) -> None:
    """A Ctrl-C or SIGTERM whose KeyboardInterrupt was raised inside a finaliser (``__del__``, run by the
    garbage collector) is swallowed there, and the export went on: deliver it again a moment later, from
    another thread (delivered at once, it would land in this hook and be swallowed too; swallowed again, it
    comes back here)."""
    if isinstance(hook.exc_value, KeyboardInterrupt):
        import _thread
        import threading

        # _on_sigterm, a moment later: the same unwinding as the first time
        timer = threading.Timer(0.1, _thread.interrupt_main, args=(signal.SIGTERM,))
        timer.daemon = True
        timer.start()
        return
    sys.__unraisablehook__(hook)


MESSAGE_LIMIT = 2000  # characters of one error line: a value echoed from a file is cut, never printed whole


def printable(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line a terminal shows as it is: every character that is not printable (ESC, line and
    paragraph separators, bidirectional marks, ...) escaped, and anything past ``limit`` cut."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."


_FULL_HINT = "free some space, or choose another --out (or TMPDIR, where temporary files go)"


def _full_disk(args: argparse.Namespace) -> str | None:
    """The path among the verb's outputs (and the temporary folder) whose disk is (nearly) full, or None."""
    import tempfile

    from ffsplit.resources import nearly_full

    paths = [getattr(args, key, None) for key in ("out", "json", "report", "repo")] + [tempfile.gettempdir()]
    return next((str(p) for p in paths if p and nearly_full(p)), None)


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a path the terminal's encoding cannot show is escaped, not a crash
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    args = build_parser().parse_args(argv)
    from ffsplit.loading import no_telemetry

    no_telemetry()
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _on_unraisable
    handlers = {
        "export": _cmd_export, "check": _cmd_check, "bench": _cmd_bench,
        "inspect": _cmd_inspect, "debug": _cmd_debug, "build": _cmd_build, "pack": _cmd_pack, "triton": _cmd_triton, "serve": _cmd_serve, "targets": _cmd_targets, "support": _cmd_support,
    }
    try:
        _outputs_writable(args)
        return handlers[args.verb](args)
    except FFSplitError as exc:
        kind = "error" if isinstance(exc, UsageError) else "check failed"
        print(f"ffsplit: {kind}: " + printable(str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ffsplit: interrupted; nothing half-written was left", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine, not the input or the code: a full disk, a read-only folder
        # numpy reports a short write without an errno ("Not enough free space to write ...")
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and "space" in str(exc)) or \
            _full_disk(args) is not None
        where = f" ({exc.filename})" if exc.filename else ""
        what = os.strerror(errno.ENOSPC) if full and exc.errno is None else exc.strerror or exc
        hint = _FULL_HINT if full else "check the path and its permissions"
        print(printable(f"ffsplit: error: {what}{where}; nothing half-written was left: {hint}"), file=sys.stderr)
        return 2
    except Exception:
        full_at = _full_disk(args)
        if full_at is not None:  # a library that reports a full disk in its own words ("os error 28")
            print(printable(f"ffsplit: error: {os.strerror(errno.ENOSPC)} ({full_at}); nothing half-written was left: "
                            + _FULL_HINT), file=sys.stderr)
            return 2
        traceback.print_exc()  # a bug: keep the traceback for the report
        print("ffsplit: internal error (a bug): please report it with the traceback above", file=sys.stderr)
        return 3


def run() -> NoReturn:
    """The console script and ``python -m ffsplit``: ``main``'s exit code, 130 after an interrupt included.

    CPython marks an interrupt "unhandled" when a KeyboardInterrupt leaves any
    ``exec()`` of a string (dataclasses and namedtuple build methods that way
    while modules import), even if ``main`` catches it afterwards; ``python -m``
    then ends the process by SIGINT on its way out (exit -2, for a SIGTERM
    too) instead of with 130. The clean-up has run by then, so after an
    interrupt the process ends here, with the code ``main`` returned.
    """
    code = main()
    if code == 130:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(130)
    raise SystemExit(code)


if __name__ == "__main__":
    run()
