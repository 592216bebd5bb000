"""Wiring: plugins, models, data plane and HTTP composed in one place, with a clean lifecycle."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from . import memory
from .dataplane import ControlMode, DataPlane, ServerOptions
from .forwarding import compile_pattern
from .grpc.config import GrpcConfig
from .http import make_app
from .http.app import EDGE
from .http.edge import HttpHooks
from .http.fast import FastSite
from .http.guard import GuardedRunner
from .http.metrics import start_metrics_site
from .http.restricted import restricted_api_hook
from .metrics import Metrics, MetricsConfig
from .models import ModelManager
from .plugins import build_backend_registry
from .tritonpy.custom_metrics import MetricRegistry
from .tritonpy.host import ServerHost, install_default

if TYPE_CHECKING:
    from .grpc.front import LeanEndpoint
    from .grpc.server import GrpcEndpoint

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Everything the command line can set (Triton's flag names, see ``naiad serve --help``)."""

    #: local folders (Path) and ``s3://``/``gs://``/``as://`` URLs (str, see naiad.remote)
    model_repositories: list[Path | str] = field(default_factory=list)
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    allow_http: bool = True
    auto_complete: bool = True
    control_mode: ControlMode = ControlMode.NONE
    load_models: list[str] = field(default_factory=list)
    strict_readiness: bool = True
    exit_on_error: bool = True
    exit_timeout: float = 30.0
    #: ``--allow-client-shm``: clients may register shared memory (default true, see docs)
    allow_client_shm: bool = True
    max_input_size: int = 64 * 1024 * 1024
    #: ``--http-header-timeout`` / ``--http-body-timeout`` (naiad.http.fast, naiad.http.guard)
    http_head_timeout: float = 30.0
    http_body_timeout: float = 30.0
    #: ``--http-fast-path``: the hot V2 requests skip aiohttp's machinery (naiad.http.fast)
    http_fast_path: bool = True
    #: ``--http-restricted-api``: category -> (header, value) (naiad.http.restricted)
    http_restricted_api: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ``--http-header-forward-pattern``: matching headers become request parameters
    http_header_forward_pattern: str | None = None

    def __post_init__(self) -> None:
        self.http_forward = compile_pattern(
            self.http_header_forward_pattern, "--http-header-forward-pattern"
        )

    server_id: str = "triton"
    plugins: list[str] = field(default_factory=list)
    repository_poll_secs: float = 15.0
    model_load_thread_count: int = 4
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: the gRPC endpoint (``--allow-grpc``, ``--grpc-port``, ...)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)


