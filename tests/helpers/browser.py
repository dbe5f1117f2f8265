"""A real headless browser for the page tests: Debian's chromium, installed on first use.

Playwright drives it through its Python bindings pointed at that executable; Playwright's own
browser download is never used (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1, no ``playwright install``).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def install_chromium() -> str:
    """The path of Debian's chromium, installed with apt-get when missing (skip: no apt-get)."""
    found = shutil.which("chromium")
    if found:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        # Stale package lists are the usual cause: refresh once and try again.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    found = shutil.which("chromium")
    if proc.returncode != 0 or not found:
        pytest.skip(f"apt-get install chromium failed: {proc.stderr.strip()[-300:]}")
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed on first use when we are root and have apt-get."""
    return install_chromium()
