"""``batchgen review``: the run folder served to a browser on loopback, behind a random token.

Every request must carry the token (``?token=`` in the URL the command prints, or the
``X-Batchgen-Token`` header), compared in constant time: another local user, or a page in
another tab, can reach 127.0.0.1 but cannot guess it. A write (a POST) must carry it in the
header, which a cross-site form or ``<img>`` cannot set, and a same-origin ``Origin`` when the
browser sends one. Files are served only from inside the run folder's image folders, after
resolving symlinks. The page and its script and style come from this package: no CDN, nothing
fetched from anywhere else (the Content-Security-Policy says so to the browser too).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from ..errors import BatchgenError, InputError
from ..folder.layout import thumb_relpath
from ..folder.reviews import MAX_NOTE, Review, Verdict, append_reviews
from ..folder.runfolder import read_meta
from ..store.thumbs import make_thumb
from . import queries
from .index import FolderIndex

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Batchgen-Token"
# The folders of DIR a browser may read a file from: images, their thumbnails, the rejected
# images kept aside and the superseded ones. Not run.json, the ledger, or anything else.
SERVED_DIRS = frozenset({"images", "thumbs", "rejected", "superseded"})
_ASSETS = {"app.js": "text/javascript", "app.css": "text/css"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
# A refresh at most this often: a page polls, many thumbnails arrive at once, and each would
# otherwise stat three files.
_REFRESH_EVERY_S = 0.25
_THUMB_WORKERS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class ReviewSettings:
    run_dir: Path
    token: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port


def new_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def page_url(host: str, port: int, token: str) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={quote(token)}"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def safe_file(root: str, rel: str) -> str | None:
    """The real path of ``rel`` if it is a file inside one of :data:`SERVED_DIRS` of the run
    folder ``root`` (a real path) once every symlink is resolved; None otherwise."""
    if not rel or "\x00" in rel or os.path.isabs(rel):
        return None
    path = os.path.realpath(os.path.join(root, rel))
    if not path.startswith(os.path.join(root, "")):
        return None
    top = os.path.relpath(path, root).split(os.sep, 1)[0]
    if top not in SERVED_DIRS or not os.path.isfile(path):
        return None
    return path


class ReviewState:
    """The state one server shares between its handlers."""

    def __init__(self, run_dir: Path, token: str) -> None:
        self.run_dir = run_dir
        self.root = os.path.realpath(run_dir)
        self.token = token.encode()
        self.index = FolderIndex(run_dir)
        self.sel = queries.Selections(self.index)
        self._refreshed = 0.0
        self._counts: tuple[int, dict[str, Any]] | None = None
        self.thumb_slots = asyncio.Semaphore(_THUMB_WORKERS)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._refreshed >= _REFRESH_EVERY_S:
            self.index.refresh()
            self._refreshed = now

    def counts(self) -> dict[str, Any]:
        if self._counts is None or self._counts[0] != self.index.version:
            self._counts = (self.index.version, self.index.counts())
        return self._counts[1]

    def token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token)


_KEY = web.AppKey("review", ReviewState)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _forbidden() -> web.Response:
    return web.Response(status=403, text="forbidden: open the URL batchgen review printed\n")


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    state: ReviewState = request.app[_KEY]
    header = request.headers.get(TOKEN_HEADER)
    if request.method in ("GET", "HEAD"):
        ok = state.token_ok(header) or state.token_ok(request.query.get("token"))
    else:
        # The header alone: a form on another site can post to 127.0.0.1 with the token in
        # its action URL, but it cannot set a header.
        origin = request.headers.get("Origin")
        ok = state.token_ok(header) and (origin is None or origin == f"http://{request.host}")
    if not ok:
        response: web.StreamResponse = _forbidden()
    else:
        try:
            response = await handler(request)
        except queries.QueryError as exc:
            response = web.json_response({"error": str(exc)}, status=400)
        except (BatchgenError, OSError) as exc:  # a folder file unreadable: say so, keep serving
            log.warning("%s: %s", request.path, exc)
            response = web.json_response({"error": str(exc)}, status=500)
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def index_page(request: web.Request) -> web.Response:
    state: ReviewState = request.app[_KEY]
    import html

    text = resources.files(__package__).joinpath("assets/index.html").read_text("utf-8")
    token = html.escape(quote(state.token.decode()))
    title = html.escape(f"batchgen review: {state.run_dir.resolve().name}")
    body = text.replace("%%TOKEN%%", token).replace("%%TITLE%%", title)
    return web.Response(text=body, content_type="text/html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        raise web.HTTPNotFound()
    data = resources.files(__package__).joinpath(f"assets/{name}").read_bytes()
    return web.Response(body=data, content_type=_ASSETS[name])


async def api_state(request: web.Request) -> web.Response:
    state: ReviewState = request.app[_KEY]
    state.refresh()
    return _json({"version": state.index.version, "counts": state.counts(),
                  "vars": state.index.var_keys, "meta": state.index.meta_keys})


def _query_api(fn: Callable[[ReviewState, dict[str, str]], Any], slow: bool = False
               ) -> Handler:
    """A GET answered by ``fn``. A ``slow`` one (it visits every job: a second at 100,000)
    runs in a thread, so the cards and thumbnails asked meanwhile are not held up behind it;
    refreshes replace the index's lists and rows' fields whole, never resize what it reads."""
    async def handler(request: web.Request) -> web.StreamResponse:
        state: ReviewState = request.app[_KEY]
        state.refresh()
        query = dict(request.query)
        if slow:
            data = await asyncio.get_running_loop().run_in_executor(None, fn, state, query)
        else:
            data = fn(state, query)
        return _json(data)
    return handler


api_items = _query_api(lambda s, q: queries.page(s.index, s.sel, q))
api_facets = _query_api(lambda s, q: queries.facets(s.index, s.sel, q), slow=True)
api_grid = _query_api(lambda s, q: queries.grid(s.index, s.sel, q), slow=True)
api_position = _query_api(
    lambda s, q: {"position": queries.position(s.sel, q, q.get("id", ""))})


async def api_job(request: web.Request) -> web.Response:
    state: ReviewState = request.app[_KEY]
    state.refresh()
    row = state.index.rows.get(request.match_info["job_id"])
    if row is None:
        raise web.HTTPNotFound()
    data = queries.job(state.index, row)
    data["aside"] = _aside_files(state, row.job_id)
    return _json(data)


def _aside_files(state: ReviewState, job_id: str) -> list[str]:
    """The job's rejected images kept in rejected/ (its earlier images), as served paths."""
    from ..folder.layout import subdir
    from ..folder.verdicts import REJECTED_DIR

    folder = os.path.join(state.root, REJECTED_DIR, subdir(job_id))
    try:
        names = sorted(n for n in os.listdir(folder)
                       if n.startswith(job_id + ".") and not n.endswith(".json"))
    except OSError:
        return []
    return [f"files/{REJECTED_DIR}/{subdir(job_id)}/{quote(n)}" for n in names]


