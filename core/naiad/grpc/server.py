"""The grpc.aio server: naiad's gRPC endpoint, on the event loop that serves HTTP.

:class:`GrpcEndpoint` builds the server from :class:`~naiad.grpc.config.GrpcConfig` (message
size, keepalive, TLS, port reuse, as Triton's ``grpc_server.cc`` does), registers the two
services and starts and stops it with the rest of the server.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from ..dataplane import DataPlane
from ..errors import NaiadError
from . import health_service_pb2_grpc, service_pb2_grpc
from .config import INT32_MAX, GrpcConfig
from .options import INFERENCE_RPCS, service_options, status_code
from .service import HealthService, InferenceService

log = logging.getLogger(__name__)


def channel_options(cfg: GrpcConfig) -> list[tuple[str, int]]:
    """Triton's server arguments: 2 GiB messages both ways, its keepalive defaults, and
    SO_REUSEPORT only when asked (grpc turns it on by default)."""
    options = [
        ("grpc.max_send_message_length", INT32_MAX),
        ("grpc.max_receive_message_length", INT32_MAX),
        ("grpc.so_reuseport", int(cfg.reuse_port)),
        ("grpc.keepalive_time_ms", cfg.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", cfg.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", int(cfg.keepalive_permit_without_calls)),
        ("grpc.http2.max_pings_without_data", cfg.http2_max_pings_without_data),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            cfg.http2_min_recv_ping_interval_without_data_ms,
        ),
        ("grpc.http2.max_ping_strikes", cfg.http2_max_ping_strikes),
    ]
    if cfg.max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", cfg.max_connection_age_ms))
    if cfg.max_connection_age_grace_ms:
        options.append(("grpc.max_connection_age_grace_ms", cfg.max_connection_age_grace_ms))
    return options


class Servicer:
    """grpcio's face of a transport-free service (:mod:`.service`): a method of the same name
    that ends the call with the status of the :class:`NaiadError` the service raised, and
    gzips inference responses when ``--grpc-infer-response-compression-level`` asks."""

    def __init__(self, service: Any, compress: bool) -> None:
        self._service = service
        self._compress = compress

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._service, name)
        compress = self._compress and name in INFERENCE_RPCS

        async def handler(request: Any, context: Any) -> Any:
            if compress:
                context.set_compression(grpc.Compression.Gzip)
            try:
                return await method(request, context)
            except NaiadError as exc:
                await context.abort(status_code(exc), exc.message)

        handler.__name__ = name
        return handler


def _read(path: str) -> bytes:
    """A PEM file; an unreadable one is empty, as in Triton."""
    try:
        return Path(path).read_bytes() if path else b""
    except OSError:
        log.error("unable to read '%s'", path)
        return b""


def _target(address: str, port: int) -> str:
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"  # an IPv6 address
    return f"{address}:{port}"


class GrpcEndpoint:
    """One gRPC server for one data plane."""

    def __init__(self, dataplane: DataPlane, config: GrpcConfig) -> None:
        self.config = config
        options = service_options(config)
        self.inference = InferenceService(dataplane, options)
        self.health = HealthService(dataplane, options)
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        cfg = self.config
        server = grpc.aio.server(options=channel_options(cfg))
        compress = self.inference.options.compress_responses
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            Servicer(self.inference, compress), server
        )
        health_service_pb2_grpc.add_HealthServicer_to_server(Servicer(self.health, False), server)
        target = _target(cfg.address, cfg.port)
        try:
            if cfg.use_ssl:
                credentials = grpc.ssl_server_credentials(
                    [(_read(cfg.server_key), _read(cfg.server_cert))],
                    root_certificates=_read(cfg.root_cert) or None,
                    require_client_auth=cfg.use_ssl_mutual,
                )
                server.add_secure_port(target, credentials)
            else:
                server.add_insecure_port(target)
        except RuntimeError as exc:
            log.error("Socket '%s' already in use (%s)", target, exc)
            raise SystemExit(1) from exc
        await server.start()
        self._server = server
        log.info("Started GRPCInferenceService at %s", target)

    async def stop(self, grace: float) -> None:
        """Stop taking RPCs; those in progress (open streams too) get ``grace`` seconds."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(max(grace, 0.0))
