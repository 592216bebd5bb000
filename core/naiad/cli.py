"""The ``naiad`` command: ``naiad serve`` (Triton's flag names) and ``naiad plugins``.

``naiad --model-repository PATH`` (no sub-command) is ``naiad serve``, as ``tritonserver`` is;
``naiad tritonserver ARGS`` takes tritonserver's own argv (naiad.tritonserver).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from .dataplane import ControlMode


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _repository(value: str) -> Path | str:
    """A local folder, or an ``s3://``/``gs://``/``as://`` URL (kept as text: a Path would fold
    its ``//``). A malformed URL or credentials file is a usage error."""
    from .remote.location import LocationError, is_remote, parse_location

    if not is_remote(value):
        return Path(value)
    try:
        parse_location(value)
    except LocationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, default: bool, help: str
) -> None:
    """A Triton-style boolean: ``--name`` alone means true, ``--name=false`` false."""
    parser.add_argument(
        name,
        type=_bool,
        nargs="?",
        const=True,
        default=default,
        metavar="BOOL",
        help=f"{help} (default {str(default).lower()})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="naiad", description="naiad inference server")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve model repositories over HTTP")
    add_serve_arguments(serve)
    plugins = sub.add_parser("plugins", help="list the backends the installed plugins provide")
    plugins.add_argument("--plugin", action="append", default=[], help="extra plugin module")
    return parser


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-repository",
        "--model-store",
        action="append",
        required=True,
        type=_repository,
        dest="model_repository",
        metavar="PATH",
        help="model repository: a folder, or s3://, gs://, as:// (repeatable)",
    )
    p.add_argument("--http-port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument("--http-address", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
    _flag(p, "--allow-http", True, "serve HTTP")
    _flag(
        p,
        "--http-fast-path",
        True,
        "answer inference, health, metadata and config on naiad's lean HTTP/1.1 front; "
        "false = aiohttp answers everything (naiad only)",
    )
    p.add_argument(
        "--http-restricted-api",
        action="append",
        default=[],
        metavar="CATEGORIES:HEADER=VALUE",
        help="HTTP endpoints of these categories need the header HEADER: VALUE (repeatable)",
    )
    p.add_argument(
        "--http-header-forward-pattern",
        default=None,
        metavar="REGEX",
        help="request headers whose names match become string parameters of the inference "
        "request (case-insensitive unless the expression starts with (?-i))",
    )
    _flag(
        p,
        "--allow-client-shm",
        True,
        "let clients register system shared memory regions (Triton now defaults to false)",
    )
    p.add_argument(
        "--model-control-mode",
        choices=[m.value for m in ControlMode],
        default="none",
        help="none: load all at start; poll: follow the repository; explicit: load/unload API",
    )
    p.add_argument(
        "--load-model",
        action="append",
        default=[],
        metavar="NAME",
        help="with explicit control, a model to load at start ('*' = all; repeatable)",
    )
    p.add_argument(
        "--repository-poll-secs",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="with --model-control-mode=poll, seconds between repository scans (default 15)",
    )
    p.add_argument(
        "--model-load-thread-count",
        type=int,
        default=4,
        metavar="N",
        help="models loaded in parallel (default 4)",
    )
    _flag(p, "--strict-model-config", False, "require a complete config.pbtxt (no auto-complete)")
    p.add_argument(
        "--disable-auto-complete-config",
        action="store_true",
        help="never complete a model config from the model file",
    )
    _flag(p, "--strict-readiness", True, "ready only when every model is ready")
    _flag(p, "--exit-on-error", True, "exit if a model fails to load at start-up")
    p.add_argument("--exit-timeout-secs", type=float, default=30.0, metavar="SECONDS")
    p.add_argument(
        "--http-max-input-size",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="largest request body accepted (default 64 MiB)",
    )
    p.add_argument(
        "--http-header-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest a request head may take to arrive (lean front; default 30)",
    )
    p.add_argument(
        "--http-body-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait for the next bytes of a request body (lean front; default 30)",
    )
    p.add_argument("--id", default="triton", dest="server_id", help="server name in metadata")
    p.add_argument("--plugin", action="append", default=[], help="extra plugin module to load")
    add_metrics_arguments(p)
    add_log_arguments(p)
    add_grpc_arguments(p)


def add_metrics_arguments(p: argparse.ArgumentParser) -> None:
    """Triton's metrics flags (docs/metrics.md)."""
    _flag(p, "--allow-metrics", True, "serve Prometheus metrics on --metrics-port")
    _flag(p, "--allow-gpu-metrics", True, "export GPU metrics (needs naiad[gpu] and a GPU)")
    _flag(p, "--allow-cpu-metrics", True, "export CPU and memory metrics")
    p.add_argument("--metrics-port", type=int, default=8002, help="metrics port (default 8002)")
    p.add_argument(
        "--metrics-address",
        default=None,
        metavar="ADDRESS",
        help="address the metrics port binds (default: the --http-address)",
    )
    p.add_argument(
        "--metrics-interval-ms",
        type=int,
        default=2000,
        metavar="MS",
        help="how often CPU and GPU metrics are read (default 2000)",
    )
    p.add_argument(
        "--metrics-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metrics option, e.g. counter_latencies=false (repeatable)",
    )


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """Triton's logging flags; /v2/logging changes the same settings at run time."""
    p.add_argument(
        "--log-verbose", type=int, default=0, metavar="LEVEL", help="verbose level (default 0)"
    )
    _flag(p, "--log-info", True, "log info messages")
    _flag(p, "--log-warning", True, "log warning messages")
    _flag(p, "--log-error", True, "log error messages")
    p.add_argument(
        "--log-format",
        choices=["default", "ISO8601"],
        default="default",
        help="log line format (default: default)",
    )
    p.add_argument(
        "--log-file", default="", metavar="PATH", help="write the log here, not to the console"
    )


def add_grpc_arguments(p: argparse.ArgumentParser) -> None:
    """Triton's gRPC flags (docs/cli.md, docs/grpc.md)."""
    g = p.add_argument_group("gRPC")
    _flag(g, "--allow-grpc", True, "serve Triton's GRPCInferenceService")
    _flag(
        g,
        "--grpc-fast-path",
        True,
        "naiad only: serve gRPC with naiad's lean HTTP/2 front instead of grpcio's server",
    )
    g.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    g.add_argument(
        "--grpc-address", default="0.0.0.0", help="address the gRPC port binds (default 0.0.0.0)"
    )
    _flag(g, "--reuse-grpc-port", False, "SO_REUSEPORT: several servers may share the port")
    _flag(g, "--grpc-use-ssl", False, "TLS on the gRPC port")
    _flag(g, "--grpc-use-ssl-mutual", False, "mutual TLS: clients must show a certificate")
    for name, what in (
        ("--grpc-server-cert", "PEM server certificate"),
        ("--grpc-server-key", "PEM server key"),
        ("--grpc-root-cert", "PEM root certificate that client certificates are checked with"),
    ):
        g.add_argument(name, default="", metavar="PATH", help=what)
    g.add_argument(
        "--grpc-infer-response-compression-level",
        default="none",
        metavar="LEVEL",
        help="none, low, medium or high: compress inference responses (default none)",
    )
    for name, default, what in (
        ("--grpc-keepalive-time", 7_200_000, "ms between keepalive pings"),
        ("--grpc-keepalive-timeout", 20_000, "ms to wait for a ping's answer"),
        ("--grpc-http2-max-pings-without-data", 2, "pings without data allowed (0: any)"),
        (
            "--grpc-http2-min-recv-ping-interval-without-data",
            300_000,
            "ms; pings closer than this without data are strikes",
        ),
        ("--grpc-http2-max-ping-strikes", 2, "bad pings before GOAWAY (0: any)"),
        ("--grpc-max-connection-age", 0, "ms a connection may live (0: for ever)"),
        ("--grpc-max-connection-age-grace", 0, "ms of grace after the maximum age"),
        ("--grpc-infer-thread-count", 2, "Triton's handler threads, 2-128 (accepted; no effect)"),
        ("--grpc-infer-allocation-pool-size", 8, "Triton's object pool (accepted; no effect)"),
        (
            "--grpc-max-response-pool-size",
            2**31 - 1,
            "responses queued per request, > 0 (accepted; no effect)",
        ),
    ):
        g.add_argument(name, type=int, default=default, metavar="N", help=f"{what} ({default})")
    _flag(g, "--grpc-keepalive-permit-without-calls", False, "allow pings with no call open")
    g.add_argument(
        "--grpc-restricted-protocol",
        action="append",
        default=[],
        metavar="CATEGORIES:KEY=VALUE",
        help="RPCs of these categories need header triton-grpc-protocol-KEY: VALUE (repeatable)",
    )
    g.add_argument(
        "--grpc-header-forward-pattern",
        default=None,
        metavar="REGEX",
        help="headers whose name matches become request parameters",
    )


def grpc_config(args: argparse.Namespace):
    """The gRPC part of the server config; raises ValueError for a bad flag value."""
    from .grpc.config import GrpcConfig, parse_restricted

    return GrpcConfig(
        allow_grpc=args.allow_grpc,
        fast_path=args.grpc_fast_path,
        address=args.grpc_address,
        port=args.grpc_port,
        reuse_port=args.reuse_grpc_port,
        use_ssl=args.grpc_use_ssl,
        use_ssl_mutual=args.grpc_use_ssl_mutual,
        server_cert=args.grpc_server_cert,
        server_key=args.grpc_server_key,
        root_cert=args.grpc_root_cert,
        infer_response_compression_level=args.grpc_infer_response_compression_level,
        keepalive_time_ms=args.grpc_keepalive_time,
        keepalive_timeout_ms=args.grpc_keepalive_timeout,
        keepalive_permit_without_calls=args.grpc_keepalive_permit_without_calls,
        http2_max_pings_without_data=args.grpc_http2_max_pings_without_data,
        http2_min_recv_ping_interval_without_data_ms=(
            args.grpc_http2_min_recv_ping_interval_without_data
        ),
        http2_max_ping_strikes=args.grpc_http2_max_ping_strikes,
        max_connection_age_ms=args.grpc_max_connection_age,
        max_connection_age_grace_ms=args.grpc_max_connection_age_grace,
        restricted=parse_restricted(args.grpc_restricted_protocol),
        header_forward_pattern=args.grpc_header_forward_pattern,
        infer_thread_count=args.grpc_infer_thread_count,
        infer_allocation_pool_size=args.grpc_infer_allocation_pool_size,
        max_response_pool_size=args.grpc_max_response_pool_size,
    )


def metrics_config(args: argparse.Namespace):
    """The metrics part of the server config; raises ValueError for a bad --metrics-config."""
    from .metrics import MetricsConfig, apply_metrics_config

    config = MetricsConfig(
        allow_metrics=args.allow_metrics,
        allow_gpu_metrics=args.allow_gpu_metrics,
        allow_cpu_metrics=args.allow_cpu_metrics,
        port=args.metrics_port,
        address=args.metrics_address,
        interval_ms=args.metrics_interval_ms,
    )
    return apply_metrics_config(config, args.metrics_config)


def log_settings(args: argparse.Namespace):
    from .logs import LogSettings

    return LogSettings(
        log_file=args.log_file,
        log_info=args.log_info,
        log_warning=args.log_warning,
        log_error=args.log_error,
        log_verbose_level=max(0, args.log_verbose),
        log_format=args.log_format,
    )


def serve_config(args: argparse.Namespace):
    from .http.restricted import parse_restricted_api
    from .server import ServerConfig

    return ServerConfig(
        model_repositories=list(args.model_repository),
        http_address=args.http_address,
        http_port=args.http_port,
        allow_http=args.allow_http,
        auto_complete=not (args.strict_model_config or args.disable_auto_complete_config),
        control_mode=ControlMode(args.model_control_mode),
        load_models=list(args.load_model),
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        exit_timeout=args.exit_timeout_secs,
        allow_client_shm=args.allow_client_shm,
        http_fast_path=args.http_fast_path,
        http_restricted_api=parse_restricted_api(args.http_restricted_api),
        http_header_forward_pattern=args.http_header_forward_pattern,
        max_input_size=args.http_max_input_size,
        http_head_timeout=args.http_header_timeout,
        http_body_timeout=args.http_body_timeout,
        server_id=args.server_id,
        plugins=list(args.plugin),
        metrics=metrics_config(args),
        grpc=grpc_config(args),
        repository_poll_secs=args.repository_poll_secs,
        model_load_thread_count=args.model_load_thread_count,
    )


def _setup_logging(args: argparse.Namespace) -> None:
    from .logs import configure_logging

    configure_logging(log_settings(args))


def cmd_serve(args: argparse.Namespace) -> int:
    from .plugins import PluginError
    from .server import Server

    try:
        _setup_logging(args)
        config = serve_config(args)
    except ValueError as exc:
        print(f"naiad: error: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]

    async def main() -> int:
        try:
            server = Server(config)
        except PluginError as exc:
            print(f"naiad: error: {exc}", file=sys.stderr)
            return 2
        try:
            code = await server.serve()
        except SystemExit as exc:
            await server.stop()
            return int(exc.code or 1)
        if code:  # --exit-timeout-secs ran out: leave without waiting for in-flight work
            sys.stderr.flush()
            os._exit(code)
        return code

    if uvloop is not None:
        return uvloop.run(main())
    return asyncio.run(main())


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import PluginError, build_backend_registry

    try:
        registry = build_backend_registry(args.plugin)
    except PluginError as exc:
        print(f"naiad: error: {exc}", file=sys.stderr)
        return 2
    entries = registry.entries()
    if not entries:
        print("no backends installed (pip install naiad-backend-onnx, for example)")
        return 0
    width = max(len(n) for n, _, _ in entries)
    for name, platforms, source in entries:
        plats = ", ".join(platforms) or "-"
        print(f"{name:<{width}}  platforms: {plats}  from: {source}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``naiad``'s argv as ``main`` reads it: ``serve`` is implied before a flag, and
    ``tritonserver ARGS`` is tritonserver's own command line (naiad.tritonserver)."""
    argv = list(argv)
    if argv and argv[0] in ("tritonserver", "trtserver"):
        from .tritonserver import serve_argv

        argv = serve_argv(argv[1:])
    if argv and argv[0].startswith("--") and argv[0] not in ("--help", "-h"):
        argv.insert(0, "serve")
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "plugins":
        return cmd_plugins(args)
    build_parser().print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
