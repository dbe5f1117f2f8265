"""A run folder made once by the CLI against the built-in fake (real images on disk), copied
for each test that changes it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from batchgen.fake import FakeConfig, Rule, ThreadedFakeServer
from tests.helpers.cli import SECRET, run_against

ANIMALS = ["cat", "dog", "owl"]
STYLES = ["oil", "ink"]


def write_matrix(path: Path, animals: list[str] = ANIMALS) -> Path:
    path.write_text(
        "jobs:\n"
        "  - id: pet\n"
        "    prompt: a {animal} in {style}\n"
        f"    vars: {{animal: [{', '.join(animals)}], style: [{', '.join(STYLES)}]}}\n"
        "    meta: {shelf: A}\n"
        "    output_text: true\n"
        "  - id: blocked\n"
        "    prompt: a forbidden picture\n"
    )
    return path


@pytest.fixture(scope="session")
def made_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("review-made")
    manifest = write_matrix(base / "pets.yaml")
    out = base / "run"
    config = FakeConfig(api_key=SECRET, rules=[Rule(match="forbidden", fault="block")])
    with ThreadedFakeServer(config) as server:
        r = run_against(server, manifest, out, "--no-gallery", "--yes", timeout=120)
    assert r.code == 1, r.output  # the blocked one failed
    return out


@pytest.fixture
def run_dir(made_folder: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(made_folder, dest, symlinks=True)
    return dest
