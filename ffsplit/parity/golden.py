"""Golden outputs: inputs and the runtime's outputs saved at export, re-run by ``check --golden``.

A regression test for CI that needs neither torch nor the source model: the
artifact's own runtime, on the artifact's own inputs, must reproduce what it
gave when the export passed its three-way check. Stored as ``golden.npz``
(numpy arrays only, read with ``allow_pickle=False``); for causal LMs only the
last position's logits, which is what generation reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ffsplit.artifact import GOLDEN_FILE
from ffsplit.errors import CheckFailed, UsageError
from ffsplit.manifest import GoldenReplay

if TYPE_CHECKING:
    from ffsplit.manifest import Manifest
    from ffsplit.runtimes.base import Runner
    from ffsplit.tasks import TaskSpec

GOLDEN_TEXTS = 4
_MAX_GOLDEN_BYTES = 256 << 20


def _kept(output: np.ndarray, decoder: bool) -> np.ndarray:
    return output[:, -1] if decoder else output


def write_golden(path: Path, runner: Runner, batch: dict[str, np.ndarray], task: TaskSpec) -> None:
    """Run ``batch`` (a tokenised batch) through ``runner`` and save its feed and the task's output."""
    feed = runner.feed_from(batch)
    out = runner.infer(feed)[task.output]
    arrays = {f"in.{k}": np.asarray(v) for k, v in feed.items()}
    arrays[f"out.{task.output}"] = _kept(np.asarray(out), task.decoder)
    with path.open("wb") as f:
        np.savez(f, **arrays)


def read_golden(path: Path) -> tuple[dict[str, np.ndarray], str, np.ndarray]:
    """(feed, output name, expected output); UsageError when the file is missing or not ffsplit's."""
    if not path.is_file():
        raise UsageError(f"{path} does not exist: the artifact predates golden outputs; re-run ffsplit export")
    if path.stat().st_size > _MAX_GOLDEN_BYTES:
        raise UsageError(f"{path} is larger than any golden file ffsplit writes")
    try:
        _check_members(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except UsageError:
        raise
    except Exception as exc:  # numpy raises several types for a damaged archive
        raise UsageError(f"{path} is damaged ({type(exc).__name__}): re-run ffsplit export") from None
    outs = [k for k in arrays if k.startswith("out.")]
    if len(outs) != 1 or not any(k.startswith("in.") for k in arrays):
        raise UsageError(f"{path} is not an ffsplit golden file: re-run ffsplit export")
    feed = {k[3:]: v for k, v in arrays.items() if k.startswith("in.")}
    return feed, outs[0][4:], arrays[outs[0]]


def _check_members(path: Path) -> None:
    """Refuse, from the arrays' headers alone, a golden file whose arrays are not numbers or would inflate
    past the size cap (a small compressed file can hold gigabytes of zeros)."""
    import zipfile

    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _fortran, dtype = read(f)
            if dtype.kind not in "biuf" or dtype.hasobject:
                raise UsageError(f"{path}: '{info.filename[:60]}' holds {dtype.kind!r} data, not numbers: re-run ffsplit export")
            total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if total > _MAX_GOLDEN_BYTES:
                raise UsageError(f"{path} would inflate past {_MAX_GOLDEN_BYTES >> 20} MB: re-run ffsplit export")


def _check_feed(feed: dict[str, np.ndarray], folder: Path, manifest: Manifest) -> None:
    """The golden inputs within what the model takes: token ids in its vocabulary, no longer than its positions."""
    import json

    ids = feed.get("input_ids")
    if ids is None or ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise UsageError(f"{folder / GOLDEN_FILE}: input_ids must be a 2-D integer array: re-run ffsplit export")
    try:
        vocab = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError, AttributeError):
        vocab = None
    if ids.size and (int(ids.min()) < 0 or (isinstance(vocab, int) and int(ids.max()) >= vocab)):
        raise UsageError(f"{folder / GOLDEN_FILE}: a token id outside the vocabulary ({vocab}): re-run ffsplit export")
    limit = manifest.source.max_positions
    if limit is not None and ids.shape[1] > limit:
        raise UsageError(f"{folder / GOLDEN_FILE}: {ids.shape[1]} tokens, longer than the model's {limit} positions: "
                         "re-run ffsplit export")


def replay_golden(folder: Path, runner: Runner, manifest: Manifest, *, tolerance: float | None = None) -> GoldenReplay:
    """Run the golden inputs of the artifact in ``folder`` through an active ``runner`` and compare (see
    ``api.check_golden``). The feed is rebuilt by the runner from the token inputs, so a runtime with its own
    prefill form (TensorRT's one masked past slot) replays what another runtime recorded."""
    from ffsplit.signature import is_past
    from ffsplit.tasks import TASKS

    task = TASKS[manifest.task]
    feed, name, want = read_golden(Path(folder) / GOLDEN_FILE)
    _check_feed(feed, Path(folder), manifest)
    tol = tolerance if tolerance is not None else float(manifest.limits["fidelity"].get("max_abs", 1e-4))
    got = _kept(np.asarray(runner.infer(runner.feed_from({k: v for k, v in feed.items() if not is_past(k)}))[name]),
                task.decoder)
    if got.shape != want.shape:
        raise CheckFailed(f"golden {name}: shape {got.shape}, expected {want.shape}")
    if not want.size:  # an empty comparison proves nothing: it fails
        raise CheckFailed(f"{GOLDEN_FILE} holds no golden rows, so nothing was compared: re-run ffsplit export")
    max_abs = float(np.abs(got.astype(np.float64) - want).max())
    return GoldenReplay(output=name, target=runner.target.name, max_abs=max_abs, tolerance=tol,
                        rows=int(want.shape[0]), passed=max_abs <= tol)
