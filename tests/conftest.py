"""Shared fixtures: a real fake Gemini server on loopback (the harnesses are in tests/helpers/)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from batchgen.fake import FakeConfig, ThreadedFakeServer
from tests.helpers.browser import chromium  # noqa: F401 - a fixture: Debian's chromium
from tests.helpers.cli import SECRET


@pytest.fixture
def server() -> Iterator[ThreadedFakeServer]:
    """A fake server in a thread; the CLI under test reaches it over HTTP."""
    with ThreadedFakeServer(FakeConfig(api_key=SECRET)) as srv:
        yield srv

