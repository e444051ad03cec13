"""``/healthz``, ``/readyz`` and ``/metrics`` over aiohttp, on the service's event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.metrics import Metrics

__all__ = ["start_http"]

Check = Callable[[], dict[str, bool]]


def _app(metrics: Metrics, alive: Callable[[], bool], ready: Check) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        ok = alive()
        return web.json_response({"alive": ok}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        checks = ready()
        ok = all(checks.values())
        return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_http(
    metrics: Metrics, alive: Callable[[], bool], ready: Check, host: str, port: int
) -> tuple[web.AppRunner, int]:
    """Serve the endpoints on ``host:port`` (0 picks a free port); return the runner and port."""
    runner = web.AppRunner(_app(metrics, alive, ready), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server: Any = site._server
    bound = port
    if server is not None and getattr(server, "sockets", None):
        bound = server.sockets[0].getsockname()[1]
    return runner, bound
