"""Where an export is written: a local folder, or any fsspec URL (``s3://bucket/prefix``).

Nothing is ever half-written where the user looks. Everything goes to ``PATH.partial-<pid>``
first; :meth:`Target.commit` then swaps it in:

- **locally** by one ``renameat2(RENAME_EXCHANGE)`` that swaps the two folders atomically, so
  ``PATH`` holds the old dataset or the new one, whole, at every instant, a ``kill -9``
  included (the old one, now under the staging name, is removed next, or by the next export if
  the kill came first). Where the filesystem cannot exchange, two renames (old aside, new in):
  the next export puts back an old copy a kill left aside with nothing at ``PATH``;
- **on object storage**, which has no rename of a folder, by a server-side copy of each finished
  file, then deleting the files the new export no longer has, then the staging prefix. Every
  object appears whole (an object store never shows a partial upload), but a reader listing the
  prefix *during* the copy may see new files next to old ones.

``PATH`` is only ever replaced when it is empty or holds an earlier batchgen export (it has the
hidden marker file), so a typo in ``--out`` cannot wipe someone's folder.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import orjson

from ..errors import InputError, StorageError

log = logging.getLogger(__name__)

# Hidden (leading dot), so the loaders of datasets skip it when they list the folder.
MARKER = ".batchgen-export.json"
_EXTRA_FOR = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_PACKAGE_FOR = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs",
                "abfs": "adlfs", "abfss": "adlfs"}


def require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency, or stop with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(
            f"this needs the Python package {module.split('.')[0]}, which is not installed: "
            f"pip install 'batchgen[{extra}]'"
        ) from None


def is_url(out: str) -> bool:
    return "://" in out and not out.startswith("file://")


class Target:
    """Files of one export, written aside and swapped in by :meth:`commit`."""

    url: str
    # The marker of the export this one will replace (its format, rows, ...); None: none.
    previous: dict[str, Any] | None = None

    def open(self, rel: str) -> IO[bytes]:
        raise NotImplementedError

    def local_path(self, rel: str) -> str | None:
        """Where ``rel`` goes on this machine's disk, for a writer that opens files itself
        (pyarrow's native files skip a Python file object per write); None when remote."""
        return None

    def place(self, src: Path, rel: str) -> str:
        """Put a copy of ``src`` at ``rel``; returns "linked", "copied" or "uploaded"."""
        raise NotImplementedError

    def put(self, data: bytes, rel: str) -> str:
        """Write ``data`` (an image re-encoded for the export) at ``rel``."""
        with self.open(rel) as fh:
            fh.write(data)
        return "re-encoded"

    def commit(self, marker: dict[str, Any]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


def open_target(out: str) -> Target:
    if is_url(out):
        return RemoteTarget(out)
    return LocalTarget(Path(out.removeprefix("file://")))


def _read_marker(read: Callable[[], bytes]) -> dict[str, Any] | None:
    try:
        found = orjson.loads(read())
    except (OSError, orjson.JSONDecodeError):
        return None
    return found if isinstance(found, dict) else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    platform or the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


class LocalTarget(Target):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = str(path)
        if path.name in ("", ".", ".."):
            raise InputError(f"--out {path}: name a folder for the dataset, e.g. datasets/mine")
        if path.exists() and not path.is_dir():
            raise InputError(f"--out {path}: is a file, not a folder")
        if path.is_dir() and not (path / MARKER).is_file() and any(path.iterdir()):
            raise InputError(
                f"--out {path}: the folder holds files but no batchgen export; name a new or "
                "empty folder (an export replaces what was there)"
            )
        self.previous = _read_marker((path / MARKER).read_bytes) if path.is_dir() else None
        self._clean_stale()
        self.staging = path.with_name(f"{path.name}.partial-{os.getpid()}")
        try:
            self.staging.mkdir(parents=True)
        except FileExistsError:
            shutil.rmtree(self.staging)
            self.staging.mkdir()
        except OSError as exc:
            raise StorageError(f"cannot create {self.staging}: {exc.strerror}") from exc
        self._dirs: set[str] = set()
        self._can_link = True

    def _clean_stale(self) -> None:
        """An earlier export that was killed leaves ``PATH.partial-<pid>`` (remove it), or,
        between the two renames of a filesystem that cannot exchange, ``PATH.old-<pid>`` with
        nothing at ``PATH`` (put it back: it is the last whole dataset)."""
        parent = self.path.parent
        if not parent.is_dir():
            return
        for entry in sorted(parent.iterdir()):
            for kind in ("old", "partial"):
                pid = entry.name.removeprefix(f"{self.path.name}.{kind}-")
                if pid == entry.name or not pid.isdigit() or _pid_alive(int(pid)):
                    continue
                if kind == "old" and not self.path.exists():
                    log.warning("putting back %s as %s: an export was cut off", entry, self.path)
                    os.rename(entry, self.path)
                else:
                    log.warning("removing %s, left by an export that did not finish", entry)
                    shutil.rmtree(entry, ignore_errors=True)

    def _dst(self, rel: str) -> str:
        dst = os.path.normpath(os.path.join(self.staging, rel))
        if not dst.startswith(os.path.join(self.staging, "")):
            # Ids are checked where they are read; this is the last line of defence.
            raise StorageError(f"refusing to write {rel!r}: it is outside {self.staging}")
        parent = os.path.dirname(dst)
        if parent not in self._dirs:
            os.makedirs(parent, exist_ok=True)
            self._dirs.add(parent)
        return dst

    def open(self, rel: str) -> IO[bytes]:
        return open(self._dst(rel), "wb")

    def local_path(self, rel: str) -> str | None:
        return self._dst(rel)

    def place(self, src: Path, rel: str) -> str:
        dst = self._dst(rel)
        if self._can_link:
            try:
                os.link(src, dst)
                return "linked"
            except FileNotFoundError:
                raise
            except OSError as exc:
                # Another filesystem (EXDEV) or one without hard links: copy from now on.
                log.debug("cannot hard-link %s (%s); copying", src, exc)
                self._can_link = False
        # "xb": a copy never writes over a file that is there (a failed link was once followed
        # by a copy over an existing file, outside the staging folder).
        with open(src, "rb") as fin, open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        return "copied"

    def commit(self, marker: dict[str, Any]) -> None:
        (self.staging / MARKER).write_bytes(orjson.dumps(marker, option=orjson.OPT_INDENT_2))
        if self.path.exists() and _exchange(self.staging, self.path):
            shutil.rmtree(self.staging, ignore_errors=True)  # the old dataset, swapped out
            return
        old = self.path.with_name(f"{self.path.name}.old-{os.getpid()}")
        if self.path.exists():
            os.rename(self.path, old)
        os.rename(self.staging, self.path)
        shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


class RemoteTarget(Target):
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        protocol = url.split("://", 1)[0]
        fsspec = require("fsspec", _EXTRA_FOR.get(protocol, "s3"))
        try:
            fs, root = fsspec.core.url_to_fs(self.url)
        except ImportError:
            package = _PACKAGE_FOR.get(protocol)
            hint = (f"pip install 'batchgen[{_EXTRA_FOR[protocol]}]'" if protocol in _EXTRA_FOR
                    else f"pip install {package}" if package else "install its fsspec backend")
            raise InputError(f"--out {url}: {protocol}:// needs a package that is not "
                             f"installed: {hint}") from None
        except ValueError as exc:
            raise InputError(f"--out {url}: {exc}") from None
        self.fs: Any = fs
        self.root: str = root.rstrip("/")
        self.staging = f"{self.root}.partial-{os.getpid()}"
        try:
            existing = self._files(self.root)
        except OSError as exc:
            raise StorageError(f"--out {url}: {exc}") from exc
        if existing and MARKER not in existing:
            raise InputError(
                f"--out {url}: the prefix holds files but no batchgen export; name a new or "
                "empty prefix (an export replaces what was there)"
            )
        if MARKER in existing:
            self.previous = _read_marker(lambda: bytes(self.fs.cat_file(f"{self.root}/{MARKER}")))
        if self.fs.exists(self.staging):
            self.fs.rm(self.staging, recursive=True)

    def _files(self, root: str) -> set[str]:
        """Paths under ``root``, relative to it, listed afresh (fsspec caches listings)."""
        self.fs.invalidate_cache(root)
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return set()
        return {p[len(root) + 1:] for p in found if p.startswith(root + "/")}

    def open(self, rel: str) -> IO[bytes]:
        handle: IO[bytes] = self.fs.open(f"{self.staging}/{rel}", "wb")
        return handle

    def place(self, src: Path, rel: str) -> str:
        self.fs.put_file(str(src), f"{self.staging}/{rel}")
        return "uploaded"

    def commit(self, marker: dict[str, Any]) -> None:
        with self.fs.open(f"{self.staging}/{MARKER}", "wb") as fh:
            fh.write(orjson.dumps(marker, option=orjson.OPT_INDENT_2))
        new = sorted(self._files(self.staging) - {MARKER})
        old = self._files(self.root)
        if new:
            self.fs.copy([f"{self.staging}/{r}" for r in new], [f"{self.root}/{r}" for r in new])
        stale = sorted(old - set(new) - {MARKER})
        if stale:
            self.fs.rm([f"{self.root}/{r}" for r in stale])
        self.fs.copy(f"{self.staging}/{MARKER}", f"{self.root}/{MARKER}")
        self.fs.rm(self.staging, recursive=True)

    def abort(self) -> None:
        try:
            self.fs.rm(self.staging, recursive=True)
        except (OSError, FileNotFoundError):
            log.warning("could not remove the staging prefix %s", self.staging)
