"""Errors a user fixes from one line, and the guard every command's entry point runs under.

A stage that meets bad input (a missing data set, malformed JSON, settings that do not fit, a full
disk) stops with one line on stderr that says what, where and what to do, and exit status 2. With
`--debug` on the command line or PIPELINE_DEBUG=1 in the environment the traceback comes too.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable, Iterator


class UserError(Exception):
    """An error whose message alone tells the user what to fix."""


@contextlib.contextmanager
def settings_errors() -> Iterator[None]:
    """A ValueError (a setting that does not fit) or FileNotFoundError (an input not made yet) in the
    body becomes a UserError with the same message: one line for the user, and the launcher does not
    resubmit a job that would only fail the same way."""
    try:
        yield
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from e


def debugging(argv: list[str]) -> bool:
    """Whether tracebacks were asked for: `--debug` or PIPELINE_DEBUG=1."""
    return "--debug" in argv or os.environ.get("PIPELINE_DEBUG", "") not in ("", "0")


def os_error_line(e: OSError) -> str:
    """An OSError as one line that names the file and, for the usual causes, what to do."""
    where = f"{e.filename}: " if e.filename else ""
    advice = {
        errno.ENOSPC: "the disk is full; free space and run the same command again (finished work is kept)",
        errno.EDQUOT: "the disk quota is used up; free space and run the same command again (finished work is kept)",
        errno.EACCES: "no permission; choose a folder you can write (paths.run_dir) or fix its permissions",
        errno.EROFS: "a read-only file system; choose a writable paths.run_dir",
        errno.ENOTDIR: "a file stands where a folder should be; check the paths.* settings",
    }.get(e.errno, "")
    return f"{where}{e.strerror or e}" + (f": {advice}" if advice else "")


def guarded(name: str, main: Callable[[], int | None], argv: list[str] | None = None) -> int:
    """Run `main`; a UserError or OSError becomes one line on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main() or 0
    except (UserError, OSError) as e:
        if debugging(argv):
            raise
        line = str(e) if isinstance(e, UserError) else os_error_line(e)
        print(f"{name}: {line}  [--debug shows the traceback]", file=sys.stderr)
        return 2
