"""``--max-side``, ``--image-format``, ``--quality``: images resized and re-encoded on export.

As img2dataset's ``resize_mode="keep_ratio_largest"`` with ``resize_only_if_bigger``: the longer
side is brought down to ``--max-side`` keeping the aspect ratio, and an image already within it is
left its size (a generated image is never upscaled). ``--image-format`` re-encodes to JPEG, PNG
or WebP at ``--quality`` (JPEG and WebP, 95 by default as img2dataset's ``encode_quality``; PNG
is lossless and takes none). An image that needs neither (within the size, already in the
format, no ``--quality`` asked) is exported as it is, hard-linked as without these options, so
it loses nothing to a second encoding.

Pillow releases the GIL while it decodes, resizes and encodes, so one thread per core uses them.
Rows go through a bounded window (:func:`transformed`): at most ``2 x workers`` images are in
memory at once, however many the folder holds, and they come out in the order they went in, so
the dataset is the same on every export.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import io
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import StorageError
from .source import Row

DEFAULT_QUALITY = 95
# Threads: one per core, as Pillow's work is CPU-bound (on 2 cores 1, 2, 4 and 8 threads gave
# 61, 120, 122 and 123 img/s: bench/RESULTS.md); at most 8, which bounds the images in memory.
MAX_WORKERS = 8


class ImageFormat(str, enum.Enum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP = "webp"

    @property
    def ext(self) -> str:
        return "jpg" if self is ImageFormat.JPEG else self.value

    @property
    def mime_type(self) -> str:
        return f"image/{self.value}"


_OF_EXT = {"jpg": ImageFormat.JPEG, "jpeg": ImageFormat.JPEG, "png": ImageFormat.PNG,
           "webp": ImageFormat.WEBP}


@dataclass(frozen=True, slots=True, kw_only=True)
class Reencode:
    """What to do to each image::

        Reencode(max_side=1024, fmt=ImageFormat.JPEG, quality=90)

    ``quality`` None: 95, and an image already in the format is not encoded again for it.
    """

    max_side: int | None = None
    fmt: ImageFormat | None = None
    quality: int | None = None

    @property
    def active(self) -> bool:
        return self.max_side is not None or self.fmt is not None or self.quality is not None


def workers() -> int:
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def encode_row(row: Row, opts: Reencode) -> Row:
    """The row with its image resized and re-encoded, when it needs to be (in a worker thread).

    A row without an image, or whose file is gone, comes back as it is: the writer reports it
    missing, as without these options.
    """
    if row.image is None:
        return row
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(row.image) as im:
            source = _OF_EXT.get(row.ext)
            fmt = opts.fmt or source or ImageFormat.PNG
            big = opts.max_side is not None and max(im.size) > opts.max_side
            recompress = opts.quality is not None and fmt is not ImageFormat.PNG
            if not big and fmt is source and not recompress:
                return row
            im.load()
            out = im
            if big:
                assert opts.max_side is not None
                out = im.copy()
                out.thumbnail((opts.max_side, opts.max_side), Image.Resampling.LANCZOS)
            data = _encode(out, fmt, opts.quality or DEFAULT_QUALITY, im.info.get("icc_profile"))
            width, height = out.size
    except FileNotFoundError:
        return row
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise StorageError(f"{row.image}: cannot read the image to re-encode it: {exc}") from exc
    columns = {**row.columns, "width": width, "height": height, "mime_type": fmt.mime_type,
               "sha256": hashlib.sha256(data).hexdigest()}
    return dataclasses.replace(row, columns=columns, ext=fmt.ext, data=data)


def _encode(im: object, fmt: ImageFormat, quality: int, icc: object) -> bytes:
    from PIL import Image

    assert isinstance(im, Image.Image)
    buf = io.BytesIO()
    extra = {"icc_profile": icc} if isinstance(icc, bytes) else {}
    if fmt is ImageFormat.JPEG:
        # JPEG has no alpha: img2dataset drops it too.
        im = im if im.mode in ("RGB", "L") else im.convert("RGB")
        im.save(buf, "JPEG", quality=quality, **extra)
    elif fmt is ImageFormat.WEBP:
        im.save(buf, "WEBP", quality=quality, **extra)
    else:
        im = im if im.mode in ("RGB", "RGBA", "L", "LA", "P", "I", "1") else im.convert("RGBA")
        im.save(buf, "PNG", **extra)
    return buf.getvalue()


def transformed(rows: Iterator[Row], opts: Reencode, n_workers: int | None = None
                ) -> Iterator[Row]:
    """``rows`` with their images re-encoded in a bounded pool, in order."""
    if not opts.active:
        yield from rows
        return
    size = n_workers or workers()
    window: deque[Future[Row]] = deque()
    pool = ThreadPoolExecutor(size, thread_name_prefix="batchgen-encode")
    try:
        for row in rows:
            window.append(pool.submit(encode_row, row, opts))
            if len(window) >= 2 * size:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
