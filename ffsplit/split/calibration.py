"""Calibration and evaluation text.

The bundled corpus is built at run time, deterministically, from text already
on the machine: docstrings of the Python standard library, read with ``ast``
(no module is imported, so nothing runs), split into paragraphs. Each
paragraph goes to calibration or evaluation by a hash of its text, so the two
sets are disjoint by construction. A user file (one text per line) replaces the
calibration set; evaluation always stays the bundled, disjoint set.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from ffsplit.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from transformers import PreTrainedTokenizerBase

# Modules spread over many topics; a fixed list keeps the corpus stable.
STDLIB_MODULES: tuple[str, ...] = (
    "argparse", "ast", "asyncio/base_events", "asyncio/streams", "asyncio/tasks", "base64", "bisect",
    "calendar", "cmd", "codecs", "collections/__init__", "concurrent/futures/_base", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "_pydecimal", "difflib", "dis",
    "doctest", "email/message", "email/utils", "enum", "fileinput", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html/parser",
    "http/client", "http/cookiejar", "http/server", "imaplib", "inspect", "io", "ipaddress", "json/__init__",
    "json/decoder", "locale", "logging/__init__", "logging/handlers", "mailbox", "mimetypes",
    "multiprocessing/pool", "multiprocessing/process", "netrc", "numbers", "operator", "optparse",
    "os", "pathlib", "pdb", "pickle", "pkgutil", "platform", "plistlib", "poplib", "pprint", "pstats",
    "pydoc", "queue", "random", "re/__init__", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "sqlite3/__init__", "ssl", "statistics", "string",
    "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "turtle", "typing", "unittest/case", "unittest/mock", "urllib/parse", "urllib/request",
    "uuid", "warnings", "wave", "weakref", "webbrowser", "xml/dom/minidom", "xml/etree/ElementTree",
    "zipfile", "zoneinfo/_zoneinfo",
)
MIN_CHARS = 60
MAX_CHARS = 600


@dataclass(frozen=True)
class Text:
    text: str
    source: str  # the standard-library module it came from, or the user file


def _paragraphs(doc: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        # Code samples and tables read nothing like prose.
        if not lines or any(ln.startswith((">>>", "...", "|", "+-", "==")) for ln in lines):
            continue
        para = " ".join(lines)
        if MIN_CHARS <= len(para) <= MAX_CHARS and sum(c.isalpha() for c in para) > 0.6 * len(para):
            out.append(para)
    return out


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                docs.append(doc)
    return docs


def _is_eval(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 4 == 0


@lru_cache(maxsize=1)
def bundled_corpus() -> tuple[tuple[Text, ...], tuple[Text, ...]]:
    """(calibration, evaluation): disjoint, deterministic, in a stable order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    calib: list[Text] = []
    evaluation: list[Text] = []
    for name in STDLIB_MODULES:
        path = stdlib / f"{name}.py"
        source = name.replace("/__init__", "").replace("/", ".")
        for doc in _docstrings(path):
            for para in _paragraphs(doc):
                if para in seen:
                    continue
                seen.add(para)
                (evaluation if _is_eval(para) else calib).append(Text(para, source))
    return tuple(_interleave(calib)), tuple(_interleave(evaluation))


def _interleave(texts: list[Text]) -> list[Text]:
    """Round-robin over sources so any prefix covers many topics."""
    by_source: dict[str, list[Text]] = {}
    for t in texts:
        by_source.setdefault(t.source, []).append(t)
    queues = [by_source[s] for s in sorted(by_source)]
    out: list[Text] = []
    i = 0
    while any(queues):
        for q in queues:
            if i < len(q):
                out.append(q[i])
        i += 1
        queues = [q for q in queues if i < len(q)]
    return out


def calibration_texts(calib_file: str | Path | None = None, *, limit: int = 512, max_length: int = 128) -> list[str]:
    """Calibration text: the bundled set, or one text per non-empty line of ``calib_file``."""
    if calib_file is None:
        texts = [t.text for t in bundled_corpus()[0][:limit]]
        if not texts:
            raise UsageError("no bundled calibration text was found on this machine: pass --calib FILE")
        return texts
    return text_lines(calib_file, limit=limit, max_length=max_length, what="calibration")


