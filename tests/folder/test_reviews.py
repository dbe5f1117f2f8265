"""DIR/reviews.jsonl (batchgen/folder/reviews.py): appended durably, read back, a torn tail
skipped and cut, a bad line refused by its number, verdicts tied to one image (issue 21)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
import pytest

from batchgen.errors import InputError
from batchgen.folder.reviews import (
    REVIEWS_FILE,
    Review,
    Verdict,
    append_reviews,
    current_verdicts,
    read_reviews,
)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def review(job_id: str, image: str, verdict: Verdict, note: str = "", at: float = 1.0) -> Review:
    return Review(job_id=job_id, sha256=sha(image), verdict=verdict, note=note, at=at)


def test_appended_lines_read_back_in_order_and_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    append_reviews(tmp_path, [review("a", "img-a", Verdict.REJECTED, "hands", at=10.5)])
    append_reviews(tmp_path, [review("b", "img-b", Verdict.ACCEPTED, at=11.0)])
    assert synced.count(str(tmp_path / REVIEWS_FILE)) == 2
    lines = (tmp_path / REVIEWS_FILE).read_bytes().splitlines()
    assert orjson.loads(lines[0]) == {
        "job_id": "a", "sha256": sha("img-a"), "verdict": "rejected", "note": "hands", "at": 10.5,
    }
    got = list(read_reviews(tmp_path))
    assert [(r.job_id, r.verdict, r.note) for r in got] == [
        ("a", Verdict.REJECTED, "hands"), ("b", Verdict.ACCEPTED, "")]


def test_no_file_reads_as_no_reviews(tmp_path: Path) -> None:
    assert list(read_reviews(tmp_path)) == []
    assert current_verdicts(tmp_path, {"a": sha("x")}) == {}


@pytest.mark.parametrize("bad", [
    {"job_id": "../../etc/passwd"},
    {"sha256": "abc"},
    {"at": float("nan")},
    {"note": "x" * 5000},
])
def test_a_bad_review_is_refused_and_nothing_is_written(tmp_path: Path, bad: dict) -> None:
    fields = {"job_id": "a", "sha256": sha("a"), "verdict": Verdict.REJECTED, "note": "", "at": 1.0}
    fields.update(bad)
    good = review("b", "b", Verdict.ACCEPTED)
    with pytest.raises(InputError, match=next(iter(bad))):
        append_reviews(tmp_path, [good, Review(**fields)])
    assert not (tmp_path / REVIEWS_FILE).exists() or (tmp_path / REVIEWS_FILE).read_bytes() == b""


def test_a_torn_last_line_is_skipped_then_cut_by_the_next_append(tmp_path: Path) -> None:
    append_reviews(tmp_path, [review("a", "a", Verdict.REJECTED)])
    path = tmp_path / REVIEWS_FILE
    with path.open("ab") as fh:
        fh.write(b'{"job_id": "b", "sha256": "')  # a kill -9 mid-write
    assert [r.job_id for r in read_reviews(tmp_path)] == ["a"]
    append_reviews(tmp_path, [review("c", "c", Verdict.ACCEPTED)])
    assert [r.job_id for r in read_reviews(tmp_path)] == ["a", "c"]
    assert path.read_bytes().count(b"\n") == 2


def test_a_whole_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / REVIEWS_FILE
    path.write_bytes(review("a", "a", Verdict.REJECTED).to_line().rstrip(b"\n"))
    assert [r.job_id for r in read_reviews(tmp_path)] == ["a"]
    append_reviews(tmp_path, [review("b", "b", Verdict.REJECTED)])
    assert [r.job_id for r in read_reviews(tmp_path)] == ["a", "b"]


@pytest.mark.parametrize("line, field", [
    (b"not json", "not a JSON line"),
    (b'{"job_id": "a", "sha256": "' + sha("a").encode() + b'", "verdict": "maybe", "at": 1}',
     "verdict"),
    (b'{"job_id": "a/../b", "sha256": "' + sha("a").encode() + b'", "verdict": "accepted", '
     b'"at": 1}', "job_id"),
    (b"[1, 2]", "not a review"),
])
def test_a_bad_line_in_the_middle_is_an_input_error_naming_it(
    tmp_path: Path, line: bytes, field: str
) -> None:
    good = review("a", "a", Verdict.REJECTED).to_line()
    (tmp_path / REVIEWS_FILE).write_bytes(good + line + b"\n" + good)
    with pytest.raises(InputError) as err:
        list(read_reviews(tmp_path))
    assert f"{REVIEWS_FILE}:2: " in str(err.value)
    assert field in str(err.value)


def test_current_verdicts_belong_to_the_current_image(tmp_path: Path) -> None:
    append_reviews(tmp_path, [
        review("a", "a-v1", Verdict.REJECTED, "blurry", at=1),
        review("b", "b-v1", Verdict.REJECTED, at=2),
        review("c", "c-v1", Verdict.ACCEPTED, at=3),
        review("c", "c-v1", Verdict.REJECTED, "changed my mind", at=4),
        review("d", "d-v1", Verdict.ACCEPTED, at=5),
        review("d", "d-v1", Verdict.CLEARED, at=6),
    ])
    # a was made again (a-v2): its new image is unreviewed; b still has its first image.
    current = {"a": sha("a-v2"), "b": sha("b-v1"), "c": sha("c-v1"), "d": sha("d-v1")}
    got = current_verdicts(tmp_path, current)
    assert {k: (v.verdict, v.note) for k, v in got.items()} == {
        "b": (Verdict.REJECTED, ""),
        "c": (Verdict.REJECTED, "changed my mind"),
    }
    # a verdict on the new image counts again
    append_reviews(tmp_path, [review("a", "a-v2", Verdict.ACCEPTED, at=7)])
    assert current_verdicts(tmp_path, current)["a"].verdict is Verdict.ACCEPTED
