"""Answer images at real pixel sizes and a chosen byte size, distinct in every answer.

A real 1K answer is a 1024 x 1024 PNG of 1-2 MB, a 2K one about 6 MB (shared/gemini-api.md,
"Sizes that matter at scale"). Encoding such a PNG per request would make the fake the
bottleneck of every benchmark, and handing out one cached image would let compression and
deduplication flatter whatever stores them. So each image is a cached base plus a fresh tail:

- the top rows are one flat colour (deflated, a few KB), then rows of random pixels with as few
  random bits a byte as reach the size (deflated, so decoding them costs what decoding a real
  PNG of that size costs, about 3:1; all 8 bits, in stored blocks, when only noise is that
  big), so the file comes to the byte size asked for; made once per (width, height, byte
  size), with the base64 of everything before the tail;
- the last rows (:data:`DISTINCT_BYTES` of them, at least one row) are fresh random pixels in
  every answer, in their own IDAT chunk, so no two answers share a sha256 and each costs about
  0.5 ms to make (random bytes, a CRC, an Adler-32 continued from the cached one, the tail's
  base64) instead of encoding megabytes.

The base's byte length is made a multiple of three, so its cached base64 followed by the tail's
base64 is the base64 of the whole file. Pillow decodes the result (tests check it); it is a
valid PNG, one zlib stream across two IDAT chunks, as the format allows.
"""

from __future__ import annotations

import math
import random
import struct
import threading
import zlib
from dataclasses import dataclass

# Fresh random bytes at the end of every image: far more than any dedup block or compressor
# window would need to tell two images apart, and cheap to make.
DISTINCT_BYTES = 64 * 1024
_STORED_MAX = 65535  # a stored deflate block holds at most this many bytes
_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _stored_blocks(raw: bytes, *, final: bool) -> bytes:
    """``raw`` as stored deflate blocks; the last one marked final when ``final``."""
    out = bytearray()
    n = len(raw)
    for start in range(0, max(n, 1), _STORED_MAX):
        piece = raw[start : start + _STORED_MAX]
        last = final and start + _STORED_MAX >= n
        out += bytes((1 if last else 0,)) + struct.pack("<HH", len(piece), len(piece) ^ 0xFFFF)
        out += piece
    return bytes(out)


def _random_rows(rng: random.Random, rows: int, width: int, bits: int = 8) -> bytes:
    """``rows`` scanlines of random RGB (``bits`` random bits a byte), each led by filter
    byte 0 (None)."""
    if rows <= 0:
        return b""
    noise = rng.randbytes(rows * width * 3)
    if bits < 8:  # keep the top bits: the values spread over the whole range, darker or not
        mask = (0xFF << (8 - bits)) & 0xFF
        noise = noise.translate(bytes(i & mask for i in range(256)))
    step = width * 3
    return b"".join(b"\x00" + noise[i : i + step] for i in range(0, len(noise), step))


@dataclass(frozen=True, slots=True)
class _Base:
    width: int
    height: int
    distinct_rows: int
    head: bytes  # signature, IHDR and the first IDAT chunk: a multiple of 3 bytes long
    head_b64: bytes
    carry: bytes  # the 0-2 bytes of the zlib stream that start the per-image IDAT chunk
    adler: int  # Adler-32 of every scanline before the distinct rows


class SizedPng:
    """Makes (once) the base of one pixel and byte size; :meth:`fresh` makes each image."""

    def __init__(self, width: int, height: int, target_bytes: int, seed: int) -> None:
        self._base = _make_base(width, height, target_bytes, seed)
        self._rng = random.Random(seed ^ 0x5EED)
        self._lock = threading.Lock()

    @property
    def size(self) -> tuple[int, int]:
        return self._base.width, self._base.height

    def fresh(self) -> tuple[bytes, bytes]:
        """A new image: (its bytes, their base64), distinct from every other one made."""
        b = self._base
        with self._lock:  # random.Random is not to be shared across threads unguarded
            rows = _random_rows(self._rng, b.distinct_rows, b.width)
        stream = b.carry + _stored_blocks(rows, final=True)
        stream += struct.pack(">I", zlib.adler32(rows, b.adler))
        tail = _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
        return b.head + tail, b.head_b64 + _b64(tail)


def _b64(data: bytes) -> bytes:
    import binascii

    return binascii.b2a_base64(data, newline=False)


def _make_base(width: int, height: int, target: int, seed: int) -> _Base:
    rng = random.Random(seed)
    row = 1 + 3 * width
    distinct = max(1, min(height, math.ceil(DISTINCT_BYTES / row)))
    rows = height - distinct
    fixed = 8 + 25 + 12 + 12 + 12 + 4 + 5 * (distinct * row // _STORED_MAX + 1)
    want = target - fixed - distinct * row  # what the base's deflate stream should come to
    # Noise of k bits a byte deflates to about k/8 of its size, and inflating it is real work,
    # as it is for a real PNG: the fewest bits that can reach the size, mixed with flat rows.
    bits = next((k for k in range(1, 8) if rows * row * k / 8 * 0.97 >= want), 8)
    if bits == 8:  # only incompressible noise is that big: stored blocks, as a PNG of noise
        noisy = max(0, min(rows, want // row))
        flat = _deflated(_flat_raw(rows - noisy, width))
        noise = _random_rows(rng, noisy, width)
        stream = flat + (_stored_blocks(noise, final=False) if noise else b"")
        raw_adler = zlib.adler32(noise, zlib.adler32(_flat_raw(rows - noisy, width)))
    else:
        pool = _random_rows(random.Random(seed), rows, width, bits)
        noisy = min(rows, max(0, round(want / (row * bits / 8))))
        for _ in range(4):  # the deflated size is nearly linear in the noisy rows: aim, adjust
            raw = _flat_raw(rows - noisy, width) + pool[: noisy * row]
            stream = _deflated(raw)
            per_row = max(1.0, len(stream) / max(1, noisy))
            step = round((want - len(stream)) / per_row)
            if abs(want - len(stream)) < row or not 0 <= noisy + step <= rows or step == 0:
                break
            noisy += step
        raw_adler = zlib.adler32(raw)
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    # Move 0-2 bytes of the stream to the per-image chunk so the head is a multiple of 3 long.
    cut = len(stream) - (len(_SIGNATURE) + len(ihdr) + 12 + len(stream)) % 3
    head = _SIGNATURE + ihdr + _chunk(b"IDAT", stream[:cut])
    assert len(head) % 3 == 0
    return _Base(width, height, distinct, head, _b64(head), stream[cut:], raw_adler)


def _flat_raw(rows: int, width: int) -> bytes:
    # A soft grey-blue, so a thumbnail shows where the flat part ends and the noise begins.
    return (b"\x00" + b"\x60\x80\xa0" * width) * rows


def _deflated(raw: bytes) -> bytes:
    """The zlib header and ``raw`` deflated, ending byte-aligned (a full flush), so stored
    blocks written by hand can follow in the same stream."""
    c = zlib.compressobj(1, zlib.DEFLATED, zlib.MAX_WBITS)
    return c.compress(raw) + c.flush(zlib.Z_FULL_FLUSH)
