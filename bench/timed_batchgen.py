"""The real ``batchgen`` command line, with stopwatches around its phases.

    BENCH_RESULT=out.json python bench/timed_batchgen.py run MANIFEST --out DIR ...

Arguments are those of ``batchgen``. ``batchgen.run.prepare`` (manifest validation, ledger index,
plan count: everything before the first request), ``batchgen.run.execute`` (the run phase:
workers, client, store, ledger) and ``batchgen.cli.refresh_gallery`` (the gallery page written
after the run) are wrapped with ``time.perf_counter`` and nothing else changes; the CLI looks all
three up at call time, so it picks the wrapped ones up. In batch mode each batch's
``Collector.collect`` (download, parse, store, ledger) is timed too, summed as ``collect_s``,
and ``ImageStore.close`` (where the thumbnails still queued get their short wait) as
``store_close_s``.
After each phase the process's peak RSS so far is noted too (``<phase>_maxrss``, bytes), so a
peak can be put down to its phase, and the CPU seconds the phase used (``<phase>_cpu_s``, every
thread). The figures are written to ``$BENCH_RESULT`` at exit, whatever the exit code.

``BENCH_NO_FSYNC=1`` replaces the store's fsync with a no-op: a diagnostic only, to show what the
durable writes cost. It is never used for a figure that is compared against a target.
``BENCH_NO_PROMISE_SYNCS=1`` (diagnostic, bench/promises.py) turns off what issue 10 added: the
intents' group fsync before each send, the ledger's fsync per batch and the directory fsyncs.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import time
from collections.abc import Callable
from typing import Any, TypeVar

import batchgen.cli.app as cli_mod
import batchgen.live.runner as runner_mod
import batchgen.planning.prepare as run_mod

T = TypeVar("T")
timings: dict[str, float] = {}


def cpu_s() -> float:
    """CPU seconds of this process so far, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _done(name: str, t0: float, cpu0: float) -> None:
    timings[f"{name}_s"] = time.perf_counter() - t0
    timings[f"{name}_cpu_s"] = cpu_s() - cpu0
    timings[f"{name}_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _timed(name: str, fn: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        t0, cpu0 = time.perf_counter(), cpu_s()
        try:
            return fn(*args, **kwargs)
        finally:
            _done(name, t0, cpu0)

    return wrapper


def _timed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, cpu0 = time.perf_counter(), cpu_s()
        try:
            return await fn(*args, **kwargs)
        finally:
            _done(name, t0, cpu0)

    return wrapper


def _summed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """Like _timed_async, but adds up every call (one collection per batch)."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, cpu0 = time.perf_counter(), cpu_s()
        try:
            return await fn(*args, **kwargs)
        finally:
            timings[f"{name}_s"] = timings.get(f"{name}_s", 0.0) + time.perf_counter() - t0
            timings[f"{name}_cpu_s"] = timings.get(f"{name}_cpu_s", 0.0) + cpu_s() - cpu0
            timings[f"{name}_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    return wrapper


def _summed(name: str, fn: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[f"{name}_s"] = timings.get(f"{name}_s", 0.0) + time.perf_counter() - t0

    return wrapper


def _write() -> None:
    path = os.environ.get("BENCH_RESULT")
    if path:
        with open(path, "w") as fh:
            json.dump(timings, fh)


def _no_fsync() -> None:
    import batchgen.store.images as store

    def fsync(fd: int) -> None:
        return None

    store._fsync = fsync


def _no_promise_syncs() -> None:
    import batchgen.folder.durable as durable
    import batchgen.folder.intents as intents
    import batchgen.store.images as store

    async def no_sync(self: durable.GroupSync) -> None:
        self._synced = self._written  # as if on disk at once
        self._task = None

    def no_dir_sync(path: object) -> None:
        return None

    durable.GroupSync._run = no_sync  # type: ignore[method-assign]
    store.fsync_dir = intents.fsync_dir = no_dir_sync


if __name__ == "__main__":
    if os.environ.get("BENCH_NO_FSYNC") == "1":
        _no_fsync()
    if os.environ.get("BENCH_NO_PROMISE_SYNCS") == "1":
        _no_promise_syncs()
    run_mod.prepare = _timed("prepare", run_mod.prepare)
    runner_mod.execute = _timed_async("run", runner_mod.execute)
    # After runner_mod is patched: run_flow binds execute's name when imported.
    import batchgen.cli.run_flow as flow_mod

    flow_mod.refresh_gallery = _timed("gallery", flow_mod.refresh_gallery)
    import batchgen.batch.collect as collect_mod

    collect_mod.Collector.collect = _summed_async(  # type: ignore[method-assign]
        "collect", collect_mod.Collector.collect)
    import batchgen.store.images as images_mod

    # Closing the store waits (briefly) for the thumbnails still queued: gallery work too.
    images_mod.ImageStore.close = _summed(  # type: ignore[method-assign]
        "store_close", images_mod.ImageStore.close)
    atexit.register(_write)
    cli_mod.main(prog_name="batchgen")
