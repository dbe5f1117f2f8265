"""One attempt (batchgen/live/attempt.py) alone, against the fake server over HTTP.

Every part the attempt talks to is the real one; the pacer is the real :class:`Pacing` with its
outcomes written down, and the run's stop is a list of the reasons given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from batchgen import errors as e
from batchgen.aio import ConcurrencyCap, Stopped
from batchgen.api.client import GeminiClient
from batchgen.fake import ThreadedFakeServer
from batchgen.folder.intents import IntentJournal, Unsettled
from batchgen.live.attempt import Attempt
from batchgen.live.budget import Budget
from batchgen.live.outcome import Abandoned, JobState, StopReason
from batchgen.pacing.gate import FirstAnswerGate
from batchgen.pacing.pacer import Pacing
from batchgen.pricing import PriceTable
from batchgen.progress import Progress
from batchgen.settings import ClientSettings
from batchgen.spec import JobSpec, Provider
from tests.helpers.cli import SECRET

PRICES = PriceTable.load()


SPEC = JobSpec(job_id="fox-1", prompt="a red fox")


class RecordingPacer(Pacing):
    """The real pacer, with the outcomes it was told kept for the test to read."""

    def __init__(self, rate_per_s: float | None = None) -> None:
        super().__init__(rate_per_s)
        self.sent: list[float] = []
        self.answers: list[float] = []
        self.rate_limited: list[tuple[float, float | None]] = []
        self.waiting = asyncio.Event()  # an attempt has reached acquire

    async def acquire(self, stop: asyncio.Event) -> float:
        self.waiting.set()
        sent_at = await super().acquire(stop)
        self.sent.append(sent_at)
        return sent_at

    def on_answer(self, sent_at: float) -> None:
        self.answers.append(sent_at)
        super().on_answer(sent_at)

    def on_rate_limited(self, sent_at: float, delay_s: float | None) -> None:
        self.rate_limited.append((sent_at, delay_s))
        super().on_rate_limited(sent_at, delay_s)


@dataclass
class Parts:
    """An attempt and the real parts it was given, built as the runner builds them."""

    client: GeminiClient
    run_dir: Path
    pacer: RecordingPacer = field(default_factory=RecordingPacer)
    budget_usd: float | None = None
    stops: list[tuple[StopReason, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stop_event = asyncio.Event()
        self.budget = Budget(PRICES, self.budget_usd)
        self.gate = FirstAnswerGate(self.stop_event)
        self.intents = IntentJournal(self.run_dir, Unsettled())
        self.intents.open()
        self.progress = Progress(1, enabled=False)
        self.attempt = Attempt(
            client=self.client,
            concurrency=ConcurrencyCap(2),
            pacer=self.pacer,
            gate=self.gate,
            budget=self.budget,
            intents=self.intents,
            progress=self.progress,
            stop_event=self.stop_event,
            stop=self.stop,
        )

    def stop(self, reason: StopReason, message: str = "") -> None:
        # As the runner does: the flag, then the budget's waiters look again.
        self.stops.append((reason, message))
        self.stop_event.set()
        self.budget.wake()

    def intent_lines(self) -> list[dict[str, object]]:
        text = self.intents.path.read_bytes() if self.intents.path.exists() else b""
        return [orjson.loads(line) for line in text.splitlines()]


@pytest.fixture
async def client(server: ThreadedFakeServer) -> AsyncIterator[GeminiClient]:
    settings = ClientSettings(provider=Provider.ANYFAST, base_url=server.url, api_key=SECRET,
                              timeout_s=5.0)
    async with GeminiClient(settings) as c:
        yield c


def assert_nothing_held(parts: Parts) -> None:
    assert parts.budget.reservations == 0
    assert parts.budget.reserved_usd == 0.0
    assert parts.attempt.in_flight == 0


async def test_an_answer_is_charged_and_reported_to_the_pacer(
    server: ThreadedFakeServer, client: GeminiClient, tmp_path: Path
) -> None:
    parts = Parts(client, tmp_path)
    state = JobState(started_at="2024-01-01T00:00:00Z")
    image = await parts.attempt(SPEC, state)

    assert image.data and image.usage
    cost = PRICES.from_usage(SPEC, image.usage)
    assert cost > 0
    assert (state.attempts, state.cost_usd, state.usage) == (1, cost, image.usage)
    assert parts.budget.spent_usd == cost
    assert parts.progress.spent_usd == cost
    assert len(parts.pacer.sent) == 1
    assert parts.pacer.answers == parts.pacer.sent
    assert parts.pacer.rate_limited == []
    assert parts.gate.is_open  # the probe was answered
    assert parts.stops == []
    assert_nothing_held(parts)
    assert server.stats.requests == 1
    # The intent stays open until the job's ledger line settles it: it may have been billed.
    (line,) = parts.intent_lines()
    assert (line["job_id"], line["usd"]) == ("fox-1", PRICES.reserve(SPEC))
    assert parts.intents.open_intents.count == 1


async def test_a_429_reaches_the_pacer_with_the_servers_delay(
    server: ThreadedFakeServer, client: GeminiClient, tmp_path: Path
) -> None:
    server.config.retry_delay_s = 1.5
    server.config.script = ["429"]
    parts = Parts(client, tmp_path)
    state = JobState()
    with pytest.raises(e.RateLimitError) as info:
        await parts.attempt(SPEC, state)

    (sent_at,) = parts.pacer.sent
    assert parts.pacer.rate_limited == [(sent_at, pytest.approx(1.5, abs=0.01))]
    assert parts.pacer.answers == []
    assert (state.attempts, state.cost_usd, state.stochastic) == (1, 0.0, 0)
    assert state.last_error is info.value
    assert parts.budget.spent_usd == 0.0
    assert parts.gate.is_open  # a 429 is an answer: the key and model were accepted
    assert parts.stops == []
    assert_nothing_held(parts)
    # Refused, so not billed: the intent is voided.
    intent, void = parts.intent_lines()
    assert void == {"void": intent["intent"]}
    assert parts.intents.open_intents.count == 0


async def test_a_blocked_answer_is_charged_and_counted_as_stochastic(
    server: ThreadedFakeServer, client: GeminiClient, tmp_path: Path
) -> None:
    server.config.script = ["block"]
    parts = Parts(client, tmp_path)
    state = JobState()
    with pytest.raises(e.BlockedError) as info:
        await parts.attempt(SPEC, state)

    assert info.value.usage
    cost = PRICES.from_usage(SPEC, info.value.usage)
    assert (state.attempts, state.stochastic, state.cost_usd) == (1, 1, cost)
    assert parts.budget.spent_usd == cost > 0
    assert parts.pacer.answers == parts.pacer.sent
    assert parts.intents.open_intents.count == 1  # billed: it stays until the ledger line


async def test_a_stop_while_waiting_for_the_pacer_sends_nothing_and_releases_the_reserve(
    server: ThreadedFakeServer, client: GeminiClient, tmp_path: Path
) -> None:
    # One request a minute, already taken: the attempt waits for its turn.
    pacer = RecordingPacer(rate_per_s=1 / 60)
    await pacer.acquire(asyncio.Event())
    pacer.waiting.clear()
    pacer.sent.clear()
    parts = Parts(client, tmp_path, pacer=pacer)
    state = JobState()
    task = asyncio.create_task(parts.attempt(SPEC, state))
    await asyncio.wait_for(pacer.waiting.wait(), 5)
    # Reserved and recorded, but not sent.
    assert parts.budget.reservations == 1
    assert parts.intents.open_intents.count == 1
    parts.stop(StopReason.INTERRUPTED, "interrupted")
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, 5)

    assert server.stats.requests == 0
    assert pacer.sent == []
    assert state.attempts == 0
    assert_nothing_held(parts)
    intent, void = parts.intent_lines()
    assert void == {"void": intent["intent"]}
    assert parts.intents.open_intents.count == 0
    assert not parts.gate.is_open


async def test_a_budget_with_no_room_stops_the_run_and_sends_nothing(
    server: ThreadedFakeServer, client: GeminiClient, tmp_path: Path
) -> None:
    assert PRICES.reserve(SPEC) > 0.01
    parts = Parts(client, tmp_path, budget_usd=0.01)
    with pytest.raises(Abandoned):
        await parts.attempt(SPEC, JobState())

    assert parts.stops == [(StopReason.BUDGET, "$0.01")]
    assert server.stats.requests == 0
    assert parts.pacer.sent == []
    assert parts.intent_lines() == []
    assert_nothing_held(parts)


async def test_a_fatal_answer_stops_the_run_before_the_error_is_raised(
    server: ThreadedFakeServer, tmp_path: Path
) -> None:
    settings = ClientSettings(provider=Provider.ANYFAST, base_url=server.url,
                              api_key="wrong-key-123", timeout_s=5.0)
    async with GeminiClient(settings) as client:
        parts = Parts(client, tmp_path)
        with pytest.raises(e.AuthError):
            await parts.attempt(SPEC, JobState())

    [(reason, message)] = parts.stops
    assert reason is StopReason.FATAL and message
    assert parts.stop_event.is_set()
    assert parts.pacer.answers == parts.pacer.sent and len(parts.pacer.sent) == 1
    assert parts.budget.spent_usd == 0.0
    assert_nothing_held(parts)
    assert server.stats.requests == 1
