"""A real HTTP image server on 127.0.0.1 for tests: serves the shared photos, misbehaves on cue.

It runs aiohttp in a thread of its own, so synchronous and asynchronous tests alike talk to it
over real sockets. `/images/<path>` serves files below the root folder; `script()` registers a
path that answers with a sequence of scripted behaviours (the last one repeats), for retries,
timeouts, resets, redirects and bodies that never end. Every request is counted per path.
"""

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

_CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}


@dataclass(frozen=True)
class Behaviour:
    """One scripted answer. Fields combine: a delay, then a status with headers and a body."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/octet-stream"
    delay_s: float = 0.0
    hang: bool = False
    """Accept the request and never answer."""
    reset_after_bytes: int | None = None
    """Send this many bytes of the body, then drop the connection."""
    endless: bool = False
    """Stream body chunks forever (until the client gives up)."""
    redirect_to: str | None = None
    """Answer 302 with this Location (relative paths are fine)."""
    content_length: int | None = None
    """Declare this Content-Length instead of the body's, then send the body and stay open."""


class ImageServer:
    """The server; `start()` binds a free port on `host` (any loopback address), `stop()`
    closes it."""

    def __init__(self, root: Path, latency_s: float = 0.0, host: str = "127.0.0.1") -> None:
        self.root = root
        self.latency_s = latency_s
        self.host = host
        self.hits: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        """Requests being answered right now, per path."""
        self.max_in_flight: Counter[str] = Counter()
        """The most requests ever answered at once, per path."""
        self.first_hit_at: dict[str, float] = {}
        """When (``time.time()``) the first request for each path arrived."""
        self._scripts: dict[str, list[Behaviour]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        """`http://HOST:PORT`."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, relative: str | Path) -> str:
        """The URL that serves file `relative` (below the root) as it is."""
        return f"{self.base_url}/images/{Path(relative).as_posix()}"

    def script(self, name: str, *behaviours: Behaviour) -> str:
        """Register `/scripted/<name>` answering with `behaviours` in turn; returns its URL."""
        if not behaviours:
            raise ValueError("script needs at least one behaviour")
        self._scripts[name] = list(behaviours)
        return f"{self.base_url}/scripted/{name}"

    def start(self) -> "ImageServer":
        """Bind `host` on a free port and serve from the background thread."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket; end the thread."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._count_in_flight])
        app.router.add_get("/images/{path:.+}", self._serve_file)
        app.router.add_get("/scripted/{name}", self._serve_script)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        if server is None or not server.sockets:
            raise RuntimeError("image server did not bind a socket")
        self.port = server.sockets[0].getsockname()[1]

    @web.middleware
    async def _count_in_flight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        self.first_hit_at.setdefault(path, time.time())
        self.in_flight[path] += 1
        self.max_in_flight[path] = max(self.max_in_flight[path], self.in_flight[path])
        try:
            return await handler(request)
        finally:
            self.in_flight[path] -= 1

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        relative = request.match_info["path"]
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()) or not path.is_file():
            raise web.HTTPNotFound()
        content_type = _CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
        return web.Response(body=path.read_bytes(), content_type=content_type)

    async def _serve_script(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in self._scripts:
            raise web.HTTPNotFound()
        count = self.hits[request.path]
        self.hits[request.path] += 1
        sequence: Sequence[Behaviour] = self._scripts[name]
        behaviour = sequence[min(count, len(sequence) - 1)]
        return await self._perform(request, behaviour)

    async def _perform(self, request: web.Request, b: Behaviour) -> web.StreamResponse:
        if b.delay_s or self.latency_s:
            await asyncio.sleep(b.delay_s + self.latency_s)
        if b.hang:
            await asyncio.sleep(3600)
        if b.redirect_to is not None:
            raise web.HTTPFound(b.redirect_to, headers=b.headers)
        response = web.StreamResponse(status=b.status, headers=b.headers)
        if b.content_type is not None:
            response.content_type = b.content_type
        if b.content_length is not None:
            response.content_length = b.content_length
        elif not b.endless and b.reset_after_bytes is None:
            response.content_length = len(b.body)
        await response.prepare(request)
        if b.endless:
            chunk = b.body or b"\0" * 65536
            while True:
                await response.write(chunk)
        if b.reset_after_bytes is not None:
            await response.write(b.body[: b.reset_after_bytes])
            transport = request.transport
            if transport is not None:
                transport.abort()
            return response
        await response.write(b.body)
        if b.content_length is not None and b.content_length > len(b.body):
            await asyncio.sleep(3600)  # The rest never comes.
        await response.write_eof()
        return response
