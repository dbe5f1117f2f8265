"""Which manifest a run folder belongs to: its path, recorded in ``run.json``.

``train/prompts.csv`` and ``val/prompts.csv`` both default to ``jobs/prompts``; without this,
the second silently mixed its jobs and spend with the first's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def manifest_key(manifest: Path) -> str:
    """The manifest's path as a run folder remembers it: absolute, symlinks resolved."""
    return str(manifest.resolve())


def owner_problem(meta: dict[str, Any], manifest: Path, folder: Path) -> str | None:
    """Why ``manifest`` may not run in ``folder``, or None when the folder is free or its own.

    A folder belongs to the manifest path that first ran in it; that file's content may change
    (edits are what resuming is for). ``train/prompts.csv`` and ``val/prompts.csv`` both default
    to ``jobs/prompts``: mixing them silently counted both runs' jobs and spend as one.
    Folders from before this was recorded (no ``manifest_path``) are taken as they are.
    """
    owner = meta.get("manifest_path")
    if not owner or owner == manifest_key(manifest):
        return None
    return (
        f"{folder} belongs to another manifest, {owner}; {manifest} is a different file. "
        f"Give it a folder of its own, e.g. --out {folder.parent / suggested_name(manifest)}"
    )


def suggested_name(manifest: Path) -> str:
    """``val/prompts.csv`` -> ``val-prompts``: the folder name that tells it apart."""
    parent = manifest.resolve().parent.name
    return f"{parent}-{manifest.stem}" if parent else f"{manifest.stem}-2"