async def api_review(request: web.Request) -> web.Response:
    state: ReviewState = request.app[_KEY]
    if request.content_type != "application/json":
        return _json({"error": "send JSON"}, 415)
    try:
        body = await request.json(loads=orjson.loads)
    except ValueError:
        return _json({"error": "not JSON"}, 400)
    if not isinstance(body, dict):
        return _json({"error": "not a JSON object"}, 400)
    state.refresh(force=True)
    row = state.index.rows.get(str(body.get("job_id")))
    if row is None or not row.output:
        return _json({"error": f"no job with an image named {body.get('job_id')!r}"}, 404)
    try:
        verdict = Verdict(body.get("verdict"))
    except ValueError:
        return _json({"error": "verdict: accepted, rejected or cleared"}, 400)
    note = body.get("note") or ""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        return _json({"error": f"note: text of at most {MAX_NOTE} characters"}, 400)
    seen = body.get("sha256")
    if seen is not None and seen != row.sha256:
        # A redo made a new image since the page showed this one: the verdict was about the old.
        return _json({"error": "the image changed since it was shown; look again",
                      "item": queries.item(state.index, row)}, 409)
    review = Review(job_id=row.job_id, sha256=row.sha256, verdict=verdict, note=note,
                    at=time.time())
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, append_reviews, state.run_dir, [review])
    except InputError as exc:
        return _json({"error": str(exc)}, 400)
    except BatchgenError as exc:
        return _json({"error": str(exc)}, 500)
    state.refresh(force=True)
    return _json({"item": queries.item(state.index, row), "counts": state.counts(),
                  "version": state.index.version})


