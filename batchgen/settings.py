"""Settings: frozen, keyword-only, built once by the CLI and handed down the pipeline.

:class:`RunOptions` is what ``batchgen run`` was asked for, composed of small parts, each of
which has one reader: :class:`Target` and :class:`Timeouts` (``prepare``), :class:`RunSettings`
(the live pool), :class:`Selection` (the plan), :class:`BatchSettings` (batch mode) and
:class:`Interaction` (what the CLI asks and shows). ``cli/options.py`` builds it from click's
parameters; nothing below the CLI sees them as a dict.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .providers import PROVIDERS, MiB
from .redact import redact
from .spec import JobSpec, Provider

# Seconds per request by default: standard answers come in well under a minute; Flex targets
# 1-15 minutes (shared/gemini-api.md "Service tiers"), so its requests get the target's end
# plus a third, before one counts as lost.
STANDARD_TIMEOUT_S = 300.0
FLEX_TIMEOUT_S = 1200.0
# --tier flex,standard: a job moves to the next tier after this many sheds in a row
# (docs/design/flex.md gives the arithmetic behind 3).
FALLBACK_AFTER_SHEDS = 3


def tier_note(tiers: tuple[str, ...], timeout_s: float) -> str:
    """What the bar and the log say of a run on these tiers ("" for a standard run)."""
    if "flex" not in tiers:
        return f"tier {tiers[0]}" if tiers else ""
    then = f", then {', '.join(tiers[tiers.index('flex') + 1:])}" if tiers[-1] != "flex" else ""
    return f"flex tier{then}: answers take 1-15 min (timeout {timeout_s:g}s)"


def tier_timeout(tiers: tuple[str, ...]) -> float:
    """The default --timeout for a run on these tiers: the slowest tier's."""
    return FLEX_TIMEOUT_S if "flex" in tiers else STANDARD_TIMEOUT_S


# A batch's results file is kept under 1 GB by its expected output (docs/design/batch-mode.md):
# under the 1.2 GB batch reported unfetchable and half the Files API's 2 GB a file.
MAX_RESULT_BYTES = 1000**3

# Jobs per batch by default; docs/design/batch-mode.md gives the figures behind it.
DEFAULT_BATCH_SIZE = 1000
# The service takes request files up to 2 GB; keep a margin for the last line written.
MAX_FILE_BYTES = 2 * 1000**3 - 16 * 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings:
    """One endpoint and how to talk to it, resolved and checked (the key included)::

        ClientSettings(provider=Provider.GOOGLE, base_url=url, api_key=key, timeout_s=120.0)
    """

    provider: Provider = Provider.ANYFAST
    base_url: str = PROVIDERS[Provider.ANYFAST].base_url
    api_key: str
    timeout_s: float = 300.0
    connections: int = 8
    max_request_bytes: int = 20 * MiB
    # URL references are fetched from hosts that are not the API: they get their own, shorter
    # timeout, so a hanging one fails its job as a reference problem instead of holding a slot
    # for the API's --timeout (which must allow for minutes of image generation).
    reference_timeout_s: float = 60.0

    def __repr__(self) -> str:  # the key must never reach a log line through a repr
        return (
            f"ClientSettings(provider={self.provider.value!r}, base_url={redact(self.base_url)!r}, "
            f"api_key='REDACTED', timeout_s={self.timeout_s}, connections={self.connections})"
        )

    @property
    def key_in_query(self) -> bool:
        return PROVIDERS[self.provider].key_in_query


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSettings:
    """How the live pool sends: concurrency, retries, pacing, the budget and the grace of a
    Ctrl-C::

        RunSettings(concurrency=16, rpm=60, budget_usd=25.0)
    """

    concurrency: int = 8
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    rpm: float | None = None
    ipm: float | None = None
    rate_window_s: float = 60.0
    burst: int = 1  # pacing.DEFAULT_BURST: requests that may leave at once after an idle spell
    retry_blocked: int = 0
    budget_usd: float | None = None
    grace_s: float = 300.0  # how long Ctrl-C waits for requests in flight (they are paid for)
    # --tier: the service tiers to send on, in order ("flex", "standard": fall back after
    # fallback_after_sheds sheds); () sends no service_tier (the service's standard).
    tiers: tuple[str, ...] = ()
    fallback_after_sheds: int = FALLBACK_AFTER_SHEDS


