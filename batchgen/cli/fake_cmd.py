"""``batchgen fake-server``: the fake Gemini API on loopback, for trying batchgen without a key."""

from __future__ import annotations

import re
from typing import Any

import click

from .common import fail

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30}


def _byte_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``1MB``, ``1.5MB``, ``600KB``, ``2MiB`` or a plain count of bytes."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) * _UNITS[unit] < 1:
        raise click.BadParameter(f"{value!r}: expected a size such as 1MB, 600KB or 2MiB")
    return int(float(m.group(1)) * _UNITS[unit])


@click.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8765, show_default=True)
@click.option("--key", default="fake-key", show_default=True, help="The key it accepts.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds per answer.")
@click.option("--full-size", is_flag=True, help="Real pixel sizes instead of small images.")
@click.option("--image-bytes", callback=_byte_size, metavar="SIZE",
              help="Answer images of about this size (e.g. 1MB; a real 1K PNG is 1-2 MB, 2K "
                   "about 6 MB) at real pixel sizes, different bytes in every answer.")
@click.option("--fault", "faults", multiple=True, metavar="NAME=RATE",
              help="e.g. --fault 429=0.1 --fault 503=0.05 (repeatable).")
@click.option("--rpm", type=int, help="Requests allowed per --rate-window (a quota limiter).")
@click.option("--ipm", type=int, help="Images allowed per --rate-window.")
@click.option("--rate-window", type=click.FloatRange(min=0.001, min_open=True), default=60.0,
              show_default=True, help="Seconds the limiter counts over (1, 10, 60...).")
@click.option("--rate-window-kind", type=click.Choice(["sliding", "fixed"]), default="sliding",
              show_default=True, help="Count over the last N seconds, or per fixed N-second slot.")
@click.option("--rate-limit-style", type=click.Choice(["quota", "capacity"]), default="quota",
              show_default=True,
              help="Refuse with a quota 429 and RetryInfo, or an overload 429 with no delay.")
@click.option(
    "--url-output", type=click.Choice(["file_data", "text", "markdown", "escaped", "data"])
)
@click.option("--batch-seconds", type=click.FloatRange(0.0), default=2.0, show_default=True,
              help="Seconds a batch takes from create to done.")
@click.option("--batch-fault", "batch_faults", multiple=True, metavar="NAME=VALUE",
              help="duplicate_rate=0.1, line_error_rate=0.1, create_503=1, expire=1, fail=1, "
                   "output_lag=2.")
@click.option("--flex-shed", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Share of --tier flex requests shed (answered --flex-shed-status).")
@click.option("--flex-shed-status", type=click.Choice(["429", "503"]), default="429",
              show_default=True, help="What a shed flex request gets back.")
@click.option("--flex-latency", type=click.FloatRange(0.0), default=0.0, show_default=True,
              help="Extra seconds a flex answer takes.")
@click.option("--refuse-tier", "refuse_tiers", multiple=True, metavar="MODEL=TIER",
              help="Answer 400 to this tier on this model (repeatable; default: the tiers the "
                   "model table does not list for it, flex only).")
def fake_server(host: str, port: int, key: str, latency: float, full_size: bool,
                image_bytes: int | None,
                faults: tuple[str, ...], rpm: int | None, ipm: int | None, rate_window: float,
                rate_window_kind: str, rate_limit_style: str, url_output: str | None,
                batch_seconds: float, batch_faults: tuple[str, ...], flex_shed: float,
                flex_shed_status: str, flex_latency: float, refuse_tiers: tuple[str, ...]) -> None:
    """Serve the fake Gemini API on loopback, for trying batchgen without a key."""
    from ..fake import FAULT_NAMES, FakeConfig, run_forever
    from ..spec import SERVICE_TIERS

    rates: dict[str, float] = {}
    for item in faults:
        name, _, rate = item.partition("=")
        try:
            rates[name] = float(rate)
        except ValueError:
            fail(f"--fault {item!r}: expected NAME=RATE, e.g. 503=0.1")
        if name not in FAULT_NAMES:
            fail(f"--fault {item!r}: unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
        if not 0.0 <= rates[name] <= 1.0:
            fail(f"--fault {item!r}: the rate is a probability from 0 to 1, e.g. {name}=0.1")
    batch: dict[str, Any] = {}
    kinds = {"duplicate_rate": float, "line_error_rate": float, "create_503": int,
             "expire": bool, "fail": bool, "output_lag": int}
    for item in batch_faults:
        name, _, value = item.partition("=")
        if name not in kinds:
            fail(f"--batch-fault {item!r}: NAME is one of {', '.join(kinds)}")
        try:
            batch[f"batch_{name}"] = kinds[name](float(value))
        except ValueError:
            fail(f"--batch-fault {item!r}: expected NAME=NUMBER, e.g. duplicate_rate=0.1")
    tier_cfg: dict[str, Any] = {"flex_shed_rate": flex_shed, "flex_latency_s": flex_latency,
                                "flex_shed_status": int(flex_shed_status)}
    if refuse_tiers:
        refused: dict[str, list[str]] = {}
        for item in refuse_tiers:
            model, _, tier = item.partition("=")
            if not model or tier.lower() not in SERVICE_TIERS:
                fail(f"--refuse-tier {item!r}: expected MODEL=TIER, TIER one of "
                     f"{', '.join(SERVICE_TIERS)}")
            refused.setdefault(model, []).append(tier.lower())
        tier_cfg["tiers_refused"] = refused
    try:
        config = FakeConfig(api_key=key, latency_s=latency, full_size=full_size,
                            image_bytes=image_bytes, faults=rates,
                            rpm_limit=rpm, ipm_limit=ipm, rate_window_s=rate_window,
                            rate_window_kind=rate_window_kind, rate_limit_style=rate_limit_style,
                            url_output=url_output, batch_seconds=batch_seconds, **batch,
                            **tier_cfg)
    except ValueError as exc:
        fail(str(exc))
    run_forever(config, host, port)
