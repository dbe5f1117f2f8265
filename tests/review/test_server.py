"""The review server over real HTTP (aiohttp's test server on loopback): the API against a run
folder the CLI made, live updates from a growing ledger, and the security rules."""

from __future__ import annotations

import io
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from batchgen.folder.reviews import read_reviews
from batchgen.review.server import TOKEN_HEADER, make_app, safe_file
from tests.helpers.cli import cli, ledger_lines

from .conftest import ANIMALS, STYLES

TOKEN = "t0ken-for-tests-" + "x" * 20


@pytest.fixture
async def client(run_dir: Path) -> AsyncIterator[TestClient[object, object]]:
    async with TestClient(TestServer(make_app(run_dir, TOKEN))) as c:
        yield c


def q(**params: str) -> dict[str, str]:
    return {"token": TOKEN, **params}


def by_id(run_dir: Path) -> dict[str, dict[str, object]]:
    return {str(d["job_id"]): d for d in ledger_lines(run_dir)}


async def get_json(client: TestClient[object, object], path: str, **params: str) -> object:
    r = await client.get(path, params=q(**params))
    assert r.status == 200, await r.text()
    return await r.json()


async def test_state_items_and_filters(client: TestClient[object, object], run_dir: Path) -> None:
    state = await get_json(client, "/api/state")
    counts = state["counts"]  # type: ignore[index]
    assert counts["succeeded"] == 6 and counts["failed"] == 1 and counts["pending"] == 0
    assert counts["unreviewed"] == 6 and counts["accepted"] == counts["rejected"] == 0
    spent = sum(float(d["cost_usd"]) for d in ledger_lines(run_dir))  # type: ignore[arg-type]
    assert counts["spend_usd"] == pytest.approx(spent, abs=1e-4) and spent > 0
    assert state["vars"] == ["animal", "style"] and state["meta"] == ["shelf"]  # type: ignore[index]

    everything = await get_json(client, "/api/items")
    assert everything["total"] == 7  # type: ignore[index]
    ids = [i["id"] for i in everything["items"]]  # type: ignore[index]
    assert ids == [json.loads(line)["job_id"]
                   for line in (run_dir / "jobs.jsonl").read_text().splitlines()]  # manifest order

    failed = await get_json(client, "/api/items", status="failed")
    assert [i["k"] for i in failed["items"]] == ["blocked"]  # type: ignore[index]
    blocked = await get_json(client, "/api/items", kind="blocked")
    assert blocked["total"] == 1  # type: ignore[index]
    cats = await get_json(client, "/api/items", **{"var.animal": "cat"})
    assert cats["total"] == 2 and all("cat" in i["id"] for i in cats["items"])  # type: ignore[index]
    cat_ink = await get_json(client, "/api/items", **{"var.animal": "cat", "var.style": "ink"})
    assert cat_ink["total"] == 1  # type: ignore[index]
    shelf = await get_json(client, "/api/items", **{"meta.shelf": "A"})
    assert shelf["total"] == 6  # type: ignore[index]
    words = await get_json(client, "/api/items", q="OWL in")
    assert words["total"] == 2  # type: ignore[index]
    paged = await get_json(client, "/api/items", offset="2", limit="3")
    assert [i["id"] for i in paged["items"]] == ids[2:5]  # type: ignore[index]
    bad = await client.get("/api/items", params=q(limit="many"))
    assert bad.status == 400

    facets = await get_json(client, "/api/facets")
    animal = dict(facets["fields"]["var.animal"]["values"])  # type: ignore[index]
    assert animal == {**{a: 2 for a in ANIMALS}, "(none)": 1}


async def test_grid_groups_by_two_vars(client: TestClient[object, object]) -> None:
    grid = await get_json(client, "/api/grid", rows="var.animal", cols="var.style",
                          status="succeeded", per="2")
    assert grid["rows"] == ANIMALS and grid["cols"] == STYLES  # type: ignore[index]
    for r, animal in enumerate(ANIMALS):
        for c, style in enumerate(STYLES):
            cell = grid["cells"][r][c]  # type: ignore[index]
            assert cell["n"] == 1
            assert cell["items"][0]["id"].startswith(f"pet-{animal}-{style}-")
    assert (await client.get("/api/grid", params=q(rows="var.animal"))).status == 400
    assert (await client.get("/api/grid", params=q(rows="nope", cols="var.style"))).status == 400


