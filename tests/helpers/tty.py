"""The CLI run with stdin and stderr on a pseudo-terminal, as a person at a terminal runs it:
the progress bar and the confirmation only appear there."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.cli import Result


def cli_on_tty(*args: str | Path, env: dict[str, str], typed: str = "",
               timeout: float = 60) -> Result:
    """Run ``batchgen ARGS`` with a terminal for stdin and stderr (stdout stays a pipe);
    ``typed`` is what the person types. Result.stderr is everything the terminal showed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchgen", *map(str, args)],
        stdin=slave, stdout=subprocess.PIPE, stderr=slave, env={**env, "COLUMNS": "160"},
        text=True, start_new_session=True,
    )
    os.close(slave)
    if typed:
        os.write(master, typed.encode())
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer of the terminal has closed it
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        stdout, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return Result(proc.returncode, stdout, shown.decode(errors="replace").replace("\r\n", "\n"))
