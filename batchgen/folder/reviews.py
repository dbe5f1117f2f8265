"""Reviews: ``DIR/reviews.jsonl``, one line per decision a person made about an image.

``batchgen mark`` and the review page (``batchgen review``) both append here; exports, ``status``,
``report``, the gallery and ``run --redo-rejected`` read it back. A line is
``{"job_id", "sha256", "verdict", "note", "at"}``: a verdict is about one image, named by its
sha256, so when a job is made again its new image has no verdict until someone gives it one
(:func:`current_verdicts`). ``cleared`` undoes: the image is unreviewed again.

The file is only ever appended to, each line in one ``write`` under an exclusive ``flock`` (the
review server and a ``mark`` may write at once), then flushed and fsynced before the call
returns: a decision that was reported made survives a power cut. A torn last line (a ``kill -9``
mid-write) is skipped by readers and cut off by the next append, so it never becomes a bad line
in the middle; any other line that is not a review is an InputError naming it.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import InputError, StorageError
from .durable import why

log = logging.getLogger(__name__)

REVIEWS_FILE = "reviews.jsonl"
# A note is for a person to read (and for the ledger's redo line): long enough for a sentence or
# two, short enough that a pasted blob cannot bloat every export row.
MAX_NOTE = 2000
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Verdict(str, enum.Enum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    CLEARED = "cleared"  # `mark --clear`: the image is unreviewed again


@dataclass(frozen=True, slots=True, kw_only=True)
class Review:
    job_id: str
    sha256: str  # the image the verdict is about
    verdict: Verdict
    note: str = ""
    at: float  # unix time

    def to_line(self) -> bytes:
        return orjson.dumps({
            "job_id": self.job_id, "sha256": self.sha256, "verdict": self.verdict.value,
            "note": self.note, "at": self.at,
        }) + b"\n"


def review_problem(review: Review) -> str | None:
    """Why ``review`` may not be written (or was read back wrong); None if it is a review."""
    from ..spec import job_id_problem  # here: `status` starts without the specs module

    problem = job_id_problem(review.job_id)
    if problem is not None:
        return f"job_id: {problem}"
    if not isinstance(review.sha256, str) or not _SHA256.fullmatch(review.sha256):
        return f"sha256: {review.sha256!r} is not 64 lowercase hex digits"
    if not isinstance(review.verdict, Verdict):
        return f"verdict: {review.verdict!r} is not one of accepted, rejected, cleared"
    if not isinstance(review.note, str):
        return f"note: {review.note!r} is not text"
    if len(review.note) > MAX_NOTE:
        return f"note: {len(review.note)} characters, at most {MAX_NOTE}"
    if isinstance(review.at, bool) or not isinstance(review.at, (int, float)) \
            or not math.isfinite(review.at) or review.at < 0:
        return f"at: {review.at!r} is not a time"
    return None


def append_reviews(folder: Path, reviews: Iterable[Review]) -> None:
    """Append ``reviews`` to ``folder/reviews.jsonl``, durable when this returns.

    Every review is checked first: one bad one and nothing is written (InputError). All of them
    go in one write under an exclusive lock, so two writers never interleave lines.
    """
    items = list(reviews)
    for review in items:
        problem = review_problem(review)
        if problem is not None:
            raise InputError(f"review of {review.job_id!r}: {problem}")
    if not items:
        return
    data = b"".join(r.to_line() for r in items)
    path = folder / REVIEWS_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {why(exc)}") from exc
    try:
        import fcntl  # here: POSIX only, and only writers need it

        fcntl.flock(fd, fcntl.LOCK_EX)
        _cut_torn_tail(fd, path)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as exc:
        raise StorageError(f"cannot write {path}: {why(exc)}") from exc
    finally:
        os.close(fd)  # releases the lock
    if len(items) == 1:
        log.debug("review: %s %s", items[0].job_id, items[0].verdict.value)


def _cut_torn_tail(fd: int, path: Path) -> None:
    """A last line with no newline: a whole review gets its newline, a torn one is cut off."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    tail_len = min(size, 64 * 1024)
    tail = os.pread(fd, tail_len, size - tail_len)
    if tail.endswith(b"\n"):
        return
    cut = tail.rfind(b"\n")
    if cut < 0 and tail_len < size:
        # One line longer than the window with no newline: nothing this module wrote.
        raise StorageError(f"{path}: the last line is not a review; fix or remove it")
    last = tail[cut + 1:]
    if _parse(last)[0] is not None:
        os.write(fd, b"\n")
        return
    log.warning("%s: cutting off a torn last line (%d bytes)", path, len(last))
    os.ftruncate(fd, size - len(last))


def _parse(raw: bytes) -> tuple[Review | None, str]:
    """A line -> (its review, "") or (None, why it is not one)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, "not a JSON line"
    if not isinstance(obj, dict):
        return None, "not a review object"
    try:
        verdict = Verdict(obj.get("verdict"))
    except ValueError:
        return None, f"verdict: {obj.get('verdict')!r} is not one of accepted, rejected, cleared"
    note = obj.get("note")
    review = Review(
        job_id=obj.get("job_id", ""), sha256=obj.get("sha256", ""), verdict=verdict,
        note="" if note is None else note, at=obj.get("at", -1.0),
    )
    problem = review_problem(review)
    return (None, problem) if problem is not None else (review, "")


def read_reviews(folder: Path) -> Iterator[Review]:
    """Every review in file order. A torn last line is skipped; another bad line is an
    InputError naming the file and the line."""
    path = folder / REVIEWS_FILE
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            review, problem = _parse(raw)
            if review is not None:
                yield review
            elif raw.endswith(b"\n"):
                raise InputError(f"{path}:{lineno}: {problem}; fix or remove that line")
            else:  # only the last line can lack its newline: a write cut short
                log.warning("%s:%d: ignoring a torn last line", path, lineno)


def current_verdicts(folder: Path, current_sha: Mapping[str, str]) -> dict[str, Review]:
    """job id -> its latest review of the job's current image (``current_sha``: job id -> the
    sha256 of its image now). A review of an earlier image does not count: the job was made
    again, and its new image is unreviewed. A latest review that is ``cleared`` leaves the job
    out, as one never reviewed."""
    latest: dict[str, Review] = {}
    for review in read_reviews(folder):
        if current_sha.get(review.job_id) == review.sha256:
            latest[review.job_id] = review
    return {k: v for k, v in latest.items() if v.verdict is not Verdict.CLEARED}
