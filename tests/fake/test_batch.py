"""The fake server's Files API and Batch API, in the real wire format.

The official google-genai SDK pointed at the fake proves the wire format; direct HTTP calls check
each fault, paging, cancel, delete and the stats that let other tests prove nothing was billed
twice.
"""

from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from batchgen.fake import FakeConfig, Rule, ThreadedFakeServer
from tests.helpers.cli import SECRET

MODEL = "gemini-3-pro-image"


BATCH_PRICE = 0.134 / 2


@pytest.fixture
def fake() -> Iterator[ThreadedFakeServer]:
    with ThreadedFakeServer(FakeConfig(api_key=SECRET, batch_seconds=0.3)) as srv:
        yield srv


class Resp:
    def __init__(self, status: int, headers: Any, content: bytes) -> None:
        self.status_code = status
        self.headers = headers  # an http.client.HTTPMessage: case-insensitive .get / []
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Http:
    """A few lines of urllib: the tests need status, headers and body, nothing more."""

    def __init__(self, base_url: str, key: str | None = None) -> None:
        self.base_url = base_url
        self.key = key

    def request(self, method: str, url: str, *, params: dict[str, Any] | None = None,
                json_body: Any = None, content: bytes | None = None,
                headers: dict[str, str] | None = None) -> Resp:
        full = url if url.startswith("http") else self.base_url + url
        if params:
            full += ("&" if "?" in full else "?") + urllib.parse.urlencode(params)
        h = dict(headers or {})
        if self.key:
            h.setdefault("x-goog-api-key", self.key)
        data = content
        if json_body is not None:
            data = json.dumps(json_body).encode()
            h.setdefault("Content-Type", "application/json")
        if data is None and method == "POST":
            data = b""
        req = urllib.request.Request(full, data=data, headers=h, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return Resp(r.status, r.headers, r.read())
        except urllib.error.HTTPError as e:
            with e:
                return Resp(e.code, e.headers, e.read())

    def get(self, url: str, **kw: Any) -> Resp:
        return self.request("GET", url, **kw)

    def post(self, url: str, *, json: Any = None, **kw: Any) -> Resp:
        return self.request("POST", url, json_body=json, **kw)

    def delete(self, url: str, **kw: Any) -> Resp:
        return self.request("DELETE", url, **kw)


@pytest.fixture
def http(fake: ThreadedFakeServer) -> Http:
    return Http(fake.url, SECRET)


def request_line(key: str, prompt: str, **gen: Any) -> dict[str, Any]:
    req: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    req["generation_config"] = {"response_modalities": ["TEXT", "IMAGE"], **gen}
    return {"key": key, "request": req}


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def upload(http: Http, data: bytes, *, chunk: int | None = None,
           display_name: str = "requests") -> dict[str, Any]:
    """The resumable protocol by hand; the session URL is called without the key."""
    start = http.post(
        "/upload/v1beta/files",
        headers={
            "X-Goog-Upload-Protocol": "resumable",
            "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": str(len(data)),
            "X-Goog-Upload-Header-Content-Type": "application/jsonl",
        },
        json={"file": {"display_name": display_name}},
    )
    assert start.status_code == 200, start.text
    assert start.headers["X-Goog-Upload-Status"] == "active"
    url = start.headers["X-Goog-Upload-URL"]
    step = chunk or max(1, len(data))
    offset = 0
    anon = Http("")
    while True:
        piece = data[offset:offset + step]
        last = offset + len(piece) >= len(data)
        resp = anon.post(url, content=piece, headers={
            "X-Goog-Upload-Command": "upload, finalize" if last else "upload",
            "X-Goog-Upload-Offset": str(offset),
        })
        assert resp.status_code == 200, resp.text
        offset += len(piece)
        if last:
            assert resp.headers["X-Goog-Upload-Status"] == "final"
            file: dict[str, Any] = resp.json()["file"]
            return file
        assert resp.headers["X-Goog-Upload-Status"] == "active"


def create(http: Http, batch: dict[str, Any], model: str = MODEL) -> Resp:
    return http.post(f"/v1beta/models/{model}:batchGenerateContent", json={"batch": batch})


def file_batch(http: Http, lines: list[dict[str, Any]], name: str = "run-0001") -> str:
    file = upload(http, jsonl(lines))
    resp = create(http, {"display_name": name, "input_config": {"file_name": file["name"]}})
    assert resp.status_code == 200, resp.text
    op_name: str = resp.json()["name"]
    return op_name


def wait_done(http: Http, name: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op: dict[str, Any] = http.get(f"/v1beta/{name}").json()
        if op.get("done"):
            return op
        time.sleep(0.05)
    raise AssertionError(f"{name} not done in {timeout}s")


def results(http: Http, op: dict[str, Any]) -> list[dict[str, Any]]:
    name = op["response"]["responsesFile"]
    body = http.get(f"/download/v1beta/{name}:download", params={"alt": "media"})
    assert body.status_code == 200, body.text
    return [json.loads(line) for line in body.content.splitlines()]


def final_image(response: dict[str, Any]) -> Image.Image:
    parts = response["candidates"][0]["content"]["parts"]
    final = [p for p in parts if "inlineData" in p and not p.get("thought")][-1]
    img = Image.open(io.BytesIO(base64.b64decode(final["inlineData"]["data"])))
    img.load()
    return img


# -- the official SDK against the fake -------------------------------------------------------


def test_sdk_uploads_creates_polls_lists_and_downloads(fake: ThreadedFakeServer, tmp_path: Path) -> None:
    from google import genai
    from google.genai import types

    prompts = {f"k{i}": f"a lighthouse at dusk number {i}" for i in range(5)}
    src = tmp_path / "requests.jsonl"
    src.write_bytes(jsonl([request_line(k, p, image_config={"aspect_ratio": "16:9"})
                           for k, p in prompts.items()]))
    client = genai.Client(api_key=SECRET, http_options=types.HttpOptions(base_url=fake.url))

    uploaded = client.files.upload(
        file=src, config=types.UploadFileConfig(mime_type="jsonl", display_name="reqs")
    )
    assert uploaded.name and uploaded.name.startswith("files/")
    assert uploaded.size_bytes == src.stat().st_size
    assert uploaded.state == types.FileState.ACTIVE
    assert client.files.get(name=uploaded.name).display_name == "reqs"

    job = client.batches.create(model=MODEL, src=uploaded.name,
                                config=types.CreateBatchJobConfig(display_name="run-0001"))
    assert job.name and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert job.display_name == "run-0001"

    deadline = time.monotonic() + 30
    while not (job := client.batches.get(name=job.name)).done:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    assert job.dest is not None and job.dest.file_name
    assert job.dest.file_name.startswith("files/batch-")

    listed = [b.name for b in client.batches.list(config=types.ListBatchJobsConfig(page_size=1))]
    assert listed == [job.name]

    data = client.files.download(file=job.dest.file_name)
    lines = [json.loads(line) for line in data.splitlines()]
    assert sorted(line["key"] for line in lines) == sorted(prompts)
    for line in lines:
        img = final_image(line["response"])
        assert img.width > img.height  # 16:9 asked, 16:9 made
        assert line["response"]["usageMetadata"]["candidatesTokensDetails"][-1] == {
            "modality": "IMAGE", "tokenCount": 1120}

    client.files.delete(name=uploaded.name)
    stats = fake.stats
    assert stats.batch_billed_images == 5
    assert stats.batch_billed_usd == pytest.approx(5 * BATCH_PRICE)
    assert stats.batch_billed_by_prompt == Counter(prompts.values())
    assert stats.billed_images == 0 and stats.requests == 0  # the live counters saw nothing
    assert stats.batches_created_by_display_name == Counter({"run-0001": 1})
    assert stats.files_uploaded == 1 and stats.bytes_uploaded == src.stat().st_size
    assert stats.files_deleted == 1


def test_sdk_inline_requests_echo_metadata(fake: ThreadedFakeServer) -> None:
    from google import genai
    from google.genai import types

    client = genai.Client(api_key=SECRET, http_options=types.HttpOptions(base_url=fake.url))
    requests = [
        types.InlinedRequest(
            contents=f"a red fox number {i}",
            metadata={"key": f"job-{i}"},
            config=types.GenerateContentConfig(response_modalities=["IMAGE"]),
        )
        for i in range(3)
    ]
    job = client.batches.create(model=MODEL, src=requests)
    deadline = time.monotonic() + 30
    while not (job := client.batches.get(name=job.name)).done:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job.dest is not None and job.dest.inlined_responses is not None
    got = {r.metadata["key"]: r for r in job.dest.inlined_responses if r.metadata}
    assert sorted(got) == ["job-0", "job-1", "job-2"]
    for r in got.values():
        assert r.response is not None and r.response.candidates
    assert fake.stats.batch_billed_images == 3


# -- states and the operation ---------------------------------------------------------------


def test_states_advance_and_the_finished_operation(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_seconds = 1.5
    file = upload(http, jsonl([request_line(f"k{i}", f"prompt {i}") for i in range(3)]))
    created = create(http, {"display_name": "run-0001",
                            "input_config": {"file_name": file["name"]}}).json()
    name = created["name"]
    meta = created["metadata"]
    assert meta["state"] == "BATCH_STATE_PENDING" and "done" not in created
    assert meta["batchStats"] == {"requestCount": "3", "pendingRequestCount": "3"}
    assert meta["@type"].endswith("v1main.GenerateContentBatch")
    assert meta["model"] == f"models/{MODEL}" and meta["displayName"] == "run-0001"
    assert meta["inputConfig"]["fileName"] == file["name"]
    # Poll through the states; nothing is generated (or billed) before the time is up.
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        op = http.get(f"/v1beta/{name}").json()
        state = op["metadata"]["state"]
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "BATCH_STATE_RUNNING":
            assert fake.stats.batch_billed_images == 0 and "done" not in op
        if op.get("done"):
            break
        time.sleep(0.05)
    assert seen[-2:] == ["BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"]
    assert set(seen) <= {"BATCH_STATE_PENDING", "BATCH_STATE_RUNNING", "BATCH_STATE_SUCCEEDED"}

    op = wait_done(http, name)
    meta = op["metadata"]
    assert meta["state"] == "BATCH_STATE_SUCCEEDED"
    assert meta["batchStats"] == {"requestCount": "3", "successfulRequestCount": "3"}
    assert meta["output"] == {"responsesFile": op["response"]["responsesFile"]}
    assert op["response"]["@type"].endswith("GenerateContentBatchOutput")
    assert meta["endTime"] >= meta["createTime"]
    assert fake.stats.batch_billed_images == 3


def test_work_happens_without_polling(fake: ThreadedFakeServer, http: Http) -> None:
    file_batch(http, [request_line("a", "unpolled prompt")])
    deadline = time.monotonic() + 20
    while fake.stats.batch_billed_images == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert fake.stats.batch_billed_by_prompt == Counter({"unpolled prompt": 1})


def test_results_come_back_shuffled(fake: ThreadedFakeServer, http: Http) -> None:
    keys = [f"k{i:03d}" for i in range(200)]
    op = wait_done(http, file_batch(http, [request_line(k, f"p {k}") for k in keys]))
    got = [line["key"] for line in results(http, op)]
    assert sorted(got) == keys
    assert got != keys


def test_other_line_fields_are_echoed(fake: ThreadedFakeServer, http: Http) -> None:
    line = {**request_line("k1", "echo me"), "note": "kept"}
    op = wait_done(http, file_batch(http, [line]))
    (out,) = results(http, op)
    assert out["key"] == "k1" and out["note"] == "kept" and "response" in out


# -- faults ---------------------------------------------------------------------------------


def test_duplicate_lines_are_each_billed(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_duplicate_rate = 1.0
    op = wait_done(http, file_batch(http, [request_line(k, f"dup {k}") for k in ("a", "b")]))
    lines = results(http, op)
    assert Counter(line["key"] for line in lines) == Counter({"a": 2, "b": 2})
    assert fake.stats.batch_billed_by_prompt == Counter({"dup a": 2, "dup b": 2})
    assert fake.stats.batch_billed_usd == pytest.approx(4 * BATCH_PRICE)
    # Counted per request, not per line.
    assert op["metadata"]["batchStats"]["successfulRequestCount"] == "2"


def test_expired_batch_has_no_results(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_expire = True
    name = file_batch(http, [request_line("a", "too late")])
    fake.config.batch_expire = False  # the knob is taken at create time
    op = wait_done(http, name)
    assert op["metadata"]["state"] == "BATCH_STATE_EXPIRED"
    assert "response" not in op and "output" not in op["metadata"]
    assert fake.stats.batch_billed_images == 0


def test_failed_batch(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_fail = True
    op = wait_done(http, file_batch(http, [request_line("a", "doomed")]))
    assert op["metadata"]["state"] == "BATCH_STATE_FAILED"
    assert op["error"]["code"] == 13 and "response" not in op


def test_create_answered_503_still_creates(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_create_503 = 1
    file = upload(http, jsonl([request_line("a", "made anyway")]))
    batch = {"displayName": "run-0007", "inputConfig": {"fileName": file["name"]}}
    first = create(http, batch)
    assert first.status_code == 503
    assert first.json()["error"]["status"] == "UNAVAILABLE"
    ops = http.get("/v1beta/batches").json()["operations"]
    assert [op["metadata"]["displayName"] for op in ops] == ["run-0007"]
    second = create(http, batch)
    assert second.status_code == 200  # only the first N answer 503
    assert fake.stats.batches_created_by_display_name == Counter({"run-0007": 2})
    wait_done(http, ops[0]["name"])
    wait_done(http, second.json()["name"])
    assert fake.stats.batch_billed_by_prompt == Counter({"made anyway": 2})


def test_line_errors_are_retryable_codes(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_line_error_rate = 1.0
    op = wait_done(http, file_batch(http, [request_line(f"k{i}", f"e {i}") for i in range(8)]))
    lines = results(http, op)
    assert all("error" in line and "response" not in line for line in lines)
    assert Counter(line["error"]["code"] for line in lines) == Counter({8: 2, 14: 2, 429: 2, 503: 2})
    assert op["metadata"]["batchStats"] == {"requestCount": "8", "failedRequestCount": "8"}
    assert fake.stats.batch_billed_images == 0 and fake.stats.batch_line_errors == 8


def test_prompt_rules_apply_per_line(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.rules = [Rule("forbidden", "block"), Rule("unsafe", "image_safety"),
                         Rule("busy", "503"), Rule("hollow", "empty")]
    lines = [request_line("ok", "a calm lake"), request_line("blk", "a forbidden thing"),
             request_line("safe", "an unsafe picture"), request_line("busy", "a busy street"),
             request_line("void", "a hollow answer")]
    op = wait_done(http, file_batch(http, lines))
    out = {line["key"]: line for line in results(http, op)}
    assert out["blk"]["response"]["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in out["blk"]["response"]
    assert out["safe"]["response"]["candidates"][0]["finishReason"] == "IMAGE_SAFETY"
    assert out["busy"]["error"]["code"] == 503
    void = out["void"]["response"]
    assert "candidates" not in void and "promptFeedback" not in void
    final_image(out["ok"]["response"])
    assert fake.stats.batch_billed_by_prompt == Counter({"a calm lake": 1})
    stats = op["metadata"]["batchStats"]
    assert stats == {"requestCount": "5", "successfulRequestCount": "4", "failedRequestCount": "1"}


def test_bad_value_is_that_lines_error(fake: ThreadedFakeServer, http: Http) -> None:
    lines = [request_line("bad", "x", image_config={"image_size": "1k"}), request_line("ok", "y")]
    op = wait_done(http, file_batch(http, lines))
    out = {line["key"]: line for line in results(http, op)}
    assert out["bad"]["error"]["code"] == 3 and "1k" in out["bad"]["error"]["message"]
    assert "response" in out["ok"]


def test_input_file_is_checked_at_create(fake: ThreadedFakeServer, http: Http) -> None:
    good = request_line("a", "fine")
    unknown = {"key": "b", "request": {**good["request"], "thinking_config": {}}}
    listed = {"key": "c", "request": {**good["request"], "system_instruction": [{"text": "x"}]}}
    data = jsonl([good, unknown]) + b'{"key": "d", "request": \n' + jsonl([listed])
    file = upload(http, data)
    resp = create(http, {"input_config": {"file_name": file["name"]}})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["status"] == "INVALID_ARGUMENT"
    msgs = err["message"].splitlines()
    assert msgs[0].startswith("Error on line 2: invalid JSON, near column")
    assert "no such field: 'thinking_config'" in msgs[0]
    assert msgs[1].startswith("Error on line 3: invalid JSON")
    assert msgs[2].startswith("Error on line 4:") and "system_instruction" in msgs[2]
    assert len(msgs) == 3
    assert fake.stats.batches_created == 0
    assert "operations" not in http.get("/v1beta/batches").json()


def test_create_errors(fake: ThreadedFakeServer, http: Http) -> None:
    missing = create(http, {"input_config": {"file_name": "files/nosuchfile"}})
    assert missing.status_code == 403
    assert create(http, {"input_config": {}}).status_code == 400
    assert create(http, {"inputConfig": {"fileName": "files/x"}, "bogus": 1}).status_code == 400
    assert create(http, {"input_config": {"file_name": "files/x"}}, "no-such-model").status_code == 404
    fake.config.batch_inline_max_bytes = 1000
    big = {"requests": {"requests": [{"request": request_line("a", "x" * 2000)["request"]}]}}
    assert create(http, {"input_config": big}).status_code == 400
    assert fake.stats.batches_created == 0


# -- list, cancel, delete -------------------------------------------------------------------


def test_list_pages_newest_first_and_delete(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_seconds = 60  # stay pending
    file = upload(http, jsonl([request_line("a", "x")]))
    names = []
    for i in range(5):
        resp = create(http, {"display_name": f"b{i}", "input_config": {"file_name": file["name"]}})
        names.append(resp.json()["name"])
    seen: list[str] = []
    token = ""
    while True:
        page = http.get("/v1beta/batches", params={"pageSize": 2, "pageToken": token}).json()
        assert len(page["operations"]) <= 2
        seen += [op["name"] for op in page["operations"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == names[::-1]
    assert http.delete(f"/v1beta/{names[2]}").json() == {}
    left = [op["name"] for op in http.get("/v1beta/batches").json()["operations"]]
    assert left == [names[4], names[3], names[1], names[0]]
    assert http.get(f"/v1beta/{names[2]}").status_code == 404
    assert http.get("/v1beta/batches", params={"pageToken": "junk!"}).status_code == 400


def test_cancel(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_seconds = 60
    name = file_batch(http, [request_line("a", "never made")])
    resp = http.post(f"/v1beta/{name}:cancel")
    assert resp.status_code == 200 and resp.json() == {}
    op = http.get(f"/v1beta/{name}").json()
    assert op["metadata"]["state"] == "BATCH_STATE_CANCELLED" and op["done"] is True
    assert "response" not in op
    assert fake.stats.batch_billed_images == 0


# -- files ----------------------------------------------------------------------------------


def test_chunked_upload_with_offsets(fake: ThreadedFakeServer, http: Http) -> None:
    data = jsonl([request_line(f"k{i}", f"chunky {i}") for i in range(50)])
    file = upload(http, data, chunk=1000)
    assert file["sizeBytes"] == str(len(data)) and file["state"] == "ACTIVE"
    assert file["source"] == "UPLOADED" and file["displayName"] == "requests"
    assert http.get(f"/v1beta/{file['name']}").json() == file


def test_wrong_offset_and_query(fake: ThreadedFakeServer, http: Http) -> None:
    start = http.post("/upload/v1beta/files", headers={
        "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
        "X-Goog-Upload-Header-Content-Length": "10",
        "X-Goog-Upload-Header-Content-Type": "application/jsonl"}, json={"file": {}})
    url = start.headers["X-Goog-Upload-URL"]
    anon = Http("")
    ok = anon.post(url, content=b"12345", headers={
        "X-Goog-Upload-Command": "upload", "X-Goog-Upload-Offset": "0"})
    assert ok.headers["X-Goog-Upload-Status"] == "active"
    wrong = anon.post(url, content=b"67890", headers={
        "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"})
    assert wrong.status_code == 400
    query = anon.post(url, headers={"X-Goog-Upload-Command": "query"})
    assert query.headers["X-Goog-Upload-Size-Received"] == "5"
    done = anon.post(url, content=b"67890", headers={
        "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "5"})
    assert done.headers["X-Goog-Upload-Status"] == "final"
    assert done.json()["file"]["sizeBytes"] == "10"
    # A finalize retried after a lost answer gets the same file, not a second one.
    again = anon.post(url, content=b"", headers={
        "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "10"})
    assert again.json()["file"]["name"] == done.json()["file"]["name"]
    assert fake.stats.files_uploaded == 1 and fake.stats.bytes_uploaded == 10


def test_missing_file_is_403(fake: ThreadedFakeServer, http: Http) -> None:
    file = upload(http, b"{}\n")
    assert http.delete(f"/v1beta/{file['name']}").json() == {}
    for resp in (http.get(f"/v1beta/{file['name']}"), http.delete(f"/v1beta/{file['name']}"),
                 http.get("/v1beta/files/nope123:download", params={"alt": "media"}),
                 http.get("/download/v1beta/files/nope123:download", params={"alt": "media"})):
        assert resp.status_code == 403
        assert resp.json()["error"]["status"] == "PERMISSION_DENIED"
        assert "may not exist" in resp.json()["error"]["message"]
    assert fake.stats.files_deleted == 1


def test_files_list_pages_and_results_download_both_paths(
    fake: ThreadedFakeServer, http: Http
) -> None:
    op = wait_done(http, file_batch(http, [request_line("a", "x")]))
    out = op["response"]["responsesFile"]
    for i in range(3):
        upload(http, b"{}\n", display_name=f"f{i}")
    names: list[str] = []
    token = ""
    while True:
        page = http.get("/v1beta/files", params={"pageSize": 2, "pageToken": token}).json()
        names += [f["name"] for f in page["files"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert len(names) == len(set(names)) == 5 and out in names
    generated = http.get(f"/v1beta/{out}").json()
    assert generated["source"] == "GENERATED" and "downloadUri" in generated
    a = http.get(f"/v1beta/{out}:download", params={"alt": "media"})
    b = http.get(f"/download/v1beta/{out}:download", params={"alt": "media"})
    assert a.status_code == b.status_code == 200 and a.content == b.content
    assert json.loads(a.content)["key"] == "a"


def test_the_input_file_may_be_deleted_after_create(fake: ThreadedFakeServer, http: Http) -> None:
    file = upload(http, jsonl([request_line("a", "kept safe")]))
    name = create(http, {"input_config": {"file_name": file["name"]}}).json()["name"]
    http.delete(f"/v1beta/{file['name']}")
    op = wait_done(http, name)
    assert [line["key"] for line in results(http, op)] == ["a"]


def test_key_rules(fake: ThreadedFakeServer, http: Http) -> None:
    anon = Http(fake.url)
    assert anon.get("/v1beta/batches").status_code == 403
    assert anon.get("/v1beta/files").status_code == 403
    assert anon.get("/v1beta/batches", params={"key": SECRET}).status_code == 200
    wrong = anon.get("/v1beta/files", headers={"x-goog-api-key": "nope"})
    assert wrong.status_code == 400
    assert anon.post(f"/v1beta/models/{MODEL}:batchGenerateContent", json={}).status_code == 403


def test_stats_endpoint_has_batch_counters(fake: ThreadedFakeServer, http: Http) -> None:
    wait_done(http, file_batch(http, [request_line("a", "counted")], name="n1"))
    snap = http.get("/_fake/stats").json()
    assert snap["batch_billed_images"] == 1
    assert snap["batch_billed_by_prompt"] == {"counted": 1}
    assert snap["batches_created"] == 1 and snap["batches_created_by_display_name"] == {"n1": 1}
    assert snap["files_uploaded"] == 1 and snap["billed_images"] == 0


def test_file_data_references_count_and_set_the_ratio(
    fake: ThreadedFakeServer, http: Http
) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (90, 160), (10, 200, 30)).save(buf, "PNG")  # 9:16
    ref = upload(http, buf.getvalue(), display_name="ref.png")
    gone = upload(http, buf.getvalue(), display_name="gone.png")

    def with_ref(key: str, file: dict[str, Any]) -> dict[str, Any]:
        line = request_line(key, f"styled like the reference {key}")
        line["request"]["contents"][0]["parts"].append(
            {"fileData": {"mimeType": "image/png", "fileUri": file["uri"]}})
        return line

    # A reference deleted before the batch runs is that line's error, not the create's.
    http.delete(f"/v1beta/{gone['name']}")
    name = file_batch(http, [with_ref("a", ref), with_ref("b", ref), with_ref("c", gone),
                             request_line("plain", "no reference")])
    out = {line["key"]: line for line in results(http, wait_done(http, name))}
    for key in ("a", "b"):
        response = out[key]["response"]
        img = final_image(response)
        assert img.height > img.width  # the reference's 9:16, no aspect ratio asked
        image_in = [d for d in response["usageMetadata"]["promptTokensDetails"]
                    if d["modality"] == "IMAGE"]
        assert image_in == [{"modality": "IMAGE", "tokenCount": 560}]
    assert out["c"]["error"]["code"] == 7 and "may not exist" in out["c"]["error"]["message"]
    assert final_image(out["plain"]["response"]).size[0] == final_image(out["plain"]["response"]).size[1]

    # Live generateContent reads the same references the same way.
    live = http.post(f"/v1beta/models/{MODEL}:generateContent",
                     json=with_ref("x", ref)["request"])
    assert live.status_code == 200
    assert final_image(live.json()).height > final_image(live.json()).width
    missing = http.post(f"/v1beta/models/{MODEL}:generateContent",
                        json=with_ref("y", gone)["request"])
    assert missing.status_code == 403


def test_fake_config_endpoint_takes_batch_knobs(fake: ThreadedFakeServer, http: Http) -> None:
    assert http.post("/_fake/config", json={"batch_seconds": 0.1,
                                            "batch_duplicate_rate": 0.5}).status_code == 200
    assert fake.config.batch_duplicate_rate == 0.5
    assert http.post("/_fake/config", json={"batch_line_error_rate": 2}).status_code == 400
    assert fake.config.batch_line_error_rate == 0.0


def test_sdk_cancel_delete_and_file_list(fake: ThreadedFakeServer, tmp_path: Path) -> None:
    from google import genai
    from google.genai import types

    fake.config.batch_seconds = 60
    client = genai.Client(api_key=SECRET, http_options=types.HttpOptions(base_url=fake.url))
    src = tmp_path / "r.jsonl"
    src.write_bytes(jsonl([request_line("a", "cancel me")]))
    uploaded = client.files.upload(file=src, config=types.UploadFileConfig(mime_type="jsonl"))
    assert [f.name for f in client.files.list()] == [uploaded.name]
    job = client.batches.create(model=MODEL, src=uploaded.name)
    assert job.name
    client.batches.cancel(name=job.name)
    got = client.batches.get(name=job.name)
    assert got.state == types.JobState.JOB_STATE_CANCELLED and got.done
    client.batches.delete(name=job.name)
    assert list(client.batches.list()) == []
    assert fake.stats.batch_billed_images == 0


def test_succeeded_before_its_output_is_there(fake: ThreadedFakeServer, http: Http) -> None:
    fake.config.batch_output_lag = 2
    name = file_batch(http, [request_line("a", "lagging")])
    first = wait_done(http, name)  # the first read that is done has no output yet
    assert first["metadata"]["state"] == "BATCH_STATE_SUCCEEDED"
    assert "output" not in first["metadata"] and "response" not in first
    second = http.get(f"/v1beta/{name}").json()
    assert "response" not in second
    third = http.get(f"/v1beta/{name}").json()
    assert third["response"]["responsesFile"] == third["metadata"]["output"]["responsesFile"]


def test_chosen_file_names(fake: ThreadedFakeServer, http: Http) -> None:
    def start(name: str) -> Resp:
        return http.post("/upload/v1beta/files", headers={
            "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
            "X-Goog-Upload-Header-Content-Length": "3",
            "X-Goog-Upload-Header-Content-Type": "application/jsonl"},
            json={"file": {"name": name}})

    def finish(resp: Resp) -> Resp:
        return Http("").post(resp.headers["X-Goog-Upload-URL"], content=b"{}\n", headers={
            "X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"})

    first = finish(start("files/run-0001-requests"))
    assert first.json()["file"]["name"] == "files/run-0001-requests"
    assert start("files/run-0001-requests").status_code == 409
    assert start("files/-bad-").status_code == 400
    assert start("files/UPPER").status_code == 400
    http.delete("/v1beta/files/run-0001-requests")
    again = finish(start("files/run-0001-requests"))
    assert again.status_code == 200
    # An abandoned session can be cancelled; its name is free again.
    pending = start("files/abandoned")
    cancelled = Http("").post(pending.headers["X-Goog-Upload-URL"],
                              headers={"X-Goog-Upload-Command": "cancel"})
    assert cancelled.headers["X-Goog-Upload-Status"] == "cancelled"
    assert finish(start("files/abandoned")).status_code == 200


def test_fault_rates_apply_per_line_and_counters_stay_apart(
    fake: ThreadedFakeServer, http: Http
) -> None:
    live = http.post(f"/v1beta/models/{MODEL}:generateContent",
                     json=request_line("x", "live one")["request"])
    assert live.status_code == 200
    fake.config.faults = {"block": 1.0}
    op = wait_done(http, file_batch(http, [request_line(f"k{i}", f"b {i}") for i in range(4)]))
    lines = results(http, op)
    assert all(line["response"]["promptFeedback"]["blockReason"] == "SAFETY" for line in lines)
    stats = fake.stats
    assert stats.billed_images == 1 and stats.billed_prompts == Counter({"live one": 1})
    assert stats.batch_billed_images == 0 and stats.requests == 1
