"""How the gRPC command-line flags shape answers, and the error-to-status step every RPC uses."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import grpc

from ..errors import NaiadError, Unavailable
from .config import CATEGORIES, GrpcConfig

#: gRPC status code number -> grpc.StatusCode
_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass
class GrpcOptions:
    """What the gRPC command-line flags change about how RPCs are answered."""

    #: RPC name -> (header key, value) it must carry (``--grpc-restricted-protocol``)
    restricted: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: ``--grpc-header-forward-pattern``, compiled (None: forward nothing)
    forward_pattern: re.Pattern[str] | None = None
    #: ``--grpc-infer-response-compression-level`` other than none: responses of inference
    #: RPCs are compressed (grpcio offers algorithms, not levels: gzip)
    compress_responses: bool = False


#: the RPCs whose responses ``--grpc-infer-response-compression-level`` compresses
INFERENCE_RPCS = frozenset(CATEGORIES["inference"])


def service_options(cfg: GrpcConfig) -> GrpcOptions:
    restricted = {
        rpc: rule for category, rule in cfg.restricted.items() for rpc in CATEGORIES[category]
    }
    return GrpcOptions(
        restricted=restricted,
        forward_pattern=cfg.forward_pattern(),
        compress_responses=cfg.infer_response_compression_level != "none",
    )


def status_code(exc: NaiadError) -> grpc.StatusCode:
    return _CODES[exc.grpc_code]


def restriction_error(key: str) -> Unavailable:
    return Unavailable(f"This protocol is restricted, expecting header '{key}'")


def check_restricted(options: GrpcOptions, rpc: str, context: Any) -> None:
    rule = options.restricted.get(rpc)
    if rule is None:
        return
    key, value = rule
    for k, v in context.invocation_metadata() or ():
        if k == key and v == value:
            return
    raise restriction_error(key)