async def test_job_thumbnail_and_image(client: TestClient[object, object], run_dir: Path) -> None:
    lines = by_id(run_dir)
    job_id, line = next((k, v) for k, v in lines.items() if v["status"] == "succeeded")
    job = await get_json(client, f"/api/job/{job_id}")
    assert job["prompt"] == line["prompt"] and job["text"] == line["text"]  # type: ignore[index]
    assert job["vars"] == line["vars"] and job["meta"] == {"shelf": "A"}  # type: ignore[index]
    assert job["lineage"][0]["sha256"] == line["sha256"]  # type: ignore[index]
    assert job["cost_usd"] == pytest.approx(line["cost_usd"])  # type: ignore[index]

    thumb = await client.get("/" + job["th"], params={"token": TOKEN})  # type: ignore[index]
    assert thumb.status == 200 and thumb.content_type == "image/jpeg"
    with Image.open(io.BytesIO(await thumb.read())) as img:
        assert img.format == "JPEG" and max(img.size) <= 256
    assert list((run_dir / "thumbs").rglob("*.jpg"))  # made once, on disk, reused
    full = await client.get("/" + job["im"], params={"token": TOKEN})  # type: ignore[index]
    out = line["outputs"][0]  # type: ignore[index]
    assert await full.read() == (run_dir / out).read_bytes()
    assert (await client.get("/api/job/nope", params=q())).status == 404


async def test_review_writes_reviews_jsonl(client: TestClient[object, object],
                                           run_dir: Path) -> None:
    lines = by_id(run_dir)
    job_id = next(k for k, v in lines.items() if v["status"] == "succeeded")
    headers = {TOKEN_HEADER: TOKEN}
    r = await client.post("/api/review", json={"job_id": job_id, "verdict": "rejected",
                                               "note": "six legs"}, headers=headers)
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["item"]["v"] == "rejected" and body["counts"]["rejected"] == 1
    [review] = list(read_reviews(run_dir))
    assert (review.job_id, review.sha256, review.verdict.value, review.note) == (
        job_id, lines[job_id]["sha256"], "rejected", "six legs")
    # What the CLI reads is the same file.
    st = json.loads(cli("status", run_dir, "--json").stdout)
    assert st["review"] == {"accepted": 0, "rejected": 1, "unreviewed": 5}
    rejected = await get_json(client, "/api/items", verdict="rejected")
    assert [i["id"] for i in rejected["items"]] == [job_id]  # type: ignore[index]
    # Undo is a line too: the image unreviewed again.
    r = await client.post("/api/review", json={"job_id": job_id, "verdict": "cleared"},
                          headers=headers)
    assert (await r.json())["item"]["v"] == "unreviewed"
    # A verdict about an image the page showed before a redo replaced it is refused.
    stale = await client.post("/api/review", json={"job_id": job_id, "verdict": "accepted",
                                                   "sha256": "0" * 64}, headers=headers)
    assert stale.status == 409
    for body_ in ({"job_id": job_id, "verdict": "maybe"}, {"job_id": "nope", "verdict": "rejected"},
                  {"job_id": job_id, "verdict": "rejected", "note": "x" * 5000}):
        assert (await client.post("/api/review", json=body_, headers=headers)).status in (400, 404)
    assert len(list(read_reviews(run_dir))) == 2


async def test_a_growing_ledger_is_read_from_where_it_stopped(
        client: TestClient[object, object], run_dir: Path) -> None:
    before = await get_json(client, "/api/state")
    ledger = run_dir / "ledger.jsonl"
    job_id = next(k for k, v in by_id(run_dir).items() if v["status"] == "failed")
    fixed = {**by_id(run_dir)[job_id]}
    ok = next(v for v in by_id(run_dir).values() if v["status"] == "succeeded")
    fixed.update(status="succeeded", error=None, outputs=ok["outputs"], sha256=ok["sha256"],
                 cost_usd=0.5)
    line = orjson.dumps(fixed) + b"\n"
    with ledger.open("ab") as fh:
        fh.write(line[:20])  # half a line: a writer in the middle of it
    import asyncio

    await asyncio.sleep(0.3)
    mid = await get_json(client, "/api/state")
    assert mid["counts"] == before["counts"]  # type: ignore[index]
    with ledger.open("ab") as fh:
        fh.write(line[20:])
    await asyncio.sleep(0.3)
    after = await get_json(client, "/api/state")
    assert after["version"] > before["version"]  # type: ignore[index,operator]
    assert after["counts"]["failed"] == 0 and after["counts"]["succeeded"] == 7  # type: ignore[index]
    assert after["counts"]["spend_usd"] == pytest.approx(  # type: ignore[index]
        before["counts"]["spend_usd"] + 0.5, abs=1e-4)  # type: ignore[index]
    job = await get_json(client, f"/api/job/{job_id}")
    assert [e["status"] for e in job["lineage"]] == ["failed", "succeeded"]  # type: ignore[index]


