"""Peak resident memory of this process, per stage.

Users export models close to their machine's memory, so every export
reports the peak resident set of each stage. On Linux the kernel's
high-water mark (``VmHWM``) is reset at the start of a stage by writing
``5`` to ``/proc/self/clear_refs``, so each stage's figure is its own peak,
not the peak of everything before it. Where that is not possible (another
OS, a kernel that refuses), the figure is the process's peak so far
(``ru_maxrss``), and ``per_stage`` says so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ffsplit.errors import FFSplitError

if TYPE_CHECKING:
    import torch

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def reset_peak() -> bool:
    """Start a new high-water mark; False when the peak cannot be reset here (it is then cumulative)."""
    try:
        with open(_CLEAR, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field: str) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def peak_bytes() -> int:
    """The resident high-water mark since the last ``reset_peak`` (since the start without one)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS reports bytes, Linux KiB
    return kb * 1024


def current_bytes() -> int:
    """The resident set now."""
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else peak_bytes()


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS.

    glibc keeps freed blocks below its (growing) mmap threshold in the heap, so a stage that freed a large
    model could still count it as resident until ``malloc_trim``; elsewhere this only collects.
    """
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc malloc.h)
MMAP_THRESHOLD = 1 << 20


def bound_heap() -> bool:
    """Have glibc give every allocation of 1 MiB or more its own mapping, returned to the OS when freed.

    By default glibc raises its mmap threshold each time such a block is freed (up to 32 MiB), after
    which the fp32 copies a layer computes with (one weight at a time, 16 MB at 0.5B) come from the heap
    and their freed space stays resident, fragmented: profiling a bf16 0.5B model peaked at 3.06 GB
    with the default and at 1.67 GB with a fixed 1 MiB threshold (2026-12-03, AMD EPYC). Process-wide;
    True where it took effect (glibc)."""
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    except (OSError, AttributeError):
        return False


_MADV_DONTNEED = 4


def _mapped_weight_files() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``*.safetensors`` files (how transformers reads them)."""
    ranges = []
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip().endswith(".safetensors"):
                    start, end = fields[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except OSError:
        pass
    return ranges


def forget_file_pages(tensors: Iterable[torch.Tensor]) -> int:
    """Drop from the resident set the pages of ``tensors`` that lie in a mapped checkpoint file; the bytes
    dropped.

    A checkpoint loaded by mapping its file stays resident page by page as it is read, and a weight the
    split has replaced keeps its pages resident as long as any other weight of the file is alive (the
    0.5B Llama's replaced FFN rows: 0.6 GB). Only whole pages inside each tensor go, and only of the file's
    mapping, never of memory a process wrote: a page read again later comes back from the file unchanged.
    """
    import ctypes

    files = _mapped_weight_files()
    if not files:
        return 0
    try:
        madvise = ctypes.CDLL("libc.so.6").madvise
    except (OSError, AttributeError):
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    dropped = 0
    for t in tensors:
        storage = t.untyped_storage()  # the whole weight, also under a view (a transposed Conv1D, a slice)
        start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
        if not storage.nbytes():
            continue
        if not any(lo <= start and end <= hi for lo, hi in files):
            continue
        lo, hi = -(-start // page) * page, end // page * page
        if hi > lo and madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_DONTNEED) == 0:
            dropped += hi - lo
    return dropped


def drop_weights(model: object) -> None:
    """Empty every parameter and buffer of a torch model this process is done with.

    Dropping the last reference is not enough: torch.onnx keeps what it captured alive after the export
    returns (its initializers wrap the parameters themselves), so the tensors' storage is released here.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.data = torch.empty(0, dtype=tensor.dtype)


# A library that runs out of disk while writing often says so in its own words: ONNX Runtime raises
# "Protobuf serialization failed", OpenVINO a RuntimeError, the tokenizer "os error 28". Below this much
# free space after such a failure, the disk (or quota) is what failed.
_NEARLY_FULL = 4 << 20


def nearly_full(path: str | Path) -> bool:
    """Whether the disk holding ``path`` (or its nearest existing parent) has (almost) no space left."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL
    except OSError:
        return False


@contextlib.contextmanager
def runtime_writes(folder: Path) -> Iterator[None]:
    """Around a runtime call that writes into ``folder``: its failure on a full disk becomes OSError(ENOSPC),
    which every verb reports as bad input (exit 2) with nothing half-written left."""
    try:
        yield
    except (OSError, FFSplitError):
        raise
    except Exception as exc:
        if nearly_full(folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder)) from exc
        raise

