"""One process at a time on a piece of work: an advisory lock file that names its holder.

The lock is `flock` on the file (released by the kernel when the holder exits or is killed, so a
kill -9 never leaves a stale lock); the file's text says who holds it, for the message the next
process prints. Linux NFS clients map flock onto NFS byte-range locks, so it holds across nodes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pipeline.runtime.errors import UserError


class Busy(UserError):
    """Another process holds the lock."""


def holder(path: Path) -> str:
    """Who holds (or last held) the lock at `path`, in words."""
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "another process"


@contextlib.contextmanager
def hold(path: Path, *, what: str, advice: str) -> Iterator[None]:
    """Hold the lock at `path` for the body; raise Busy ('<what> is already running: <holder> (<path>);
    <advice>') when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"{what} is already running: {holder(path)} ({path}); {advice}") from None
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(mine).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock
