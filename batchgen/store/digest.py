"""An image's sha256, off the event loop when the image is big (issue 25)."""

from __future__ import annotations

import asyncio

from ..folder.records import sha256_hex

# Images at least this big are hashed on a worker thread (hashlib lets go of the GIL), so the
# event loop reads other answers meanwhile; smaller ones cost less than the thread hop.
HASH_OFF_LOOP_BYTES = 256 * 1024


async def image_sha256(data: bytes) -> str:
    """The image's sha256 (hex), off the event loop when it is big (issue 25)."""
    if len(data) < HASH_OFF_LOOP_BYTES:
        return sha256_hex(data)
    return await asyncio.to_thread(sha256_hex, data)
