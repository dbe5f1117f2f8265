"""Reference images: telling images from impostors, pinning their content, fitting requests.

The manifest validator resolves every reference through :class:`ReferenceResolver` (no network,
no decoding: only a stat, a sniff and one hash per distinct file). The client later turns a
:class:`~batchgen.spec.Reference` into bytes with :func:`load_reference_bytes`, which shrinks a
file that would push the request over the endpoint's size limit.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import logging
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageOps, UnidentifiedImageError

from batchgen.errors import ReferenceError_
from batchgen.manifest import hints
from batchgen.spec import Reference

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# JSON framing, the prompt text and headers ride along with the base64 payload; keep room for them.
REQUEST_OVERHEAD_BYTES = 64 * 1024
JPEG_QUALITY = 90
# Below this the image says nothing useful to the model; refuse rather than send a smudge.
_MIN_SIDE = 16
_SNIFF_BYTES = 64
# Shrunk references are kept for reuse (a dataset may name one large photo on every row), up to
# this many bytes in all, least recently used first out.
SHRINK_CACHE_BYTES = 64 * 1024 * 1024

_HEIC_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1", b"heif"})
# AVIF shares the HEIF container (often with major brand mif1) but the API does not take it.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def sniff_image_type(data: bytes | bytearray) -> str | None:
    """The MIME type the bytes really are, or None when they are not an image the API accepts.

    File names and declared types lie (JPEG bytes labelled image/png are common), so only the
    magic bytes count.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _sniff_heif(data)
    return None


def _sniff_heif(data: bytes | bytearray) -> str | None:
    box_size = int.from_bytes(data[0:4], "big")
    major = data[8:12]
    end = min(len(data), box_size if box_size >= 16 else 16)
    compatible = {data[i : i + 4] for i in range(16, end - 3, 4)}
    if major in _AVIF_BRANDS:
        return None
    if major in _HEIC_BRANDS:
        return "image/heic"
    if major in _HEIF_BRANDS:
        if compatible & _AVIF_BRANDS and not compatible & _HEIC_BRANDS:
            return None
        return "image/heic" if compatible & _HEIC_BRANDS else "image/heif"
    return None


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


class ReferenceProblem(ValueError):
    """A reference the manifest cannot use; the message is meant for the user as is."""


def _hash_file(path: str) -> tuple[str, bytes]:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
        digest.update(head)
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest(), head


_StatKey = tuple[str, int, int]