async def test_every_request_needs_the_token(client: TestClient[object, object],
                                             run_dir: Path) -> None:
    job_id = next(k for k, v in by_id(run_dir).items() if v["status"] == "succeeded")
    for path in ("/", "/assets/app.js", "/api/state", "/api/items", f"/api/job/{job_id}",
                 f"/thumb/{job_id}", f"/image/{job_id}", "/files/images"):
        assert (await client.get(path)).status == 403, path
        assert (await client.get(path, params={"token": TOKEN[:-1] + "y"})).status == 403, path
        assert (await client.get(path, headers={TOKEN_HEADER: "nope"})).status == 403, path
    page = await client.get("/", params={"token": TOKEN})
    assert page.status == 200
    html = await page.text()
    assert "//" not in html.replace("http://", "")  # no CDN, nothing from elsewhere
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    review = {"job_id": job_id, "verdict": "rejected"}
    # A write with the token only in the URL (what a cross-site form could send): refused.
    r = await client.post("/api/review", params={"token": TOKEN}, json=review)
    assert r.status == 403
    r = await client.post("/api/review", params={"token": TOKEN}, data="job_id=x",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 403
    # The header from another origin: refused too.
    r = await client.post("/api/review", json=review,
                          headers={TOKEN_HEADER: TOKEN, "Origin": "http://evil.example"})
    assert r.status == 403
    assert not (run_dir / "reviews.jsonl").exists()


def check_safe_file(run_dir: Path, rel: str, image: Path) -> None:
    root = os.path.realpath(run_dir)
    assert safe_file(root, "../secret.txt") is None
    assert safe_file(root, "images/link.png") is None
    assert safe_file(root, "images/dirlink/secret.txt") is None
    assert safe_file(root, rel) == os.path.realpath(image)


async def test_only_files_inside_the_folder_are_served(client: TestClient[object, object],
                                                       run_dir: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the browser")
    image = next((run_dir / "images").rglob("*.png"))
    rel = image.relative_to(run_dir).as_posix()
    ok = await client.get(f"/files/{rel}", params={"token": TOKEN})
    assert ok.status == 200 and await ok.read() == image.read_bytes()
    (run_dir / "images" / "link.png").symlink_to(secret)
    (run_dir / "images" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    for path in ("/files/../secret.txt", "/files/images/../../secret.txt",
                 "/files/%2e%2e/secret.txt", "/files/images/%2e%2e/%2e%2e/secret.txt",
                 "/files/images/link.png", "/files/images/dirlink/secret.txt",
                 "/files/ledger.jsonl", "/files/run.json", f"/files/{secret}",
                 "/files/images/..%2f..%2fsecret.txt"):
        r = await client.get(path, params={"token": TOKEN})
        assert r.status in (403, 404), path
        assert b"not for the browser" not in await r.read(), path
    check_safe_file(run_dir, rel, image)

    # A ledger naming a file outside the folder as a job's image: not served as its image.
    lines = by_id(run_dir)
    hostile = {**next(v for v in lines.values() if v["status"] == "succeeded"),
               "job_id": "evil-1", "outputs": ["../secret.txt"]}
    with (run_dir / "ledger.jsonl").open("ab") as fh:
        fh.write(orjson.dumps(hostile) + b"\n")
    import asyncio

    await asyncio.sleep(0.3)
    await get_json(client, "/api/state")
    for path in ("/image/evil-1", "/thumb/evil-1"):
        r = await client.get(path, params={"token": TOKEN})
        assert r.status == 404, path


async def test_verdicts_from_mark_and_redos_are_followed(client: TestClient[object, object],
                                                         run_dir: Path) -> None:
    import asyncio

    lines = by_id(run_dir)
    cat_oil = next(k for k in lines if k.startswith("pet-cat-oil-"))
    # Another writer (a script's `batchgen mark`) while the page is open.
    assert cli("mark", run_dir, "--reject", "pet-cat-*", "--note", "blurry").code == 0
    await asyncio.sleep(0.3)
    state = await get_json(client, "/api/state")
    assert state["counts"]["rejected"] == 2  # type: ignore[index]
    job = await get_json(client, f"/api/job/{cat_oil}")
    assert job["v"] == "rejected" and job["note"] == "blurry"  # type: ignore[index]
    # A redo's new image (a line with another sha256) is unreviewed: the verdict was the old's.
    redo = {**lines[cat_oil], "sha256": "c" * 64, "replaces": lines[cat_oil]["sha256"],
            "note": "blurry"}
    with (run_dir / "ledger.jsonl").open("ab") as fh:
        fh.write(orjson.dumps(redo) + b"\n")
    await asyncio.sleep(0.3)
    job = await get_json(client, f"/api/job/{cat_oil}")
    assert job["v"] == "unreviewed" and job["sha"] == "c" * 64  # type: ignore[index]
    assert [e["replaces"] for e in job["lineage"]] == [None, lines[cat_oil]["sha256"]]  # type: ignore[index]
    assert [r["verdict"] for r in job["reviews"]] == ["rejected"]  # type: ignore[index]
    state = await get_json(client, "/api/state")
    assert state["counts"]["rejected"] == 1  # type: ignore[index]
    st = json.loads(cli("status", run_dir, "--json").stdout)
    assert st["review"]["rejected"] == 1


async def test_a_new_manifest_shows_pending_and_superseded(client: TestClient[object, object],
                                                           run_dir: Path) -> None:
    import asyncio

    jobs = [json.loads(x) for x in (run_dir / "jobs.jsonl").read_text().splitlines()]
    gone = jobs[0]
    new = {**jobs[1], "job_id": "pet-new-1", "vars": {"animal": "fox", "style": "oil"}}
    # A run's planning replaces jobs.jsonl whole (written aside, renamed).
    tmp = run_dir / "jobs.jsonl.tmp"
    tmp.write_text("".join(json.dumps(j) + "\n" for j in [*jobs[1:], new]))
    tmp.replace(run_dir / "jobs.jsonl")
    await asyncio.sleep(0.3)
    counts = (await get_json(client, "/api/state"))["counts"]  # type: ignore[index]
    assert (counts["pending"], counts["superseded"], counts["succeeded"]) == (1, 1, 5)
    pending = await get_json(client, "/api/items", status="pending")
    assert [i["id"] for i in pending["items"]] == ["pet-new-1"]  # type: ignore[index]
    old = await get_json(client, "/api/items", status="superseded")
    assert [i["id"] for i in old["items"]] == [gone["job_id"]]  # type: ignore[index]
    # `prune` moves a superseded image under superseded/: still shown from there.
    out = Path(str(by_id(run_dir)[gone["job_id"]]["outputs"][0]))  # type: ignore[index]
    (run_dir / "superseded" / out.parent).mkdir(parents=True)
    (run_dir / out).rename(run_dir / "superseded" / out)
    r = await client.get(f"/image/{gone['job_id']}", params={"token": TOKEN})
    assert r.status == 200
    assert await r.read() == (run_dir / "superseded" / out).read_bytes()


async def test_a_chained_jobs_parents_and_children(client: TestClient[object, object],
                                                   run_dir: Path) -> None:
    import asyncio

    lines = by_id(run_dir)
    parent, child = [k for k, v in lines.items() if v["status"] == "succeeded"][:2]
    # A chain's ledger line names the image it was made from (job id and sha256).
    line = {**lines[child], "parents": [{"job_id": parent, "sha256": lines[parent]["sha256"]},
                                        {"job_id": "../bad", "sha256": "x"}]}
    with (run_dir / "ledger.jsonl").open("ab") as fh:
        fh.write(orjson.dumps(line) + b"\n")
    await asyncio.sleep(0.3)
    job = await get_json(client, f"/api/job/{child}")
    assert job["parents"] == [{"job_id": parent, "sha256": lines[parent]["sha256"],  # type: ignore[index]
                               "current": True}]
    assert (await get_json(client, f"/api/job/{parent}"))["children"] == [child]  # type: ignore[index]