class Server:
    """One naiad server. ``await start()``, then ``await stop()``; or ``await serve()``."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        memory.tune_allocator()  # tensors' buffers reused, not faulted in anew each request
        #: what plugins add to every HTTP front (``naiad_register_http_hooks``)
        self.http_hooks = HttpHooks()
        if config.http_restricted_api:
            self.http_hooks.request.append(restricted_api_hook(config.http_restricted_api))
        self.backends = build_backend_registry(config.plugins, http_hooks=self.http_hooks)
        self.models = ModelManager(
            config.model_repositories,
            self.backends,
            auto_complete=config.auto_complete,
            unload_timeout=config.exit_timeout,
            load_thread_count=config.model_load_thread_count,
        )
        self.dataplane = DataPlane(
            self.models,
            ServerOptions(
                server_id=config.server_id,
                strict_readiness=config.strict_readiness,
                control_mode=config.control_mode,
                allow_client_shm=config.allow_client_shm,
            ),
        )
        #: model code's way back into the server (BLS, model control, custom metrics)
        self.host = ServerHost(self.dataplane, MetricRegistry())
        self.models.host = self.host
        self._runner: web.AppRunner | None = None
        self._poller: asyncio.Task | None = None
        self.metrics: Metrics | None = None
        if config.metrics.allow_metrics:
            self.metrics = Metrics(self.models, config.metrics, extra=[self.host.metrics])
        self._metrics_runner: web.AppRunner | None = None
        self._grpc: GrpcEndpoint | LeanEndpoint | None = None

    async def start(self) -> None:
        cfg = self.config
        self.host.bind(asyncio.get_running_loop())
        install_default(self.host)
        if cfg.allow_http:
            app = make_app(
                self.dataplane,
                max_input_size=cfg.max_input_size,
                hooks=self.http_hooks,
                forward_pattern=cfg.http_forward,
            )
            self._runner = GuardedRunner(
                app,
                max_input=cfg.max_input_size,
                head_timeout=cfg.http_head_timeout,
                body_timeout=cfg.http_body_timeout,
                access_log=None,
                auto_decompress=False,
                handle_signals=False,
                shutdown_timeout=cfg.exit_timeout,
            )
            await self._runner.setup()
            site: web.BaseSite
            if cfg.http_fast_path:
                site = FastSite(
                    self._runner,
                    cfg.http_address,
                    cfg.http_port,
                    app[EDGE],
                    head_timeout=cfg.http_head_timeout,
                    body_timeout=cfg.http_body_timeout,
                )
            else:
                site = web.TCPSite(
                    self._runner, cfg.http_address, cfg.http_port, reuse_address=True
                )
            await site.start()
            log.info("HTTP service listening on %s:%d", cfg.http_address, cfg.http_port)
        if cfg.grpc.allow_grpc:
            if cfg.grpc.fast_path:
                from .grpc.front import LeanEndpoint

                self._grpc = LeanEndpoint(
                    self.dataplane,
                    cfg.grpc,
                    head_timeout=cfg.http_head_timeout,
                    body_timeout=cfg.http_body_timeout,
                )
            else:  # grpcio's server
                from .grpc.server import GrpcEndpoint

                self._grpc = GrpcEndpoint(self.dataplane, cfg.grpc)
            await self._grpc.start()
        if self.metrics is not None:
            await self._start_metrics()
        if cfg.control_mode is ControlMode.EXPLICIT:
            names = cfg.load_models
            if "*" in names:
                await self.models.load_all()
            else:
                await self.models.load_all(names)
        else:
            await self.models.load_all()
        self.dataplane.started = True
        if cfg.control_mode is ControlMode.POLL and cfg.repository_poll_secs > 0:
            self._poller = asyncio.create_task(self._poll_forever(cfg.repository_poll_secs))
        if cfg.exit_on_error and self.models.remotes.errors:
            log.error("a model repository cannot be read (--exit-on-error=true)")
            raise SystemExit(1)
        if cfg.exit_on_error and not self.models.all_ready():
            failed = [e for e in self.models.index() if e.get("state") == "UNAVAILABLE"]
            if failed:
                log.error("some models failed to load (--exit-on-error=true): %s", failed)
                raise SystemExit(1)
        log.info("naiad is ready")

    async def stop(self) -> bool:
        """Shut down as Triton does on SIGTERM, within ``--exit-timeout-secs``.

        New inferences are refused with 503 "Server exiting" (health answers the same; gRPC
        streams answer new requests in-band) while in-flight ones finish; then the gRPC and HTTP
        ports close, models unload and shared memory is unmapped. Returns False when the timeout
        ran out with inferences still in flight (the caller then exits at once, with status 1).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.exit_timeout
        self.dataplane.exiting = True
        if self._poller is not None:
            self._poller.cancel()
            self._poller = None
        if not await self.dataplane.wait_idle(deadline - loop.time()):
            log.error(
                "Exit timeout expired. Exiting immediately. (%d inferences in flight)",
                self.dataplane.inflight,
            )
            self.dataplane.shm.close()
            return False
        if self._grpc is not None:
            # open streams get what is left of the timeout to finish their answers
            await self._grpc.stop(deadline - loop.time())
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
        await self.models.unload_all()
        await asyncio.to_thread(self.models.remotes.close)
        unmapped = self.dataplane.shm.close()
        if unmapped:
            log.info("unmapped %d shared memory regions", unmapped)
        await self._stop_metrics()
        return True

    async def _poll_forever(self, interval: float) -> None:
        """POLL mode: rescan the repositories every ``interval`` s (scans run off the loop)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.models.poll()
            except Exception:  # a poll that fails must not stop later polls
                log.exception("repository poll failed")

    async def _start_metrics(self) -> None:
        assert self.metrics is not None
        mc = self.config.metrics
        address = mc.address or self.config.http_address
        await self.metrics.start()
        try:
            self._metrics_runner = await start_metrics_site(self.metrics, address, mc.port)
        except OSError as exc:
            log.error("failed to start Metrics Service at %s:%d: %s", address, mc.port, exc)
            raise SystemExit(1) from exc
        log.info("Started Metrics Service at %s:%d", address, mc.port)

    async def _stop_metrics(self) -> None:
        runner, self._metrics_runner = self._metrics_runner, None
        if runner is not None:
            await runner.cleanup()
        if self.metrics is not None:
            await self.metrics.stop()

    async def serve(self) -> int:
        """Run until SIGINT/SIGTERM; the exit status (1: in-flight work outlived the timeout)."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        await stop.wait()
        log.info("shutting down")
        return 0 if await self.stop() else 1
