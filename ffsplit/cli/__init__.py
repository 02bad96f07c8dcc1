"""Command line: ``ffsplit export | check | debug | bench | inspect | build | pack | triton | serve | targets | support``.

``parser`` parses the arguments, ``commands`` calls ``ffsplit.api`` (one ``cmd_<verb>`` each), ``output``
prints; ``main`` here dispatches and turns every failure into its exit code:
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
from typing import NoReturn

from ffsplit.cli import commands
from ffsplit.cli.commands import outputs_writable
from ffsplit.cli.output import printable
from ffsplit.cli.parser import build_parser
from ffsplit.errors import FFSplitError, UsageError

__all__ = ["build_parser", "main", "printable", "run"]


def _on_sigterm(_signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C so staged output folders are removed.
    raise KeyboardInterrupt


def _on_unraisable(hook: sys.UnraisableHookArgs) -> None:
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
    try:
        outputs_writable(args)
        return getattr(commands, f"cmd_{args.verb}")(args)
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
