"""The argument parser of every verb (a usage error is one line and exit 2)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import TYPE_CHECKING, NoReturn

from ffsplit import __version__
from ffsplit.cli.output import printable
from ffsplit.limits import COMPRESSION_METRICS, METRICS
from ffsplit.plan import DEFAULT_HEAVY_RATIO, DEFAULT_LIGHT, ExportOptions
from ffsplit.tasks import TASKS

if TYPE_CHECKING:
    # what ``add_subparsers`` returns, to which each verb's parser is added (typeshed's name for it)
    from argparse import _SubParsersAction as Subparsers


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(printable(f"ffsplit: error: {message} (see '{self.prog} --help')"), file=sys.stderr)
        raise SystemExit(2)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"'{text}' must list integers >= 1")
    return values


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


def _export_defaults() -> dict[str, object]:
    """``ExportOptions``' defaults: the one place they are set (the CLI's help quotes them)."""
    return {f.name: f.default for f in dataclasses.fields(ExportOptions) if f.default is not dataclasses.MISSING}


def _limit_help() -> str:
    floors = [m for m in COMPRESSION_METRICS if not METRICS[m].ceiling]
    ceilings = [m for m in COMPRESSION_METRICS if METRICS[m].ceiling]
    return (f"limit on what compression may cost, repeatable: {', '.join(floors)} (floors), "
            f"{', '.join(ceilings)} (ceiling{'s' if len(ceilings) > 1 else ''})")


def _add_export(sub: Subparsers) -> None:
    d = _export_defaults()
    e = sub.add_parser("export", help="profile, split, export to ONNX, build for a target and check parity")
    e.add_argument("model", help="a local Hugging Face model folder, or an alias: minilm")
    e.add_argument("--out", required=True, help="output folder (must not exist unless --force)")
    e.add_argument("--target", default=d["target"], help=f"shipped target name or a .toml path (default: {d['target']})")
    e.add_argument("--heavy-ratio", type=float, default=None, help="fraction of FFN neurons kept heavy, in (0, 1) "
                   f"(default: the target's heavy_ratio, else {DEFAULT_HEAVY_RATIO})")
    e.add_argument(
        "--light", default=None,
        help="light-branch recipe: none | lowrank:R | prune:P | int8 | int4[:B][:sym|asym] | structure+quantiser, "
        f"e.g. lowrank:128+int8 (default {DEFAULT_LIGHT})",
    )
    e.add_argument("--heavy", default=None, help="heavy-branch precision: fp32 | fp16 | bf16 | int8 (default: the target's)")
    e.add_argument(
        "--budget", help="choose heavy ratio and light recipe per layer to minimise calibration error under "
        "ffn-params=FRACTION | flops=FRACTION | size-mb=MB (instead of --light / --heavy-ratio)",
    )
    e.add_argument("--calib", help="calibration text file, one text per line (default: bundled text)")
    e.add_argument("--eval", help="evaluation text file for the parity check, one text per line, at least 11 "
                   "(default: bundled text disjoint from calibration)")
    e.add_argument("--calib-size", type=int, default=d["calib_size"], help=f"calibration texts used (default {d['calib_size']})")
    e.add_argument("--eval-size", type=int, default=d["eval_size"],
                   help=f"evaluation texts for the parity check (default {d['eval_size']})")
    e.add_argument("--max-length", type=int, default=d["max_length"],
                   help=f"token limit for calibration and evaluation (default {d['max_length']})")
    e.add_argument("--min-cosine", type=float, help="lowest mean embedding cosine accepted vs the original (lossy recipes)")
    e.add_argument("--min-retrieval", type=float, help="lowest retrieval agreement@10 accepted vs the original (lossy recipes)")
    e.add_argument("--limit", action="append", default=[], metavar="METRIC=VALUE", help=_limit_help())
    e.add_argument(
        "--task", default=d["task"],
        help=" | ".join(["auto (from the model's architectures)", *TASKS]),
    )
    e.add_argument(
        "--exporter", default=d["exporter"], choices=["auto", "dynamo", "torchscript"],  # exporter.export.EXPORTERS (a test holds them equal)
        help="auto: dynamo, falling back to TorchScript only if dynamo fails or misses fidelity",
    )
    e.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    e.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code to run")
    e.add_argument("--json", help="also write the manifest to this file")


def _add_artifact_verbs(sub: Subparsers) -> None:
    _add_checks(sub)
    _add_deployment(sub)


def _add_checks(sub: Subparsers) -> None:
    """The verbs that re-run or measure an output folder: check, debug, bench, inspect."""
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


def _add_deployment(sub: Subparsers) -> None:
    """The verbs that build, copy or serve an output folder: build, pack, triton, serve."""
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