class ReferenceResolver:
    """Turns the strings a manifest lists into pinned :class:`Reference` objects.

    A dataset manifest may name the same photo on a million rows, so both the path resolution and
    the content hash are cached: by source string, and by (resolved path, mtime_ns, size) so an
    edited file is hashed again. Equal references come back as the same object, which keeps the
    job specs that share them cheap.
    """

    def __init__(self, base_dir: Path) -> None:
        self._base = str(base_dir)
        self._resolved: dict[str, str] = {}
        self._by_source: dict[str, tuple[_StatKey | None, Reference]] = {}
        self._by_stat: dict[_StatKey, tuple[str, str] | str] = {}
        self._decodable: dict[str, str | None] = {}
        self._listings: dict[str, list[str] | None] = {}  # folders read for "did you mean"

    def resolve(self, source: str) -> Reference:
        """Raises :class:`ReferenceProblem` for anything that cannot be sent."""
        cached = self._by_source.get(source)
        if cached is not None and cached[0] is None:
            return cached[1]  # a URL: nothing on disk can change it
        if is_url(source):
            return self._resolve_url(source)
        if "://" in source:
            raise ReferenceProblem(f"unsupported URL scheme in {source!r}: use http(s) or a path")
        path = self._resolved.get(source)
        if path is None:
            joined = os.path.join(self._base, os.path.expanduser(source))
            path = self._resolved[source] = os.path.realpath(joined)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            near = hints.near_file(source, path, self._listings)
            raise ReferenceProblem(f"file not found: {source} (looked at {path})"
                                   + (f"; did you mean {near}?" if near else "")) from None
        except OSError as exc:
            raise ReferenceProblem(f"cannot read {source}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ReferenceProblem(f"not a regular file: {source}")
        key = (path, st.st_mtime_ns, st.st_size)
        if cached is not None and cached[0] == key:
            return cached[1]
        info = self._by_stat.get(key)
        if info is None:
            info = self._by_stat[key] = self._inspect(source, path)
        if isinstance(info, str):
            raise ReferenceProblem(info)
        sha, mime = info
        ref = Reference(
            source=source, path=Path(path), sha256=sha, mime_type=mime, size_bytes=st.st_size
        )
        self._by_source[source] = (key, ref)
        return ref

    def _resolve_url(self, source: str) -> Reference:
        rest = source.split("://", 1)[1]
        if not rest or rest.startswith("/") or any(c.isspace() for c in source):
            raise ReferenceProblem(f"malformed URL: {source!r}")
        ref = Reference(source=source, url=source)
        self._by_source[source] = (None, ref)
        return ref

    @staticmethod
    def _inspect(source: str, path: str) -> tuple[str, str] | str:
        """(sha256, mime) or the problem, so a bad file shared by many rows is read only once."""
        try:
            sha, head = _hash_file(path)
        except OSError as exc:
            return f"cannot read {source}: {exc.strerror or exc}"
        mime = sniff_image_type(head)
        if mime is None:
            return (
                f"not an image the API accepts: {source} "
                "(PNG, JPEG, WebP, HEIC or HEIF, judged by the file's content, not its name)"
            )
        bomb = _pixel_problem(path)
        if bomb is not None:
            return f"{source}: {bomb}"
        logger.debug("hashed reference %s -> %s (%s)", path, sha[:12], mime)
        return sha, mime

    def decodable(self, ref: Reference) -> bool:
        """Whether Pillow can open the file, i.e. whether it could be shrunk if it must be."""
        return self.decode_problem(ref) is None

    def decode_problem(self, ref: Reference) -> str | None:
        """Why the file could not be shrunk if it must be (None: it can), from its header."""
        if ref.path is None:
            return None
        if ref.sha256 not in self._decodable:
            self._decodable[ref.sha256] = _open_problem(ref.path)
        return self._decodable[ref.sha256]


_UNDECODABLE = "Pillow cannot decode it"


def _open_problem(source: Path | io.BytesIO) -> str | None:
    try:
        with Image.open(source) as img:
            img.size  # noqa: B018 - opening parses the header, which is the check
    except Image.DecompressionBombError as exc:
        return f"too large to decode ({exc})"
    except (OSError, UnidentifiedImageError, ValueError):
        return _UNDECODABLE
    return None


def _pixel_problem(path: str) -> str | None:
    """A pixel bomb (a few KB of PNG claiming 20000 x 10000), from the header alone: whatever its
    size in bytes, the service or the shrinker would have to decode it; then whether the rest of
    the file is a whole image. Files Pillow cannot read (HEIC without a plugin) are left to the
    service, which takes them."""
    why = _open_problem(Path(path))
    if why == _UNDECODABLE:
        return None
    return why or whole_image_problem(Path(path))


# A full decode holds every pixel (4 bytes each): up to this many it is done, which covers
# every output size (4K at 21:9 is 17.0 M) and a 24 MP camera photo in 100 MB. A larger PNG
# is checked by its chunks' CRCs through IEND instead; a JPEG is always decoded whole at 1/8
# scale (libjpeg's DCT scaling still reads every scan, in 1/64 of the memory).
WHOLE_DECODE_MAX_PIXELS = 25_000_000


def whole_image_problem(source: Path | bytes | bytearray) -> str | None:
    """Why the file or bytes are not one whole image (cut short, torn, corrupt), or None.

    The first bytes and the header say what an image claims to be; only decoding it says that
    the rest is there. A truncated PNG with a valid header would otherwise be uploaded or sent,
    and the service would refuse or, worse, bill for a request made from half a picture.
    """
    def opened() -> Image.Image:
        return Image.open(source if isinstance(source, Path) else io.BytesIO(source))

    try:
        with opened() as img:
            fmt, pixels = img.format, img.width * img.height
            if fmt == "PNG":
                img.verify()  # every chunk's CRC, through IEND
            elif fmt == "JPEG":
                img.draft("RGB", (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
                return None
        if pixels <= WHOLE_DECODE_MAX_PIXELS:
            with opened() as img:
                img.load()
    except Image.DecompressionBombError as exc:
        return f"too large to decode ({exc})"
    except (OSError, EOFError, SyntaxError, UnidentifiedImageError, ValueError) as exc:
        return f"not a whole image: cut short or corrupt (Pillow: {exc})"
    return None


async def in_shrink_thread(fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """Run a decode-and-shrink in the one thread that does them all.

    Shrinking decodes the whole image (4 bytes a pixel: 100 MB for a 25 MP photo). With one
    thread per worker, 8 workers would hold 8 decoded images at once, and glibc keeps each
    thread's freed memory in that thread's arena, so the peak stays. One thread bounds what
    reference preparation holds to one decoded image, whatever the concurrency; shrunk results
    are cached (below), so a photo used on many rows is shrunk once. bench/RESULTS.md has the
    measured peak.
    """
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_SHRINKER, functools.partial(fn, *args, **kwargs))


_SHRINKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batchgen-shrink")


class _ShrinkCache:
    """Shrunk references by (sha256, byte cap), bounded in bytes; shared by worker threads."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: tuple[str, int], data: bytes) -> None:
        if len(data) > self.limit // 4:
            return  # one entry must not evict everything else
        with self._lock:
            if key in self._items:
                return
            self._items[key] = data
            self._size += len(data)
            while self._size > self.limit:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)


_shrunk = _ShrinkCache(SHRINK_CACHE_BYTES)


def request_bytes(refs: Sequence[Reference]) -> int:
    """Estimated request size: base64 inflates by 4/3; URL references count as unknown (0)."""
    return sum(r.size_bytes for r in refs) * 4 // 3 + REQUEST_OVERHEAD_BYTES


def reference_budget(refs: Sequence[Reference], max_request_bytes: int) -> int | None:
    """The per-reference byte cap for :func:`load_reference_bytes`, or None if all fit as they are.

    Splitting the budget evenly means only files above their share get re-encoded, and the total
    then fits whatever the mix of sizes.
    """
    if not refs or request_bytes(refs) <= max_request_bytes:
        return None
    return max(1024, (max_request_bytes * 3 // 4 - REQUEST_OVERHEAD_BYTES) // len(refs))


def load_reference_bytes(ref: Reference, *, max_bytes: int | None) -> tuple[bytes, str]:
    """(bytes, mime type decided from the bytes) for a local reference, shrunk to ``max_bytes``.

    Raises :class:`~batchgen.errors.ReferenceError_` when the file is gone, changed since the
    manifest pinned it (the job id would be a lie), is not an image, or cannot be made small enough.
    """
    if ref.path is None:
        raise ReferenceError_(f"{ref.source}: URL references are fetched by the client")
    if max_bytes is not None and ref.sha256 and ref.size_bytes > max_bytes:
        cached = _shrunk.get((ref.sha256, max_bytes))
        if cached is not None:
            return cached, "image/jpeg"
    try:
        data = ref.path.read_bytes()
    except OSError as exc:
        raise ReferenceError_(f"cannot read reference {ref.source}: {exc}") from exc
    if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ReferenceError_(f"reference {ref.source} changed since the manifest was validated")
    mime = sniff_image_type(data)
    if mime is None:
        raise ReferenceError_(f"reference {ref.source} is not a PNG, JPEG, WebP, HEIC or HEIF")
    if max_bytes is None or len(data) <= max_bytes:
        return data, mime
    shrunk = shrink_image_bytes(data, max_bytes, name=ref.source)
    if ref.sha256:
        _shrunk.put((ref.sha256, max_bytes), shrunk)
    logger.info(
        "shrank reference %s from %d to %d bytes to fit the request limit",
        ref.source,
        len(data),
        len(shrunk),
    )
    return shrunk, "image/jpeg"


def shrink_image_bytes(
    data: bytes | bytearray, max_bytes: int, *, name: str = "image"
) -> bytes:
    """Re-encode as JPEG (quality 90), downscaling until the result is at most ``max_bytes``.

    Public so the client can apply the same rule to images it fetched from URLs.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            # Re-encoding drops EXIF, so bake the orientation in or the model sees it sideways.
            # In place: a second copy of the pixels is what shrinking can least afford.
            ImageOps.exif_transpose(img, in_place=True)
            return _encode_under(_flatten(img), max_bytes, name)
    except Image.DecompressionBombError as exc:
        raise ReferenceError_(f"{name} is too large to decode and shrink: {exc}") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ReferenceError_(f"cannot decode {name} to shrink it: {exc}") from exc


def _encode_under(img: Image.Image, max_bytes: int, name: str) -> bytes:
    scale = 1.0
    for _ in range(12):
        size = (max(_MIN_SIDE, round(img.width * scale)), max(_MIN_SIDE, round(img.height * scale)))
        candidate = img if size == img.size else img.resize(size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        candidate.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
        del candidate
        out = buf.getvalue()
        if len(out) <= max_bytes:
            return out
        if size == (_MIN_SIDE, _MIN_SIDE):
            break
        # JPEG size grows roughly with pixel count; aim a little under so few passes are needed.
        scale *= min(0.9, (max_bytes / len(out)) ** 0.5 * 0.95)
    raise ReferenceError_(f"cannot shrink {name} below {max_bytes} bytes")


def _flatten(img: Image.Image) -> Image.Image:
    """JPEG has no alpha: composite onto white so transparent areas don't turn black."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img if img.mode in ("RGB", "L") else img.convert("RGB")
