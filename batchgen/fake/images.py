"""Images the fake server hands out, made once and cached.

Benchmarks push thousands of requests a second through the fake, so nothing here may encode a
PNG per request: every image is keyed by what makes it look different (kind, format, pixel size,
colour bucket) and kept with its base64 text, which is what the JSON answer actually carries.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageDraw

from batchgen import spec

from .sized import SizedPng

logger = logging.getLogger(__name__)

# Few enough that the caches stay small, many enough that two prompts rarely look alike.
COLOUR_BUCKETS = 64
SMALL_LONG_SIDE = 64


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """Encoded bytes plus their base64, so a response only has to splice a string in."""

    data: bytes
    # Empty for a sized image (:mod:`.sized`): its base64 is only ever spliced in as bytes.
    b64_text: str
    mime_type: str
    width: int
    height: int
    # The same base64 as bytes, for splicing big images into an encoded body (see app.py).
    b64_bytes: bytes = b""

    @property
    def b64(self) -> str:
        return self.b64_text or self.b64_bytes.decode("ascii")

    @classmethod
    def of(cls, data: bytes, mime_type: str, width: int, height: int) -> EncodedImage:
        b64 = base64.b64encode(data)
        return cls(data, b64.decode("ascii"), mime_type, width, height, b64)


def colour_bucket(prompt: str) -> int:
    # crc32 rather than hash(): stable across processes (PYTHONHASHSEED) and fast.
    return zlib.crc32(prompt.encode("utf-8", "surrogatepass")) % COLOUR_BUCKETS


def bucket_colour(bucket: int, shift: int = 0) -> tuple[int, int, int]:
    """A saturated colour per bucket; ``shift`` moves interim images away from the final one."""
    hue = ((bucket * 360 // COLOUR_BUCKETS) + shift * 137) % 360
    # Plain HSV->RGB at full saturation/value, kept local to avoid colorsys float noise.
    h = hue / 60.0
    x = int(255 * (1 - abs(h % 2 - 1)))
    sector = int(h) % 6
    rgb = [(255, x, 0), (x, 255, 0), (0, 255, x), (0, x, 255), (x, 0, 255), (255, 0, x)][sector]
    if shift:
        # Darken interim images as well, so they differ even when the hue lands close.
        rgb = (rgb[0] * 2 // 3, rgb[1] * 2 // 3, rgb[2] * 2 // 3)
    return rgb


def nearest_ratio(width: int, height: int) -> str:
    """The supported aspect ratio closest to a reference image's shape (log scale)."""
    if width <= 0 or height <= 0:
        return "1:1"
    target = math.log(width / height)
    best = "1:1"
    best_err = float("inf")
    for ratio in spec.ASPECT_RATIOS:
        w, h = spec.BASE_PIXELS[ratio]
        err = abs(math.log(w / h) - target)
        if err < best_err:
            best, best_err = ratio, err
    return best


def output_dims(ratio: str, size: str, full_size: bool) -> tuple[int, int]:
    """Pixel size of an answer image: the real table, or a thumbnail with the same shape."""
    w, h = spec.output_pixels(ratio, size)
    if full_size:
        return w, h
    scale = SMALL_LONG_SIDE / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _encode(img: Image.Image, fmt: str) -> EncodedImage:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=85)
        mime = "image/jpeg"
    else:
        # Level 1: solid-colour images shrink almost as well as at 6, in a fraction of the time.
        img.save(buf, "PNG", compress_level=1)
        mime = "image/png"
    data = buf.getvalue()
    return EncodedImage.of(data, mime, img.width, img.height)


def _draw(width: int, height: int, colour: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (width, height), colour)
    # A centred contrasting block so a thumbnail shows something and JPEG differs from flat PNG.
    inv = (255 - colour[0], 255 - colour[1], 255 - colour[2])
    ImageDraw.Draw(img).rectangle(
        (
            width // 4,
            height // 4,
            max(width // 4, width * 3 // 4 - 1),
            max(height // 4, height * 3 // 4 - 1),
        ),
        fill=inv,
    )
    return img


class ImageCache:
    """Thread-safe memo of every image the fake has made.

    Keys are small tuples, so even with every ratio, size and bucket in use the cache holds at
    most a few thousand thumbnails. Big images (``full_size``/``image_bytes``) have fewer keys:
    an ``image_bytes`` image's base is cached per pixel size and byte size only, and every
    answer gets fresh last rows (:mod:`.sized`), so no two answers are the same bytes.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[object, ...], EncodedImage] = {}
        self._sized: dict[tuple[int, int, int], SizedPng] = {}
        # Two threads (a ThreadedFakeServer plus a test) may ask at once; making twice is only
        # wasted work, but the lock keeps the cache from holding two copies of a 4 MB image.
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
            self._sized.clear()

    def final(
        self,
        ratio: str,
        size: str,
        bucket: int,
        *,
        full_size: bool = False,
        image_bytes: int | None = None,
        jpeg: bool = False,
    ) -> EncodedImage:
        """The result image. ``jpeg`` gives JPEG bytes (the server may still label them PNG)."""
        w, h = output_dims(ratio, size, full_size or image_bytes is not None)
        if image_bytes is not None and not jpeg:
            data, b64 = self._sized_png(w, h, image_bytes).fresh()
            return EncodedImage(data, "", "image/png", w, h, b64)
        fmt = "JPEG" if jpeg else "PNG"
        key: tuple[object, ...] = ("final", fmt, w, h, bucket)
        return self._get(key, lambda: _encode(_draw(w, h, bucket_colour(bucket)), fmt))

    def interim(
        self, ratio: str, bucket: int, index: int, *, full_size: bool = False
    ) -> EncodedImage:
        """A thought image: always at 1K scale (drafts are not the final resolution)."""
        w, h = output_dims(ratio, "1K", full_size)
        key = ("interim", w, h, bucket, index)
        return self._get(key, lambda: _encode(_draw(w, h, bucket_colour(bucket, index + 1)), "PNG"))

    def _sized_png(self, width: int, height: int, image_bytes: int) -> SizedPng:
        key = (width, height, image_bytes)
        found = self._sized.get(key)
        if found is None:
            with self._lock:
                found = self._sized.get(key)
                if found is None:
                    found = SizedPng(width, height, image_bytes, zlib.crc32(repr(key).encode()))
                    self._sized[key] = found
        return found

    def __len__(self) -> int:
        return len(self._cache) + len(self._sized)

    def _get(self, key: tuple[object, ...], make: Callable[[], EncodedImage]) -> EncodedImage:
        img = self._cache.get(key)
        if img is not None:
            return img
        with self._lock:
            img = self._cache.get(key)
            if img is None:
                img = make()
                self._cache[key] = img
                logger.debug("made %s: %d bytes", key, len(img.data))
            return img


def probe_image(raw: bytes) -> tuple[int, int] | None:
    """Width and height if Pillow can read the header, else None (the service's 400)."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            size = int(img.width), int(img.height)
            # verify() walks the chunks (PNG CRCs etc.) without decoding pixels: cheap, and it
            # catches a truncated or corrupted upload the way the service does.
            img.verify()
            return size
    except Exception:  # Pillow raises a zoo of types for junk input
        return None
