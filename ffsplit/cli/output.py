"""What the command line prints: one-line messages a terminal shows as they are, the tables and summary
lines of each verb, and the --json files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ffsplit.artifact.layout import MODEL_FILE
from ffsplit.jsonio import dumps

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ffsplit.manifest import Budget, LayerPlan, Manifest
    from ffsplit.parity.layers import ProbeResult


def log(msg: str) -> None:
    print(printable(f"[ffsplit] {msg}"), file=sys.stderr, flush=True)


def write_json(path: str | None, data: Any) -> None:
    from ffsplit.artifact import write_text_atomic

    if path:
        write_text_atomic(Path(path), dumps(data, indent=2) + "\n")


def params_line(m: Manifest) -> str:
    """Bytes first: an int8 or int4 light branch keeps its parameter count and shrinks its bytes."""
    p = m.params
    heavy = sum(r.heavy_bytes for r in m.layers)
    light = sum(r.light_bytes for r in m.layers)
    return (
        f"FFN weights {p.ffn_bytes_before / 1e6:,.2f} MB -> {p.ffn_bytes_after / 1e6:,.2f} MB "
        f"({p.ffn_bytes_reduction:.1%} smaller; heavy {heavy / 1e6:,.2f} MB, light {light / 1e6:,.2f} MB); "
        f"FFN parameters {p.ffn_before:,} -> {p.ffn_after:,} ({p.ffn_reduction:.1%} fewer); "
        f"model parameters {p.total_before:,} -> {p.total_after:,} ({p.total_reduction:.1%} fewer)"
    )


def budget_lines(b: Budget | None, *, per_layer: bool) -> list[str]:
    """What ``--budget`` chose (nothing without one): the total, and with ``per_layer`` each layer's choice."""
    if b is None:
        return []
    head = f"budget {b.kind}={b.value:g}: used {b.used:,} of {b.limit:,.0f}"
    if b.used_fraction_of_limit is not None and b.total_error is not None:
        head += f" ({b.used_fraction_of_limit:.1%}); summed calibration error {b.total_error:.4f}"
    rows = [f"  layer {r.layer}: heavy {r.heavy} ({r.heavy_ratio}), light {r.recipe}, calibration error {r.error:.4f}"
            for r in b.plan] if per_layer else []
    return [head, *rows]


def size_line(out: Path, m: Manifest) -> str:
    """Size on disk: what the target runs beside the source's weights, and the whole folder."""
    def size(paths: list[Path]) -> float:
        return sum(q.stat().st_size for q in paths if q.is_file()) / 1e6

    graph = size([out / name for name in m.files if name == MODEL_FILE or name.startswith(f"{MODEL_FILE}.")])
    source = Path(m.source.path)
    weights = size([*source.glob("*.safetensors")]) if source.is_dir() else 0.0
    total = size([out / name for name in m.files])
    return (f"on disk: model.onnx {graph:,.1f} MB (source weights {weights:,.1f} MB); the folder {total:,.1f} MB "
            "(with split.safetensors for check and the runtime's files)")


def layer_table(m: Manifest) -> str:
    head = (
        f"{'layer':>5} {'d_ff':>6} {'heavy':>6} {'light':>6} {'light params':>13} {'FFN bytes':>10} {'recipe':<22} "
        f"{'precision (h/l)':<16} {'heavy score':>11} {'light err in/out':>17}"
    )
    lines = [head, "-" * len(head)]
    for r in m.layers:
        err = "/".join("-" if e is None else f"{e:.3g}" for e in (r.light_in_error, r.light_out_error))
        err = "-" if err == "-/-" else err
        lines.append(
            f"{r.layer:>5} {r.d_ff:>6} {r.heavy:>6} {r.light:>6} {r.light_params:>13,} "
            f"{r.ffn_bytes_after:>10,} {r.light_recipe:<22} "
            f"{r.heavy_precision + '/' + r.light_precision:<16} {r.heavy_score_share:>10.1%} {err:>17}"
        )
    return "\n".join(lines)


def graph_table(graphs: dict[str, Any]) -> str:
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


def weight_range_line(tgt: Mapping[str, Any], layers: Sequence[LayerPlan]) -> str | None:
    """Which int8 weight range an export for the target ``tgt`` (as its manifest records it) used, when it
    quantised anything to int8: it decides where it runs well."""
    int8 = tgt.get("other_matmuls") == "int8" or any(
        "int8" in (row.heavy_precision, row.light_precision) for row in layers)
    if not int8:
        return None
    if tgt.get("int8_weight_range") == "full":
        return ("int8 weights: full range (+-127); CPUs without VNNI saturate on them: to run there, export "
                "with a target file saying int8_weight_range = \"reduced\"")
    return "int8 weights: within +-64, safe on CPUs without VNNI (on one with VNNI, int8_weight_range = \"full\" is more accurate)"


def print_layers(results: list[ProbeResult]) -> bool:
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


def accuracy_table(accuracy: dict[str, Any]) -> str:
    """Both bench models' accuracy against the original torch model, one row each."""
    names = list(accuracy["original"])
    head = f"accuracy vs the original torch model on {accuracy['texts']} evaluation texts\n{'model':<10} " + " ".join(
        f"{n:>15}" for n in names)
    rows = [f"{m:<10} " + " ".join(f"{accuracy[m][n]:>15.4f}" for n in names) for m in ("original", "ffsplit")]
    return "\n".join([head, *rows])


MESSAGE_LIMIT = 2000  # characters of one error line: a value echoed from a file is cut, never printed whole


def printable(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` on one line a terminal shows as it is: every character that is not printable (ESC, line and
    paragraph separators, bidirectional marks, ...) escaped, and anything past ``limit`` cut."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."