def shard_of(job_id: str, n: int) -> int:
    """The 1-based shard a job belongs to: a hash of its id, the same on every machine."""
    digest = hashlib.blake2b(job_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """What the user asked to run, beyond 'everything not yet done'::

        Selection(retry_failed=("blocked",), only="cat-*", shard=(2, 4), limit=100)

    ``retry_failed`` is None (no permanent failure again), ``()`` (all of them) or the kinds.
    """

    retry_failed: tuple[str, ...] | None = None
    only: str | None = None
    shard: tuple[int, int] | None = None
    limit: int | None = None
    redo_missing: bool = False
    # --preview N: N pending jobs spread over the manifest (planning/preview.py picks them).
    preview: int | None = None
    # --redo-rejected: the jobs whose image now was rejected (folder/verdicts.py), sent again.
    redo_rejected: bool = False
    # The jobs a preview or a redo chose: only these are sent (None: no such choice).
    ids: frozenset[str] | None = None

    def in_scope(self, job_id: str) -> bool:
        """Whether the job belongs to this run folder at all (this machine's shard)."""
        return self.shard is None or shard_of(job_id, self.shard[1]) == self.shard[0]

    def covers(self, job: JobSpec) -> bool:
        """:meth:`in_scope` for a job: a chain's jobs go by their chain's first job, so a chain
        stays whole on one machine's shard (issue 22)."""
        chain = job.chain
        return self.in_scope(chain.group if chain is not None and chain.group else job.job_id)

    def picked(self, job_id: str) -> bool:
        """Whether ``--only`` (and a preview's or a redo's choice) picks the job."""
        if self.ids is not None and job_id not in self.ids:
            return False
        return self.only is None or fnmatch.fnmatchcase(job_id, self.only)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What to run and against what, as given (``prepare`` checks and resolves it)::

        Target(manifest=Path("cats.yaml"), out=Path("jobs/cats"), provider="google")

    None means "from the manifest, else the default": the run folder is ``jobs/<stem>``.
    """

    manifest: Path
    out: Path | None = None
    fake: bool = False  # the built-in fake server, started on loopback for this run
    provider: str | None = None
    base_url: str | None = None
    model: str | None = None
    prices: Path | None = None
    # `--column FIELD=HEADER` and `--set FIELD=VALUE`, as pairs (see manifest/columns.py).
    columns: tuple[tuple[str, str], ...] = ()
    defaults: tuple[tuple[str, str], ...] = ()
    # The fields above that were not given but taken from the run folder's run.json
    # (planning/recall.py), so that only a flag given is checked against the folder.
    remembered: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    """Seconds per API request, and per URL reference image fetched::

        Timeouts(request_s=120.0, reference_s=30.0)
    """

    request_s: float = 300.0
    reference_s: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchSettings:
    """Batch mode (the Gemini Batch API)::

        BatchSettings(batch_size=500, wait=True, poll_interval_s=60.0)
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    max_file_bytes: int = MAX_FILE_BYTES
    # A batch's expected results file, at most (catalog.result_line_bytes per job).
    max_result_bytes: int = MAX_RESULT_BYTES
    wait: bool = False  # poll until every batch is collected
    poll_interval_s: float = 30.0
    running_ok: bool = False  # --running-ok: exit 0 instead of 5 while batches still run


@dataclass(frozen=True, slots=True, kw_only=True)
class Interaction:
    """What the run asks and shows: the confirmation, the progress bar or lines, the log level
    and the gallery refreshed at the end::

        Interaction(yes=True, progress=False, log_every_s=0.0)
    """

    yes: bool = False
    confirm_above_usd: float = 20.0  # ask before a run estimated above this (on a terminal)
    progress: bool = True
    log_every_s: float = 60.0  # progress lines when stderr is not a terminal; 0: none
    verbose: int = 0
    gallery: bool = True
    # -q: no bar, no progress lines, no estimate or hints; errors, warnings and the summary line
    quiet: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Everything ``batchgen run`` was asked for, typed, built once by the CLI::

        RunOptions(target=Target(manifest=Path("cats.yaml")), settings=RunSettings(rpm=60))
    """

    target: Target
    mode: Literal["live", "batch"] = "live"
    timeouts: Timeouts = field(default_factory=Timeouts)
    settings: RunSettings = field(default_factory=RunSettings)
    selection: Selection = field(default_factory=Selection)
    batch: BatchSettings = field(default_factory=BatchSettings)
    ui: Interaction = field(default_factory=Interaction)
