"""One function per verb: call ``ffsplit.api``, print, return the exit code (``main`` dispatches by name:
``cmd_<verb>``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.cli.output import (
    accuracy_table,
    budget_lines,
    graph_table,
    layer_table,
    log,
    params_line,
    print_layers,
    printable,
    size_line,
    weight_range_line,
    write_json,
)
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.jsonio import dumps

if TYPE_CHECKING:
    from ffsplit.stages.run import ExportResult


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


def _artifact_folders(a: argparse.Namespace) -> dict[str, Path]:
    """The artifact folders a verb reads or writes: no side output may land inside one."""
    folders = {}
    if getattr(a, "dir", None):
        folders["artifact"] = Path(a.dir)
    if a.verb in ("export", "pack") and getattr(a, "out", None):
        folders["output folder"] = Path(a.out)
    return folders


def outputs_writable(a: argparse.Namespace) -> None:
    """Refuse a --json / --report destination that cannot be written, or lies inside an artifact, before any work."""
    from ffsplit.artifact import check_output_file, refuse_inside

    folders = _artifact_folders(a)
    for flag in ("json", "report"):
        value = getattr(a, flag, None)
        if isinstance(value, str) and value != "-":  # "-": inspect --json without a file prints
            refuse_inside(Path(value), folders, f"--{flag}")
            check_output_file(value, f"--{flag}")


def cmd_export(a: argparse.Namespace) -> int:
    from ffsplit.parity.check import format_table

    try:
        res = _export(a)
    except CheckFailed as exc:  # --json still says what was measured, and why nothing was written
        write_json(a.json, {**(exc.details or {}), "passed": False, "error": str(exc)})
        raise
    m = res.manifest
    print(layer_table(m))
    print(params_line(m))
    print(size_line(res.out, m))
    weights = weight_range_line(m.target, m.layers)
    if weights:
        print(weights)
    for line in budget_lines(m.budget, per_layer=False):
        print(line)
    build = m.built
    if build.deferred:
        print(f"build deferred: target '{build.target}' cannot run here ({build.reason}); parity was "
              f"checked on {build.checked_on} (a CPU stand-in running the same graph); the separation guard "
              "waits for the build")
    elif m.separation is not None:
        print(f"branch separation in the runtime's optimised graph: pass ({m.separation.graph})")
    print(format_table(res.report))
    if m.run is not None:
        print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in m.run.timings.items()))
        memory = m.run.memory
        kind = "peak memory per stage" if memory.per_stage else "peak memory so far, after each stage"
        print(f"{kind}: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in memory.peak_mb.items()))
    print(f"wrote {res.out}")
    if build.deferred:
        print(f"next, on a machine where '{build.target}' runs: ffsplit build {res.out}")
    write_json(a.json, {**m.to_json(), "passed": True})
    return 0


def _export(a: argparse.Namespace) -> ExportResult:
    from ffsplit import api

    return api.export(
        a.model, a.out, target=a.target, heavy_ratio=a.heavy_ratio, light=a.light, heavy=a.heavy, budget=a.budget, calib=a.calib, eval=a.eval,
        calib_size=a.calib_size, eval_size=a.eval_size, max_length=a.max_length, min_cosine=a.min_cosine,
        min_retrieval=a.min_retrieval, limits=_limits(a.limit), force=a.force, trust_remote_code=a.trust_remote_code, task=a.task,
        exporter=a.exporter,
        log=log, progress=sys.stderr.isatty(),
    )


def cmd_check(a: argparse.Namespace) -> int:
    if a.golden:
        return _check_golden(a)
    from ffsplit import api
    from ffsplit.parity.check import format_table

    report = api.check(a.dir, eval_size=a.eval_size, source=a.source, limits=_limits(a.limit), eval_file=a.eval,
                       log=log, progress=sys.stderr.isatty())
    passed = report.separation is not None and report.separation.passed
    print(f"branch separation in the runtime's optimised graph: {'pass' if passed else 'FAIL'}")
    print(format_table(report))
    write_json(a.json, report.to_json())
    failed = not report.passed
    if failed:
        print("ffsplit: check failed: " + "; ".join(report.failures()), file=sys.stderr)
    if a.per_layer:
        failed = print_layers(api.debug(a.dir, source=a.source, log=log)) or failed
    return 1 if failed else 0


def _check_golden(a: argparse.Namespace) -> int:
    from ffsplit import bounds
    from ffsplit.api import check_golden

    if a.limit or a.per_layer or a.source or a.eval_size or a.eval:
        raise UsageError("--golden runs only the saved inputs: drop --limit, --per-layer, --source, --eval and --eval-size")
    if a.tolerance is not None:
        bounds.require_float("--tolerance", a.tolerance, 0.0, 1e6)
    result = check_golden(a.dir, tolerance=a.tolerance)
    print(result.summary())
    write_json(a.json, result.to_json())
    if not result.passed:
        print(f"ffsplit: check failed: {result.failure()}", file=sys.stderr)
        return 1
    return 0


def cmd_debug(a: argparse.Namespace) -> int:
    from ffsplit import api

    results = api.debug(a.dir, batch=a.batch, tolerance=a.tolerance, source=a.source, log=log)
    write_json(a.json, [r.to_json() for r in results])
    if not results:
        print("ffsplit: check failed: no FFN module could be matched to a graph value", file=sys.stderr)
        return 1
    return 1 if print_layers(results) else 0


def cmd_bench(a: argparse.Namespace) -> int:
    from ffsplit import api, bounds
    from ffsplit.bench.harness import format_table

    if a.min_speedup is not None:
        bounds.require_float("--min-speedup", a.min_speedup, 0.0, 1000.0, lo_open=True)

    rows = api.bench(
        a.dir, batches=a.batch, sequences=a.seq, runs=a.runs, warmup=a.warmup, min_seconds=a.min_seconds,
        source=a.source, log=log,
    )
    print(format_table(rows))
    accuracy = api.bench_accuracy(a.dir, source=a.source, log=log)
    if accuracy:
        print(f"original = {accuracy['baseline']}")
        print(accuracy_table(accuracy))
    write_json(a.json, [r.to_json() for r in rows])
    slow = [r for r in rows if r.model == "ffsplit" and a.min_speedup is not None and (r.speedup or 0) < a.min_speedup]
    if a.report:
        from ffsplit.bench.harness import report_markdown

        manifest = api.inspect_artifact(a.dir, graphs=False).manifest
        command = "ffsplit bench " + " ".join(sys.argv[2:] if len(sys.argv) > 2 else [a.dir])
        from ffsplit.artifact import write_text_atomic
        from ffsplit.version import versions

        write_text_atomic(Path(a.report), report_markdown(manifest, rows, versions(), command, accuracy=accuracy))
        print(f"wrote {a.report}")
    if slow:
        worst = min(slow, key=lambda r: r.speedup or 0)
        print(f"ffsplit: check failed: speedup {worst.speedup:.2f}x at batch {worst.batch} x sequence {worst.sequence} "
              f"is below --min-speedup {a.min_speedup:g} ({len(slow)} of the shapes)", file=sys.stderr)
        return 1
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    from ffsplit import api

    try:
        m = api.build(a.dir, target=a.target, tolerance=a.tolerance, log=log)
    except CheckFailed as exc:
        write_json(a.json, {**(exc.details or {}), "passed": False, "error": str(exc)})
        raise
    b = m.built
    print(f"branch separation in what {b.target} runs: pass ({m.separation.graph if m.separation else 'not run'})")
    if b.golden is not None:
        print(b.golden.summary())
    print(f"built {b.target} in {Path(a.dir).resolve()}")
    write_json(a.json, {**m.to_json(), "passed": True})
    return 0


def cmd_pack(a: argparse.Namespace) -> int:
    from ffsplit import api

    m = api.pack(a.dir, a.out, force=a.force)
    out = Path(a.out).resolve()
    size = sum((out / rel).stat().st_size for rel in m.files) / 1e6
    before = sum(p.stat().st_size for p in Path(a.dir).rglob("*") if p.is_file() and not p.is_symlink()) / 1e6
    dropped = m.packed.dropped if m.packed else ()
    print(f"left out (not run by target {m.target_name}): {', '.join(dropped) or 'nothing'}")
    print(f"{len(m.files)} files, {size:,.1f} MB (the full folder: {before:,.1f} MB)")
    print(f"wrote {out}")
    return 0


def cmd_inspect(a: argparse.Namespace) -> int:
    from ffsplit import api

    found = api.inspect_artifact(a.dir)
    if a.json == "-":
        print(dumps(found.to_json(), indent=2))
        return 0
    if a.json:
        write_json(a.json, found.to_json())
    m, src = found.manifest, found.manifest.source
    print(f"source: {src.spec} ({src.architecture}, {src.model_type})  task: {m.task}  target: {m.target_name}")
    print(f"FFN layout: {m.layout or 'family file ' + m.adapter}")
    build = m.built
    if build.deferred:
        print(f"build: deferred ({build.reason}): run `ffsplit build {a.dir}` where '{build.target}' runs")
    else:
        print(f"build: built for {build.target}")
    print(f"recipe: heavy ratio {m.recipe.heavy_ratio}, light {m.recipe.light_recipe}, "
          f"heavy precision {m.recipe.heavy_precision}")
    for line in budget_lines(m.budget, per_layer=True):
        print(line)
    print(layer_table(m))
    print(params_line(m))
    print(graph_table(found.graphs))
    print(f"parity at export: {'pass' if m.parity is not None and m.parity.passed else 'FAIL'}")
    return 0


def cmd_triton(a: argparse.Namespace) -> int:
    from ffsplit.serve.triton import python_repository, text_repository, write_repository

    write = {"python": python_repository, "text": text_repository}.get(a.backend, write_repository)
    model_dir = write(Path(a.dir), Path(a.repo), name=a.name)
    print(f"wrote {model_dir} (config.pbtxt and version 1)")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import time

    from ffsplit.serve.server import start_server

    server = start_server(Path(a.dir), http_port=a.http_port, grpc_port=a.grpc_port, log=log)
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


def cmd_targets(_a: argparse.Namespace) -> int:
    from ffsplit import api

    for t, reason in api.targets():
        status = "usable" if reason is None else f"not usable here: {reason}"
        print(f"{t.name:<16} {t.heavy_precision}/{t.light_precision:<6} {status}  - {t.description}")
    return 0


def cmd_support(_a: argparse.Namespace) -> int:
    from ffsplit.split.adapters import support_matrix

    print(support_matrix())
    return 0