def _file_response(path: str | None, cache: bool) -> web.FileResponse:
    if path is None:
        raise web.HTTPNotFound()
    response = web.FileResponse(path)
    if cache:
        # The URLs name the image's sha256 (?s=), so a cached copy is never a stale image.
        response.headers["Cache-Control"] = "private, max-age=86400"
    return response


def _image_of(state: ReviewState, job_id: str) -> str | None:
    """The job's image file, if it is inside the folder: where the ledger says, or under
    superseded/ where `batchgen prune` moved a superseded job's image."""
    from ..folder.layout import SUPERSEDED_DIR

    row = state.index.rows.get(job_id)
    if row is None or not row.output:
        return None
    found = safe_file(state.root, row.output)
    if found is None and not row.current:
        found = safe_file(state.root, os.path.join(SUPERSEDED_DIR, row.output))
    return found


async def image(request: web.Request) -> web.FileResponse:
    state: ReviewState = request.app[_KEY]
    return _file_response(_image_of(state, request.match_info["job_id"]), cache=True)


async def thumb(request: web.Request) -> web.FileResponse:
    state: ReviewState = request.app[_KEY]
    src = _image_of(state, request.match_info["job_id"])
    if src is None:
        raise web.HTTPNotFound()
    dst = os.path.join(state.root, thumb_relpath(src))
    async with state.thumb_slots:
        made = await asyncio.get_running_loop().run_in_executor(None, _thumb, state.root, src,
                                                                dst)
    return _file_response(dst if made else src, cache=True)


def _thumb(root: str, src: str, dst: str) -> bool:
    """Make (or reuse) the thumbnail; False to serve the image itself: it would not decode, or
    thumbs/ is a link out of the folder (nothing is written there)."""
    if not os.path.realpath(os.path.dirname(dst)).startswith(os.path.join(root, "")):
        return False
    try:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        make_thumb(Path(src), Path(dst))
        return True
    except Exception as exc:  # a broken image is shown as itself, not a 500
        log.warning("%s: no thumbnail: %s", src, exc)
        return False


async def served_file(request: web.Request) -> web.FileResponse:
    state: ReviewState = request.app[_KEY]
    return _file_response(safe_file(state.root, request.match_info["tail"]), cache=False)


def make_app(run_dir: Path, token: str) -> web.Application:
    """The review app of ``run_dir``, its index read once (InputError: no run folder)."""
    read_meta(run_dir)
    app = web.Application(middlewares=[guard], client_max_size=64 * 1024)
    state = ReviewState(run_dir, token)
    state.refresh(force=True)
    app[_KEY] = state
    app.router.add_get("/", index_page)
    app.router.add_get("/assets/{name}", asset)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/api/items", api_items)
    app.router.add_get("/api/facets", api_facets)
    app.router.add_get("/api/grid", api_grid)
    app.router.add_get("/api/position", api_position)
    app.router.add_get("/api/job/{job_id}", api_job)
    app.router.add_post("/api/review", api_review)
    app.router.add_get("/thumb/{job_id}", thumb)
    app.router.add_get("/image/{job_id}", image)
    app.router.add_get("/files/{tail:.+}", served_file)
    return app


async def serve(settings: ReviewSettings, ready: Callable[[str], None],
                stop: asyncio.Event | None = None) -> None:
    """Serve until ``stop`` is set (or SIGINT / SIGTERM); ``ready`` gets the page's URL."""
    import signal

    app = make_app(settings.run_dir, settings.token)
    # No access log: every line would hold the token.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = runner.addresses[0][1]
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        ready(page_url(settings.host, port, settings.token))
        await stop.wait()
    finally:
        await runner.cleanup()
