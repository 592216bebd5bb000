"""The gRPC endpoint's settings, one field per Triton flag (``naiad serve --help``, docs/cli.md).

Plain values only (no grpc import), so the command line and :class:`naiad.server.ServerConfig`
can hold them whether or not the endpoint is started.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .. import restrictions
from ..forwarding import compile_pattern
from ..restrictions import parse_restrictions

INT32_MAX = 2**31 - 1
COMPRESSION_LEVELS = ("none", "low", "medium", "high")
#: the categories of ``--grpc-restricted-protocol`` and the RPCs in each
CATEGORIES: dict[str, tuple[str, ...]] = {
    "health": ("ServerLive", "ServerReady", "ModelReady", "Check"),
    "metadata": ("ServerMetadata", "ModelMetadata"),
    "inference": ("ModelInfer", "ModelStreamInfer"),
    "shared-memory": tuple(
        f"{kind}SharedMemory{op}"
        for kind in ("System", "Cuda")
        for op in ("Status", "Register", "Unregister")
    ),
    "model-config": ("ModelConfig",),
    "model-repository": ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"),
    "statistics": ("ModelStatistics",),
    "trace": ("TraceSetting",),
    "logging": ("LogSettings",),
}


assert tuple(CATEGORIES) == restrictions.CATEGORIES

HEADER_PREFIX = "triton-grpc-protocol-"


@dataclass
class GrpcConfig:
    allow_grpc: bool = True
    #: ``--grpc-fast-path``: naiad's lean HTTP/2 front (naiad.grpc.front) instead of grpcio's
    #: server (TLS included)
    fast_path: bool = True
    address: str = "0.0.0.0"
    port: int = 8001
    reuse_port: bool = False
    use_ssl: bool = False
    use_ssl_mutual: bool = False
    server_cert: str = ""
    server_key: str = ""
    root_cert: str = ""
    infer_response_compression_level: str = "none"
    keepalive_time_ms: int = 7_200_000
    keepalive_timeout_ms: int = 20_000
    keepalive_permit_without_calls: bool = False
    http2_max_pings_without_data: int = 2
    http2_min_recv_ping_interval_without_data_ms: int = 300_000
    http2_max_ping_strikes: int = 2
    max_connection_age_ms: int = 0
    max_connection_age_grace_ms: int = 0
    #: category -> (header key, value), from ``--grpc-restricted-protocol``
    restricted: dict[str, tuple[str, str]] = field(default_factory=dict)
    header_forward_pattern: str | None = None
    #: accepted for Triton compatibility; grpc.aio serves every RPC on the event loop
    infer_thread_count: int = 2
    infer_allocation_pool_size: int = 8
    max_response_pool_size: int = INT32_MAX

    def __post_init__(self) -> None:
        level = self.infer_response_compression_level.lower()
        if level not in COMPRESSION_LEVELS:
            raise ValueError("invalid argument for --grpc_infer_response_compression_level")
        self.infer_response_compression_level = level
        if not 2 <= self.infer_thread_count <= 128:
            raise ValueError(
                "invalid argument for --grpc_infer_thread_count. Must be in the range 2 to 128."
            )
        if self.max_response_pool_size <= 0:
            raise ValueError("Error: --grpc-max-response-pool-size must be greater than 0.")
        if self.use_ssl_mutual:
            self.use_ssl = True
        self.forward_pattern()  # a bad expression is a ValueError now

    def forward_pattern(self) -> re.Pattern[str] | None:
        """The compiled ``--grpc-header-forward-pattern`` (case-insensitive, as Triton's)."""
        return compile_pattern(self.header_forward_pattern, "--grpc-header-forward-pattern")


def parse_restricted(values: list[str]) -> dict[str, tuple[str, str]]:
    """``--grpc-restricted-protocol=<cat>[,<cat>...]:<key>=<value>`` (repeatable), checked as
    Triton does; category -> (``triton-grpc-protocol-<key>``, value)."""
    return parse_restrictions(
        values, "--grpc-restricted-protocol", "config name", "restricted protocol", HEADER_PREFIX
    )
