"""The ledger and the intent journal on disk (batchgen/folder/intents.py, ledger.py): fsynced in
batches, renames made durable, the journal kept small."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

# -- 21. renames and ledger lines are durable before a power cut could lose them ---------------


class FsyncSpy:
    """Records what every os.fsync was called on (a spy: the real fsync still runs)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = os.fsync
        lock = threading.Lock()

        def spy(fd: int) -> None:
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                target = "?"
            with lock:
                self.calls.append(target)
            real(fd)

        monkeypatch.setattr(os, "fsync", spy)
        import batchgen.store.images as store_mod

        monkeypatch.setattr(store_mod, "_fsync", spy)

    def count(self, path: Path) -> int:
        return sum(1 for c in self.calls if c == str(path))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_the_ledger_and_intents_are_fsynced_in_batches_and_renames_are_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from batchgen.folder.appender import LedgerWriter
    from batchgen.folder.intents import IntentJournal, Unsettled, read_unsettled
    from batchgen.store.images import ImageStore

    spy = FsyncSpy(monkeypatch)
    run = tmp_path / "run"
    run.mkdir()
    store = ImageStore(run)
    store.prepare()
    ledger = LedgerWriter(run / "ledger.jsonl")
    ledger.open()
    journal = IntentJournal(run, Unsettled())
    journal.open()

    async def job(i: int) -> None:
        _, write = journal.record(f"job-{i}", "t0", 0.2)
        await journal.durable(write)  # on disk before the request "leaves"
        await store.save(f"job-{i}", b"img%d" % i, "image/png", sidecar=b'{"i": %d}\n' % i)
        ledger.append_line(b'{"job_id": "job-%d", "status": "succeeded"}\n' % i)
        journal.settle(f"job-{i}", "t0")
        ledger.sync_soon()

    async def main() -> None:
        await asyncio.gather(*(job(i) for i in range(40)))
        await ledger._group.sync()  # the background fsync of the last batch, if still going

    try:
        asyncio.run(main())
        # Every line reached the disk during the run, in batches: far fewer fsyncs than lines.
        assert 1 <= spy.count(run / "ledger.jsonl") < 40
        assert 1 <= spy.count(run / "intents.jsonl") < 40
        # The images directory is fsynced after the renames of each commit.
        assert spy.count(run / "images") >= 1
        assert not ledger._group.dirty
    finally:
        store.close()
        ledger.close()
        journal.close()
    # The journal keeps only what is unsettled: nothing, here.
    assert not read_unsettled(run)


def test_the_intent_journal_stays_small_during_a_long_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    import batchgen.folder.intents as intents_mod
    from batchgen.folder.intents import IntentJournal, Unsettled, read_unsettled

    monkeypatch.setattr(intents_mod, "COMPACT_EVERY", 10)
    journal = IntentJournal(tmp_path, Unsettled())
    journal.open()

    async def main() -> None:
        for i in range(100):
            _, write = journal.record(f"job-{i}", "t", 0.25)
            await journal.durable(write)
            if i % 10:  # nine of ten settle; one in ten stays in flight
                journal.settle(f"job-{i}", "t")

    asyncio.run(main())
    # Rewritten as it went: a few lines more than the ten still open, not a line per request.
    lines = (tmp_path / "intents.jsonl").read_text().splitlines()
    assert len(lines) <= 10 + 12
    open_now = read_unsettled(tmp_path)
    assert {i.job_id for i in open_now} >= {f"job-{i}" for i in range(0, 100, 10)}
    journal.close()
    assert {i.job_id for i in read_unsettled(tmp_path)} == {f"job-{i}" for i in range(0, 100, 10)}
    assert read_unsettled(tmp_path).usd == pytest.approx(2.5)
