"""A run folder remembers how it was run: the provider, base URL, ``--model`` and ``--fake`` a
later run takes from it when their flags are absent, and the refusal of a flag that contradicts
them.

A folder's jobs went to one account at one price; a resume that silently went to the default
provider instead would bill another account at another price (or mix the fake's pictures into a
real dataset). ``run.json`` keeps ``run_with``, the flags as given, next to the values they
resolved to (``provider``, ``base_url``, ``model``); a folder written before ``run_with`` existed
still gives its provider and base URL.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..folder.layout import read_run_meta
from ..redact import redact
from ..settings import RunOptions, Target
from ..spec import DEFAULT_MODEL

RUN_WITH = "run_with"


def default_out(manifest: Path) -> Path:
    return Path("jobs") / manifest.stem


def run_with(target: Target) -> dict[str, Any]:
    """What ``run.json`` keeps of the flags a run was given (or took from the folder)."""
    return {"provider": target.provider, "base_url": redact(target.base_url or "") or None,
            "model": target.model, "fake": target.fake}


def recall(options: RunOptions, weak: tuple[str, ...] = ()) -> RunOptions:
    """``options`` with the flags left out taken from the run folder's ``run.json``; the names
    taken are in ``target.remembered``. ``weak``: fields set by a default (an environment
    variable), which the folder's value replaces. Reads one small file; a new folder changes
    nothing."""
    target = options.target
    meta = read_run_meta(target.out or default_out(target.manifest))
    if not meta.get("provider"):
        return options
    if weak:
        cleared: dict[str, Any] = dict.fromkeys(weak)
        target = dataclasses.replace(target, **cleared)
    given: dict[str, Any] = meta.get(RUN_WITH) or {
        # Written before run_with: the values the flags (or the manifest) resolved to.
        "provider": meta.get("provider"), "base_url": meta.get("base_url"),
    }
    changes: dict[str, Any] = {}
    # A provider from the environment yields to the one the folder's runs resolved to.
    provider = given.get("provider") or (meta["provider"] if "provider" in weak else None)
    if target.provider is None and provider:
        changes["provider"] = str(provider)
    if target.model is None and given.get("model"):
        changes["model"] = str(given["model"])
    if not target.fake and given.get("fake") and target.base_url is None:
        changes["fake"] = True
    elif target.base_url is None and given.get("base_url") and not target.fake:
        url = str(given["base_url"])
        if "REDACTED" in url or "***" in url:
            raise InputError(f"{target.out or default_out(target.manifest)}: its base URL was "
                             "stored redacted (it held a secret); give --base-url")
        changes["base_url"] = url
    remembered = tuple(changes)
    for name in weak:  # the folder had none of its own: the environment's after all
        if name not in changes:
            changes[name] = getattr(options.target, name)
    if not remembered:
        return options
    new = dataclasses.replace(target, **changes, remembered=remembered)
    return dataclasses.replace(options, target=new)


def folder_choices(run_dir: Path) -> tuple[str | None, str | None]:
    """The ``--model`` and provider a folder's runs used, for ``estimate`` of that folder
    (None, None for a new folder)."""
    meta = read_run_meta(run_dir)
    given = meta.get(RUN_WITH) or {}
    model, provider = given.get("model"), given.get("provider") or meta.get("provider")
    return (str(model) if model else None, str(provider) if provider else None)


def check_same(meta: dict[str, Any], target: Target, provider: str, base_url: str,
               folder: Path, header_base_url: str | None) -> None:
    """Refuse (exit 2) a run whose provider, base URL, model or fake server differ from what the
    folder's jobs were run with, naming both and how to start a new folder."""
    if not meta.get("provider"):
        return  # a new folder (or one merged from folders that disagreed)
    given = meta.get(RUN_WITH)
    new_folder = f"start a new folder (--out {folder}-2, or another --out)"
    was_fake = bool(given and given.get("fake"))
    if given is not None and was_fake != target.fake:
        if target.fake:
            raise InputError(
                f"{folder} was run against {meta.get('base_url')} (provider "
                f"{meta['provider']}); --fake would mix the fake server's pictures into it: "
                f"drop --fake, or {new_folder}")
        raise InputError(
            f"{folder} was made with --fake; --base-url {redact(target.base_url or '')} would "
            f"add real, paid images to it: drop --base-url to use the fake again, or {new_folder}")
    where = {"provider": "--provider" if _flag(target, "provider") else
             f"{target.manifest}: provider",
             "base_url": "--base-url" if _flag(target, "base_url") else
             f"{target.manifest}: base_url" if header_base_url else "the provider's base URL"}
    if provider != meta["provider"]:
        raise InputError(
            f"{folder} was run with provider {meta['provider']}; {where['provider']} "
            f"{provider} would send its jobs to another account, at another price: use the "
            f"folder's (drop --provider), or {new_folder}")
    stored = str(meta.get("base_url") or "")
    if not target.fake and not was_fake and stored and \
            redact(base_url).rstrip("/") != stored.rstrip("/"):
        raise InputError(
            f"{folder} was run against {stored}; {where['base_url']} {redact(base_url)} "
            f"contradicts it: use the folder's (drop --base-url), or {new_folder}")
    if _flag(target, "model") and given is not None:
        theirs = str(meta.get("model") or DEFAULT_MODEL)
        if target.model != theirs:
            raise InputError(
                f"{folder} was run with model {theirs}; --model {target.model} would make "
                f"every job again at another model: use the folder's (drop --model), or "
                f"{new_folder}")


def _flag(target: Target, name: str) -> bool:
    """Whether ``name`` was given on this command line (not taken from the folder)."""
    return getattr(target, name) not in (None, False) and name not in target.remembered
