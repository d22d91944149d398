"""Overlap the stages of a GPU loop: prepare ahead in a thread, write behind in a process."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def map_ahead(fn: Callable[[T], R], items: Iterable[T], depth: int = 2) -> Iterator[R]:
    """Yield fn(item) for each item in order, computed up to `depth` items ahead in a thread. When
    the consumer stops early (an error, a break), the thread stops too and lets go of `items`, so a
    loader's worker processes end with it instead of outliving the run."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                results.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((fn(item), None)):
                    break
        except BaseException as e:  # handed to the consumer, who re-raises it
            put((None, e))
        finally:
            put(_END)

    thread = threading.Thread(target=produce, daemon=True, name="map_ahead")
    thread.start()
    try:
        while (got := results.get()) is not _END:
            value, error = got
            if error is not None:
                raise error
            yield value
    finally:
        stop.set()
        thread.join(timeout=60)


class InOrderThread:
    """Runs fn(item) in order in a thread for each item put, at most `depth` items behind."""

    def __init__(self, fn: Callable[[T], None], depth: int = 2):
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True, name="in-order")
        self._thread.start()

    def _run(self, fn: Callable[[T], None]) -> None:
        while (item := self._items.get()) is not _END:
            if self._error is None:
                try:
                    fn(item)
                except BaseException as e:  # re-raised in the caller's thread
                    self._error = e

    def put(self, item: T) -> None:
        """Queue fn(item); blocks while `depth` items wait. Re-raises an earlier call's error."""
        if self._error is not None:
            raise self._error
        self._items.put(item)

    def close(self) -> None:
        """Wait for every queued call; re-raises the first error."""
        self._items.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error


def _serve(fn: Callable[..., None], tasks, errors) -> None:
    """The writer process: run fn(*args) for each queued args until None; report the first error,
    else the seconds spent inside fn."""
    import time
    import traceback

    busy = 0.0
    while (args := tasks.get()) is not None:
        start = time.monotonic()
        try:
            fn(*args)
        except OSError as e:  # a full disk or an I/O error: re-raised as itself in the parent
            errors.put((e.errno, e.strerror, e.filename, traceback.format_exc()))
            return
        except BaseException:
            errors.put(traceback.format_exc())
            return
        busy += time.monotonic() - start
    errors.put(busy)


def _raise(reports: list) -> None:
    """Re-raise a child's failure: an OSError as an OSError (same errno and file), anything else as text."""
    for report in reports:
        if isinstance(report, tuple):
            errno, strerror, filename, _ = report
            raise OSError(errno, strerror, filename)
    raise RuntimeError(f"writer process failed:\n{reports[0]}")


class ProcessWriter:
    """Runs fn(*args) in order in a child process, so its Python work never holds this process's GIL.

    `fn` and its arguments must pickle. At most `depth` calls wait in the queue; a failure in the
    child is re-raised here at the next submit or at close.
    """

    def __init__(self, fn: Callable[..., None], processes: int = 1, depth: int = 4, start_method: str = "fork"):
        import multiprocessing

        ctx = multiprocessing.get_context(start_method)
        self._tasks, self._errors = ctx.Queue(depth), ctx.Queue()
        self._procs = [
            ctx.Process(target=_serve, args=(fn, self._tasks, self._errors), daemon=True, name=f"writer-{i}")
            for i in range(processes)
        ]
        for proc in self._procs:
            proc.start()

    def submit(self, *args) -> None:
        """Queue fn(*args); blocks while the queue is full."""
        while True:
            self._raise_if_failed()
            try:
                self._tasks.put(args, timeout=1.0)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        for proc in self._procs:
            if not proc.is_alive():
                proc.join()
                _raise(self._drain() or [f"exit code {proc.exitcode}"])

    def _drain(self) -> list:
        """Every report the children left (they have exited, so all of it is in the pipe)."""
        reports = []
        while True:
            try:
                reports.append(self._errors.get(timeout=0.5))
            except queue.Empty:
                return reports

    def close(self) -> float:
        """Wait for every queued call; re-raises a child's error. Returns the seconds the children
        spent in fn, summed (compare with the wall time to see whether writing is the bottleneck)."""
        for _ in self._procs:
            self._tasks.put(None)
        for proc in self._procs:
            proc.join()
        reports = self._drain()  # one per child, less any a failed submit already raised
        failed = [r for r in reports if not isinstance(r, float)] + [f"exit code {p.exitcode}" for p in self._procs if p.exitcode]
        if failed:
            _raise(failed)
        return sum(reports)