def text_lines(file: str | Path, *, limit: int, max_length: int, what: str) -> list[str]:
    """One text per non-empty line of a user's ``what`` (calibration, evaluation) file.

    A file is read line by line and stops after ``limit`` texts; each line is
    cut to what ``max_length`` tokens can hold before it reaches a tokenizer,
    so one huge line costs its length in reading, not gigabytes in tokenizing.
    """
    path = Path(file)
    if not path.is_file():
        raise UsageError(f"{what} file '{file}' not found: pass a text file with one text per line")
    cap = max(4096, 32 * max_length)  # bytes: far more than max_length tokens of any language
    texts: list[str] = []
    offset = 0
    try:
        with open(path, "rb") as f:
            for raw in _capped_lines(f, cap):
                if b"\x00" in raw:
                    raise UsageError(f"{what} file '{file}' is binary: pass a UTF-8 text file, one text per line")
                try:
                    line = raw.decode("utf-8", errors="strict" if len(raw) < cap else "ignore").strip()
                except UnicodeDecodeError as exc:
                    raise UsageError(
                        f"{what} file '{file}' is not UTF-8 (byte {offset + exc.start}): re-encode it as UTF-8"
                    ) from None
                offset += len(raw)
                if line:
                    texts.append(line)
                    if len(texts) >= limit:
                        break
    except OSError as exc:
        raise UsageError(f"{what} file '{file}' cannot be read ({exc.strerror})") from None
    if not texts:
        raise UsageError(f"{what} file '{file}' is empty: give at least one line of text")
    return texts


def _capped_lines(f: BinaryIO, cap: int) -> Iterator[bytes]:
    """The lines of a binary file, each cut to ``cap`` bytes (the rest of an over-long line is read past in chunks and dropped)."""
    while True:
        line = f.readline(cap)
        if not line:
            return
        if len(line) == cap and not line.endswith(b"\n"):
            while (rest := f.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
        yield line


def evaluation_texts(limit: int = 256) -> list[Text]:
    return list(bundled_corpus()[1][:limit])


def eval_texts(eval_file: str | Path | None, *, limit: int, max_length: int) -> list[str]:
    """The texts parity is checked on: the user's file (``--eval``), or the bundled evaluation set."""
    from ffsplit.bounds import MIN_EVAL_TEXTS

    if eval_file is None:
        texts = [t.text for t in evaluation_texts(limit)]
        if len(texts) < MIN_EVAL_TEXTS:
            raise UsageError("fewer than 11 bundled evaluation texts were found on this machine (retrieval@10 needs 11)")
        return texts
    texts = text_lines(eval_file, limit=limit, max_length=max_length, what="evaluation")
    if len(texts) < MIN_EVAL_TEXTS:
        raise UsageError(f"evaluation file '{eval_file}' has {len(texts)} texts: give at least 11 (retrieval@10 needs 11)")
    return texts


def corpus_digest(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode())
        h.update(b"\n")
    return h.hexdigest()


def encode_batches(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, batch_size: int, max_length: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches (dict of int64 tensors) in the order of ``texts``, with position_ids.

    Positions count real tokens only (``cumsum(mask) - 1``), so a left-padded
    row gets the same positions as the unpadded text.
    """
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        batch = dict(tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
        batch["position_ids"] = positions_from_mask(batch["attention_mask"])
        yield batch


def calibration_feeds(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, max_length: int, names: set[str]
) -> list[dict[str, np.ndarray]]:
    """One graph feed (numpy int64) per text, at its own length: what a static quantiser calibrates on."""
    feeds = []
    for batch in encode_batches(tokenizer, texts, batch_size=1, max_length=max_length):
        feeds.append({k: v.numpy().astype("int64") for k, v in batch.items() if k in names})
    return feeds


# torch or numpy: the one position rule serves both
ArrayT = TypeVar("ArrayT", "torch.Tensor", "np.ndarray")


def positions_from_mask(mask: ArrayT) -> ArrayT:
    """Position ids counting real tokens only, ``cumsum(mask) - 1`` floored at 0 (torch or numpy).

    The one rule torch references, exported graphs, the runtime's generation loop
    and bench all share, so a left-padded row gets the positions of its unpadded text.
    """
    return (mask.cumsum(-1) - 1).clip(min=0)


def model_inputs(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], *, position_ids: bool
) -> dict[str, torch.Tensor]:
    """The entries of ``batch`` that ``model.forward`` takes (position_ids only when the task uses them)."""
    accepted = set(inspect.signature(model.forward).parameters)
    return {k: v for k, v in batch.items() if k in accepted and (k != "position_ids" or position_ids)}
