"""What the batch service needs of the server it runs in: a Protocol, so that ``batch_api``
and ``batch_run`` need not import ``app`` (which imports them)."""

from __future__ import annotations

from typing import Protocol

from .faults import FakeConfig
from .stamps import Conversations
from .stats import FakeStats
from .validate import ParsedRequest


class BatchHost(Protocol):
    """The parts of :class:`~batchgen.fake.app.FakeServer` a batch uses."""

    config: FakeConfig
    stats: FakeStats
    conversations: Conversations

    def choose_fault(self, cfg: FakeConfig, prompt: str) -> str: ...

    def render(
        self, model: str, req: ParsedRequest, cfg: FakeConfig
    ) -> tuple[bytes, float | None]: ...
