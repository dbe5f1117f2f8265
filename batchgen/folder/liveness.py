"""Whether the run a folder's ``run.json`` calls "running" is still alive.

``run.json`` says ``state: running`` from a run's start to its end; a ``kill -9`` or a crash
never gets to write the end. The folder's lock (an flock, see :meth:`RunFolder.lock`) dies with
its process, so probing it tells a live run from a dead one. The probe never creates the lock
file and lets go at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .layout import LOCK_FILE

RUNNING = "running"
ENDED_UNFINISHED = "ended without finishing (killed or crashed); run it again to resume"


def lock_is_held(run_dir: Path) -> bool:
    """True while a batchgen process holds the folder's lock."""
    try:
        fd = os.open(run_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def describe_state(run_dir: Path, state: str) -> str:
    """The last run's state as ``status`` shows it: "running" only while it really runs."""
    if state == RUNNING and not lock_is_held(run_dir):
        return ENDED_UNFINISHED
    return state
