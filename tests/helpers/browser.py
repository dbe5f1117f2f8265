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
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is missing and there is no apt-get to install it with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Not root: sudo without a password prompt, or apt-get fails and says why below.
    sudo = ["sudo", "-n", "-E"] if os.geteuid() != 0 and shutil.which("sudo") else []
    install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        # Stale package lists are the usual cause: refresh once and try again.
        subprocess.run([*sudo, "apt-get", "update"], env=env, capture_output=True, timeout=600)
        proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    found = shutil.which("chromium")
    if proc.returncode != 0 or not found:
        pytest.skip(f"apt-get install chromium failed: {proc.stderr.strip()[-300:]}")
    return found


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get on first use."""
    return install_chromium()
