"""The store's writer thread: order of the durable steps, batching, errors, shutdown."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from batchgen.errors import StorageError
from batchgen.folder.layout import subdir
from batchgen.store import images as store_mod
from batchgen.store.images import ImageStore


def _files(store: ImageStore) -> list[str]:
    """The names of every file under images/, in its subfolders too."""
    return sorted(p.name for p in store.images_dir.rglob("*") if p.is_file())


def _store(tmp_path: Path) -> ImageStore:
    store = ImageStore(tmp_path / "run")
    store.prepare()
    return store


async def _save_many(store: ImageStore, n: int) -> list[BaseException | None]:
    async def one(i: int) -> None:
        await store.save(f"job-{i}", b"img%d" % i, "image/png", sidecar=b'{"job": %d}\n' % i)

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    return list(results)


def test_saves_land_whole_with_their_sidecars(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        assert asyncio.run(_save_many(store, 40)) == [None] * 40
    finally:
        store.close()
    names = _files(store)
    assert len(names) == 80 and not [n for n in names if n.endswith(".tmp")]
    folder = store.images_dir / subdir("job-7")
    assert (folder / "job-7.png").read_bytes() == b"img7"
    assert (folder / "job-7.json").read_bytes() == b'{"job": 7}\n'
    assert store.relpath("job-7", "image/png") == f"images/{subdir('job-7')}/job-7.png"
    assert store.path_for("job-7", "image/png") == folder / "job-7.png"
    # 40 jobs over 256 folders: spread, not in one.
    assert not [p for p in store.images_dir.iterdir() if p.is_file()]
    assert len(list(store.images_dir.iterdir())) > 20


@pytest.mark.parametrize("slow_fsync_s", [0.0, 10.0], ids=["spread-over-threads", "inline"])
def test_every_file_is_fsynced_before_it_is_renamed_sidecar_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_fsync_s: float
) -> None:
    events: list[tuple[str, str]] = []
    lock = threading.Lock()
    synced: set[str] = set()
    threads: set[str] = set()
    real_fsync, real_replace = os.fsync, os.replace

    hold = threading.Event()

    def fsync(fd: int) -> None:
        if hold.is_set():
            hold.clear()
            time.sleep(0.05)  # meanwhile the other saves queue up: the next batch has them all
        real_fsync(fd)
        path = os.readlink(f"/proc/self/fd/{fd}")
        with lock:
            synced.add(path)
            threads.add(threading.current_thread().name)

    def replace(src: str, dst: str) -> None:
        with lock:
            assert os.path.realpath(src) in synced, f"{src} renamed before it was fsynced"
            events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc")
    monkeypatch.setattr(store_mod, "_fsync", fsync)
    monkeypatch.setattr(store_mod, "SLOW_FSYNC_S", slow_fsync_s)
    monkeypatch.setattr(os, "replace", replace)
    store = _store(tmp_path)

    async def main() -> list[BaseException | None]:
        await store.save("first", b"x", "image/png", sidecar=b"{}\n")  # times an fsync
        hold.set()
        return await _save_many(store, 20)

    try:
        assert asyncio.run(main()) == [None] * 20
    finally:
        store.close()
    order = [name for _, name in events]
    for i in range(20):
        assert order.index(f"job-{i}.json") < order.index(f"job-{i}.png")
    assert ("batchgen-store" in threads) and (len(threads) > 1) == (slow_fsync_s == 0.0)


@pytest.mark.parametrize("slow_fsync_s", [0.0, 10.0], ids=["spread-over-threads", "inline"])
def test_a_new_subfolder_is_made_durable_by_its_commit_before_the_save_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow_fsync_s: float
) -> None:
    """The entry of a subfolder made for a save is fsync'd in images/ with the commit's renames
    (not one fsync at a time as each of the 256 is made: issue 25), before the save returns:
    before any ledger line can count the image."""
    synced: list[tuple[str, bool]] = []  # (folder, whether the image had its final name then)
    lock = threading.Lock()
    real = store_mod.fsync_dir
    store = _store(tmp_path)
    image = store.path_for("job-1", "image/png")

    def fsync_dir(path: Path) -> None:
        real(path)
        with lock:
            synced.append((str(path), image.exists()))

    monkeypatch.setattr(store_mod, "fsync_dir", fsync_dir)
    monkeypatch.setattr(store_mod, "SLOW_FSYNC_S", slow_fsync_s)

    async def main() -> list[tuple[str, bool]]:
        await store.save("job-1", b"img", "image/png", sidecar=b"{}\n")
        with lock:
            seen = list(synced)
        synced.clear()
        await store.save("job-1b", b"img", "image/png", sidecar=b"{}\n")  # made no folder
        return seen

    try:
        first = asyncio.run(main())
    finally:
        store.close()
    assert (str(store.images_dir), True) in first  # after the renames, before save returned
    assert (str(image.parent), True) in first
    assert (str(store.images_dir), False) not in first  # no fsync of images/ on the way
    if subdir("job-1b") != subdir("job-1"):
        assert str(store.images_dir) in [f for f, _ in synced]
    else:
        assert str(store.images_dir) not in [f for f, _ in synced]


def test_a_full_disk_is_a_storage_error_and_leaves_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_fsync", fsync)
    store = _store(tmp_path)
    try:
        results = asyncio.run(_save_many(store, 5))
    finally:
        store.close()
    assert all(isinstance(r, StorageError) for r in results)
    assert "disk is full" in str(results[0])
    assert _files(store) == []


def test_one_failed_save_does_not_fail_the_rest_of_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def open_(path: str, flags: int, mode: int = 0o777) -> int:
        if "job-3." in str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", open_)
    store = _store(tmp_path)
    try:
        results = asyncio.run(_save_many(store, 8))
    finally:
        store.close()
    assert isinstance(results[3], StorageError)
    assert "not writable" in str(results[3])
    assert [r for i, r in enumerate(results) if i != 3] == [None] * 7
    names = set(_files(store))
    assert "job-3.png" not in names and "job-3.json" not in names
    assert not [n for n in names if n.endswith(".tmp")]


def test_close_finishes_queued_saves_and_stops_the_thread(tmp_path: Path) -> None:
    store = _store(tmp_path)

    async def main() -> None:
        async with store:
            await _save_many(store, 3)
        assert store._writer is None
        # Used again after close: a new writer starts.
        await store.save("again", b"x", "image/png", sidecar=b"{}\n")
        store.close()

    asyncio.run(main())
    assert store.path_for("again", "image/png").read_bytes() == b"x"
    assert not [t for t in threading.enumerate() if t.name == "batchgen-store"]


def test_a_bug_in_the_writer_fails_the_saves_instead_of_hanging_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(save: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(store_mod, "_write_tmp_files", broken)
    store = _store(tmp_path)

    async def main() -> list[BaseException | None]:
        return await asyncio.wait_for(_save_many(store, 5), timeout=10)

    try:
        results = asyncio.run(main())
    finally:
        monkeypatch.undo()
        store.close()
    assert all(isinstance(r, StorageError) and "boom" in str(r) for r in results)
    assert not [n for n in _files(store) if n.endswith(".tmp")]


def test_big_images_are_hashed_off_the_loop_to_the_same_digest() -> None:
    import hashlib

    from batchgen.store import digest

    small, big = os.urandom(1000), os.urandom(digest.HASH_OFF_LOOP_BYTES + 1)
    loop_thread = threading.get_ident()
    seen: list[int] = []
    real = digest.sha256_hex

    def spy(data: bytes) -> str:
        seen.append(threading.get_ident())
        return real(data)

    async def go() -> list[str]:
        return [await digest.image_sha256(small), await digest.image_sha256(big)]

    digest.sha256_hex = spy
    try:
        got = asyncio.run(go())
    finally:
        digest.sha256_hex = real
    assert got == [hashlib.sha256(small).hexdigest(), hashlib.sha256(big).hexdigest()]
    assert seen[0] == loop_thread and seen[1] != loop_thread
