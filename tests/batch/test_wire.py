"""The Batch API on the wire (batchgen/batch/wire.py): line errors and the lookup by display name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchgen import errors as e
from batchgen.batch.wire import line_error
from batchgen.fake import FakeConfig
from tests.helpers.cli import SECRET


@pytest.mark.parametrize(
    ("status", "cls"),
    [({"code": 14, "message": "x"}, e.ServerError), ({"code": 8}, e.RateLimitError),
     ({"code": 3, "message": "bad"}, e.InvalidRequestError), ({"code": 503}, e.ServerError),
     ({"code": 429}, e.RateLimitError), ({"code": 400}, e.InvalidRequestError)],
)
def test_line_errors_go_through_the_error_tree(status: dict[str, object],
                                               cls: type[e.APIError]) -> None:
    assert type(line_error(status)) is cls


async def test_lookup_by_display_name_pages_through_the_list(tmp_path: Path) -> None:
    from batchgen.batch.wire import BatchAPI, batch_info
    from batchgen.fake import FakeServer
    from batchgen.settings import ClientSettings
    from batchgen.spec import Provider

    async with FakeServer(FakeConfig(api_key=SECRET, batch_seconds=60)) as srv:
        settings = ClientSettings(provider=Provider.GOOGLE, base_url=srv.url, api_key=SECRET)
        line = {"key": "k", "request": {"contents": [{"parts": [{"text": "a cat"}]}]}}
        (tmp_path / "r.jsonl").write_bytes(json.dumps(line).encode() + b"\n")
        async with BatchAPI(settings) as api:
            file = await api.upload(tmp_path / "r.jsonl", display_name="r")
            names = [f"run-{i}" for i in range(7)]
            made = {}
            for dn in names:
                op = await api.create("gemini-3-pro-image", dn, file["name"])
                made[dn] = op["name"]
            found = await api.find({"run-0", "run-6", "absent"}, page_size=2)
    assert set(found) == {"run-0", "run-6"}  # the oldest sits on the last page
    assert {dn: op["name"] for dn, op in found.items()} == {d: made[d] for d in ("run-0", "run-6")}
    assert batch_info(found["run-0"])["displayName"] == "run-0"
