"""What the fake knows of conversations (issue 22): a distinct ``thoughtSignature`` per answer,
a stamp in every image it makes, and, per request, which of both came back.

The service cannot be asked what a request carried; the fake can, so a test proves that a
child was sent its own parent's image (the stamp names the answer and its prompt) and that an
edit sent back the signatures of the answers it continues, exactly as they were issued.

The stamp is a PNG ``tEXt`` chunk put in before ``IEND``: every decoder skips it, the pixels are
the cached picture's, and it survives the client's copy to disk and its upload as a file.
"""

from __future__ import annotations

import base64
import binascii
import struct
import threading
import zlib
from collections.abc import Callable
from typing import Any

import orjson

from .images import EncodedImage

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAMP_KEY = b"batchgen-fake"
_IEND = 12  # length + "IEND" + crc: the last chunk of every PNG
_SIG_PREFIX = b"fake-thought-signature:"
# Read at most this much of a referenced file to look for its stamp (the fake's own images
# are small; a big photo is nobody's answer).
STAMP_READ_MAX = 64 * 1024 * 1024


def stamp_png(data: bytes, payload: dict[str, Any]) -> bytes:
    """``data`` with a tEXt chunk holding ``payload``; not a PNG: unchanged."""
    if not data.startswith(PNG_MAGIC) or data[-_IEND + 4:-4] != b"IEND":
        return data
    body = STAMP_KEY + b"\x00" + orjson.dumps(payload)
    chunk = struct.pack(">I", len(body)) + b"tEXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    return data[:-_IEND] + chunk + data[-_IEND:]


def read_stamp(data: bytes) -> dict[str, Any] | None:
    """The payload of the fake's stamp in an image, or None (not one of its images)."""
    at = data.rfind(b"tEXt" + STAMP_KEY + b"\x00")
    if at < 4:
        return None
    (length,) = struct.unpack(">I", data[at - 4:at])
    start = at + 4 + len(STAMP_KEY) + 1
    try:
        found = orjson.loads(data[start:at + 4 + length])
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def unstamped(data: bytes) -> bytes:
    """``data`` without the fake's stamp: the picture alone, to compare two answers' bytes."""
    at = data.rfind(b"tEXt" + STAMP_KEY + b"\x00")
    if at < 4:
        return data
    (length,) = struct.unpack(">I", data[at - 4:at])
    return data[:at - 4] + data[at + 8 + length:]


class Conversations:
    """The signatures the fake issued (answer number -> prompt), and what requests carried."""

    def __init__(self, salt: int) -> None:
        self._lock = threading.Lock()
        self._next = 0
        self._salt = salt
        self._issued: dict[str, int] = {}

    def clear(self) -> None:
        with self._lock:
            self._issued.clear()

    def issue(self) -> tuple[int, str]:
        """A new answer's number and its signature: opaque, long, never issued before."""
        with self._lock:
            self._next += 1
            n = self._next
            raw = _SIG_PREFIX + f"{self._salt}:{n}:".encode() + bytes(range(7, 250, 3))
            sig = base64.b64encode(raw).decode("ascii")
            self._issued[sig] = n
        return n, sig

    def stamped(self, final: EncodedImage, req: Any, thinking: bool
                ) -> tuple[EncodedImage, dict[str, str]]:
        """A new answer's image, stamped with its number and prompts, and the signature its
        parts carry (none from a model that does not think)."""
        number, signature = self.issue()
        turns = conversation(req.contents)[0]
        last: list[str] = next((t["texts"] for t in reversed(turns) if t["role"] == "user"), [])
        stamp = {"answer": number, "prompt": req.prompt, "turn_prompt": "\n".join(last)}
        data = stamp_png(final.data, stamp)
        image = EncodedImage.of(data, final.mime_type, final.width, final.height)
        return image, {"thoughtSignature": signature} if thinking else {}

    def seen(self, req: Any, read_uri: Callable[[str], bytes | None]) -> dict[str, Any]:
        """What a request carried, for ``FakeStats.requests_seen``: its turns, the signatures
        of ours that came back (by answer number) and others, and the images of ours it held."""
        turns, signatures, images = conversation(req.contents)
        back: list[int] = []
        foreign = 0
        for sig in signatures:
            n = self._issued.get(sig)
            if n is None:
                foreign += 1
            else:
                back.append(n)
        carried: list[dict[str, Any]] = []
        for turn, role, b64, uri in images:
            data: bytes | None = None
            if b64 is not None:
                try:
                    data = binascii.a2b_base64(b64)
                except (binascii.Error, ValueError):
                    data = None
            elif uri is not None:
                data = read_uri(uri)
            stamp = read_stamp(data) if data else None
            if stamp is not None:
                carried.append({**stamp, "turn": turn, "role": role})
        return {**req.extras(), "turns": turns, "signatures_back": back,
                "foreign_signatures": foreign, "carried": carried}


Image = tuple[int, str, "str | None", "str | None"]


def conversation(contents: list[Any]) -> tuple[list[dict[str, Any]], list[str], list[Image]]:
    """A request's ``contents`` (already checked by validate): per turn its role, texts (not
    thoughts) and counts; every thoughtSignature; every image as (turn, role, base64, URI)."""
    turns: list[dict[str, Any]] = []
    signatures: list[str] = []
    images: list[Image] = []
    for ci, content in enumerate(contents):
        role = content.get("role", "user")
        turn: dict[str, Any] = {"role": role, "texts": [], "images": 0, "signatures": 0}
        turns.append(turn)
        for part in content.get("parts") or ():
            text = part.get("text")
            if isinstance(text, str) and not part.get("thought"):
                turn["texts"].append(text)
            sig = part.get("thoughtSignature", part.get("thought_signature"))
            if isinstance(sig, str):
                signatures.append(sig)
                turn["signatures"] += 1
            blob = part.get("inlineData", part.get("inline_data"))
            ref = part.get("fileData", part.get("file_data"))
            if isinstance(blob, dict):
                images.append((ci, role, str(blob.get("data") or ""), None))
            elif isinstance(ref, dict):
                images.append((ci, role, None, str(ref.get("fileUri", ref.get("file_uri", "")))))
            else:
                continue
            turn["images"] += 1
    return turns, signatures, images
