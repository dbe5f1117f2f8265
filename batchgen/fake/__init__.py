"""A fake Gemini ``generateContent`` server for tests and benchmarks.

    async with FakeServer(FakeConfig(script=["503", "ok"])) as srv:
        ...  # point the client at srv.url; inspect srv.stats afterwards

``ThreadedFakeServer`` runs the same server in a daemon thread for subprocess clients, and
``run_forever`` serves from the command line (``batchgen fake-server``).
"""

from __future__ import annotations

from .faults import FAULT_NAMES, URL_OUTPUT_MODES, FakeConfig, Rule
from .server import FakeServer, ThreadedFakeServer, run_forever
from .stats import FakeStats

__all__ = [
    "FAULT_NAMES",
    "URL_OUTPUT_MODES",
    "FakeConfig",
    "FakeServer",
    "FakeStats",
    "Rule",
    "ThreadedFakeServer",
    "run_forever",
]
