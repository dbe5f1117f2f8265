"""The fake's service tiers (issue 23), over real HTTP: service_tier read, flex shed, a tier
refused per model, and the tier served named in x-gemini-service-tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from batchgen.fake import FakeConfig, FakeServer
from tests.fake.test_server import MODEL, final_image, post, request_body

LITE = "gemini-3.1-flash-lite-image"  # the table lists no flex tier for it


@pytest.fixture
async def srv() -> AsyncIterator[FakeServer]:
    async with FakeServer(FakeConfig()) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_flex_is_served_and_named_in_the_header_at_half_price(
    srv: FakeServer, session: aiohttp.ClientSession
) -> None:
    status, data, resp = await post(session, srv, {**request_body("a"), "service_tier": "FLEX"})
    assert status == 200, data
    assert resp.headers["x-gemini-service-tier"] == "flex"
    assert final_image(data)[1][:4] == b"\x89PNG"
    status, _, resp = await post(session, srv, request_body("b"))
    assert resp.headers["x-gemini-service-tier"] == "standard"
    # One flex image at half of one standard one (the fake bills $0.134 per standard 1K image).
    assert srv.stats.billed_usd == pytest.approx(0.134 * 1.5)
    assert [r["service_tier"] for r in srv.stats.requests_seen()] == ["flex", None]


async def test_unknown_tier_is_a_400(srv: FakeServer, session: aiohttp.ClientSession) -> None:
    status, data, _ = await post(session, srv, {**request_body(), "service_tier": "cheap"})
    assert status == 400 and "service_tier" in data["error"]["message"]


async def test_model_without_flex_refuses_it_naming_tier_and_model(
    srv: FakeServer, session: aiohttp.ClientSession
) -> None:
    status, data, _ = await post(
        session, srv, {**request_body(), "service_tier": "flex"}, model=LITE
    )
    assert status == 400
    assert "flex" in data["error"]["message"] and LITE in data["error"]["message"]
    srv.config.tiers_refused = {MODEL: ["priority"]}
    status, _, _ = await post(session, srv, {**request_body(), "service_tier": "priority"})
    assert status == 400
    assert srv.stats.billed_images == 0


@pytest.mark.parametrize("code", [429, 503])
async def test_flex_requests_are_shed_at_the_configured_share(
    srv: FakeServer, session: aiohttp.ClientSession, code: int
) -> None:
    srv.config.flex_shed_rate = 0.5
    srv.config.flex_shed_status = code
    statuses = [
        (await post(session, srv, {**request_body(f"p{i}"), "service_tier": "flex"}))[0]
        for i in range(60)
    ]
    shed = statuses.count(code)
    assert set(statuses) == {200, code}
    assert 15 <= shed <= 45, shed
    assert srv.stats.faults["flex_shed"] == shed
    # Standard requests are never shed.
    standard = [(await post(session, srv, request_body(f"s{i}")))[0] for i in range(20)]
    assert standard == [200] * 20


def test_fake_server_command_checks_its_tier_knobs() -> None:
    from tests.helpers.cli import cli

    r = cli("fake-server", "--refuse-tier", "gemini-3-pro-image=cheap")
    assert r.code == 2 and "--refuse-tier" in r.output and "flex" in r.output
    r = cli("fake-server", "--flex-shed", "1.5")
    assert r.code == 2 and "--flex-shed" in r.output
