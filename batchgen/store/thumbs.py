"""Gallery thumbnails: :func:`make_thumb`, and :class:`Thumbnailer`, which makes them as images
land, off the run's critical path.

Decoding a real 1 MB PNG costs about 16-40 ms of CPU, several times what collecting it costs, so
a pass over every image at the end of a run made the run half again as long (issue 25). The
store hands each image to the thumbnailer once it is durable; the thumbnailer's one thread
lowers its own scheduling priority (Linux: per thread), and makes a thumbnail only once the
store's writer has had nothing to do for :data:`QUIET_S`. A priority alone did not keep it off
the run's path: a 1K thumbnail costs ~10 ms of CPU against ~1.3 ms for all of a small image's
live round trip, the thread holds the GIL in Pillow's Python parts (and is preempted holding
it), and its files share the disk's journal with the run's fsyncs; with small images at full
speed (600 x 60 KB, concurrency 64) it made the run 1.2-1.4x of the same run without a
gallery. A run waiting on generations of tens of seconds leaves the store idle nearly all the
time, so the thumbnails are made then; a run saving flat out leaves them to ``batchgen
gallery`` (docs/design/realistic-sizes.md, "Thumbnails wait for a quiet store").

At the end of a run the thumbnailer gets a small budget (:data:`END_BUDGET_SHARE` of the run's
length) to finish what is queued; whatever is left is dropped: the page the run writes shows
those images themselves, and ``batchgen gallery`` makes their thumbnails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..folder.layout import thumb_relpath

log = logging.getLogger(__name__)

THUMB_PX = 256
THUMB_QUALITY = 80
# The run's end waits for queued thumbnails at most this share of how long the store was open,
# and at least END_MIN_S: with the page itself, the gallery work at the end stays within 5% of
# the run (issue 25; on a loaded machine, at 5% it came to 7-10% of a batch collection, at 2%
# to 4.4-5.4%, at 1% to 4.6-6.0%: the page itself takes 2-4%).
END_BUDGET_SHARE = 0.005
END_MIN_S = 0.02
# The thread's niceness: 19 is the lowest priority, CPU nobody else wants.
NICE = 19
# How long the store's writer must have been idle (nothing queued, written or being committed)
# before a thumbnail is made: longer than the gaps between commits of a run saving flat out
# (a few ms), far shorter than those of a run waiting on generations (~0.5 s at 64 x 30 s).
QUIET_S = 0.05
_STOP = object()


def make_thumb(src: Path, dst: Path, px: int = THUMB_PX) -> bool:
    """Write a JPEG thumbnail of ``src``; False (and no work) if ``dst`` is already current."""
    try:
        if dst.stat().st_mtime_ns >= src.stat().st_mtime_ns:
            return False
    except FileNotFoundError:
        pass
    tmp = dst.with_name(dst.name + ".tmp")
    with Image.open(src) as img:
        # JPEG can decode straight at a fraction of its size: much faster for 4K images.
        img.draft("RGB", (px * 2, px * 2))
        img.thumbnail((px, px), Image.Resampling.BICUBIC)
        if img.mode in ("RGBA", "LA", "P"):
            rgba = img.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
        else:
            flat = img.convert("RGB")
    # Renamed into place but not synced (not durable.atomic_write): a thumbnail is a cache made
    # again by deleting it, not worth a disk flush per image of a folder of thousands, and a
    # failure is this image's ("no thumbnail"), not a StorageError that ends the gallery.
    try:
        flat.save(tmp, "JPEG", quality=THUMB_QUALITY)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk must leave no .tmp behind
        raise
    return True


def thumb_path(run_dir: str, image: str) -> str:
    return os.path.join(run_dir, thumb_relpath(image))


class Thumbnailer:
    """Makes the thumbnails of images handed to :meth:`add`, on one low-priority thread."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = str(run_dir)
        self.made = 0
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._opened = time.monotonic()
        self._give_up_at = float("inf")
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._quiet = threading.Event()  # the store's writer is idle (set at close too)
        self._quiet_since = 0.0

    def add(self, images: list[str]) -> None:
        """Queue durable images (absolute paths); called from the store's writer thread."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="batchgen-thumbs", daemon=True)
                self._thread.start()
        for image in images:
            self._queue.put(image)

    def store_idle(self, idle: bool) -> None:
        """From the store's writer: it is about to wait with nothing to do (True), or has
        work again (False)."""
        if idle:
            self._quiet_since = time.monotonic()
            self._quiet.set()
        elif self._give_up_at == float("inf"):
            self._quiet.clear()

    def _wait_quiet(self) -> None:
        """Until the writer has been idle for QUIET_S, or the store is closing."""
        while self._give_up_at == float("inf"):
            if not self._quiet.wait(0.25):
                continue
            left = self._quiet_since + QUIET_S - time.monotonic()
            if left <= 0 and self._quiet.is_set():
                return
            time.sleep(max(left, 0.001))

    def close(self, budget_s: float | None = None) -> None:
        """Finish what is queued within ``budget_s`` (default: a share of the time since the
        store opened), then stop; what is left is dropped."""
        if budget_s is None:
            budget_s = max(END_MIN_S, END_BUDGET_SHARE * (time.monotonic() - self._opened))
        self._give_up_at = time.monotonic() + budget_s
        self._quiet.set()  # the run is over: what is left may be made now, within the budget
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # not Linux: a normal priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        made_dirs: set[str] = set()
        while True:
            item = self._queue.get()
            if item is _STOP or time.monotonic() > self._give_up_at:
                return
            assert isinstance(item, str)
            self._wait_quiet()
            if time.monotonic() > self._give_up_at:
                return
            dst = thumb_path(self.run_dir, item)
            try:
                folder = os.path.dirname(dst)
                if folder not in made_dirs:
                    os.makedirs(folder, exist_ok=True)
                    made_dirs.add(folder)
                if make_thumb(Path(item), Path(dst)):
                    self.made += 1
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                # The gallery tries again and shows why; the run goes on either way.
                log.debug("%s: no thumbnail yet: %s", item, exc)
            except Exception:  # a bug here must never take a save or the run with it
                log.warning("the thumbnailer failed on %s", item, exc_info=True)
