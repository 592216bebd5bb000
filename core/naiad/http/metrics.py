"""The metrics endpoint: its own small aiohttp app on its own port (Triton's 8002).

``GET /metrics`` answers with :meth:`naiad.metrics.Metrics.render`, Prometheus's text format.
"""

from __future__ import annotations

from aiohttp import web

from ..metrics import CONTENT_TYPE, Metrics

METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    body = await request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def make_metrics_app(metrics: Metrics) -> web.Application:
    """The app with one route, ``GET /metrics``."""
    app = web.Application()
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return app


async def start_metrics_site(
    metrics: Metrics, address: str, port: int, *, shutdown_timeout: float = 5.0
) -> web.AppRunner:
    """Serve ``metrics`` on ``address:port``; ``await runner.cleanup()`` stops it."""
    runner = web.AppRunner(
        make_metrics_app(metrics),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=shutdown_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, address, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner
