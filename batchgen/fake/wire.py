"""What the fake's Files and Batch API share on the wire: the key, JSON answers, paging, time.

The service pages with opaque tokens; the fake's token names the last item shown, so deleting
items between pages never shifts or repeats one.
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

import orjson
from aiohttp import web

from .answers import bad_key, missing_key
from .faults import FakeConfig
from .validate import ApiError, invalid

_JSON_HEADERS = {"Content-Type": "application/json; charset=UTF-8"}


def rfc3339(epoch: float) -> str:
    stamp = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    body = data if isinstance(data, bytes) else orjson.dumps(data)
    h = _JSON_HEADERS if headers is None else {**_JSON_HEADERS, **headers}
    return web.Response(body=body, status=status, headers=h)


def error_response(err: ApiError, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(err.body(), err.code, {**err.headers, **(headers or {})})


def check_key(request: web.Request, cfg: FakeConfig) -> None:
    """The key as the service takes it: header ``x-goog-api-key`` or query ``key``."""
    key = request.headers.get("x-goog-api-key") or request.query.get("key")
    if not key:
        raise missing_key()
    if key != cfg.api_key:
        raise bad_key()


def encode_page_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode("ascii")


def decode_page_token(token: str) -> int | None:
    """The sequence number a page ends at; None for no token. Bad tokens are a 400."""
    if not token:
        return None
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if text.startswith("after:"):
            return int(text[6:])
    except (ValueError, UnicodeError):
        pass
    raise invalid("Invalid page token.")


def page_size(request: web.Request, default: int, maximum: int) -> int:
    raw = request.query.get("pageSize") or request.query.get("page_size")
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        raise invalid(f"Invalid value for pageSize: {raw!r}") from None
    if n < 0:
        raise invalid("pageSize must not be negative.")
    return min(n, maximum) if n else default
