"""The first-answer gate (batchgen/pacing/gate.py): one probe goes first, the others wait for it."""

from __future__ import annotations

import asyncio
import time

import pytest

from batchgen.aio import Stopped
from batchgen.pacing.gate import FirstAnswerGate

# -- the gate alone ------------------------------------------------------------------------


async def test_gate_opens_on_the_probes_answer() -> None:
    gate = FirstAnswerGate(asyncio.Event(), release_after_s=10.0)
    assert await gate.enter() is True
    gate.sent()
    follower = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.05)
    assert not follower.done()
    gate.leave(answered=True)
    assert await asyncio.wait_for(follower, 1.0) is False


async def test_gate_opens_when_the_probe_is_out_too_long_without_an_answer() -> None:
    gate = FirstAnswerGate(asyncio.Event(), release_after_s=0.3)
    assert await gate.enter() is True
    follower = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.5)
    assert not follower.done()  # the timer starts when the probe's request leaves, not before
    gate.sent()
    t0 = time.monotonic()
    assert await asyncio.wait_for(follower, 2.0) is False
    assert 0.2 < time.monotonic() - t0 < 1.0
    assert gate.released_early


async def test_gate_hands_the_probe_on_when_it_got_no_answer() -> None:
    stop = asyncio.Event()
    gate = FirstAnswerGate(stop, release_after_s=10.0)
    assert await gate.enter() is True
    follower = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.05)
    gate.leave(answered=False)  # e.g. a reference that would not load
    assert await asyncio.wait_for(follower, 1.0) is True
    third = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.05)
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(third, 1.0)
