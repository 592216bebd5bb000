"""``tritonserver``'s command line, taken as it is: ``naiad tritonserver --model-store=... ``.

Images and manifests written for Triton start naiad unchanged; KServe's own Triton runtime runs
``tritonserver --model-store=/mnt/models --grpc-port=9000 --http-port=8080 --allow-grpc=true
--allow-http=true``. Each flag naiad's ``serve`` has is passed through as it is; a flag of
Triton's that naiad does not have is dropped, with its value, and named in one warning; any other
flag is an error, as it is for ``tritonserver``.
"""

from __future__ import annotations

import argparse
import sys

#: the words that mean "the rest is tritonserver's argv" (trtserver: Triton 1.x)
COMMAND_NAMES = ("tritonserver", "trtserver")

#: every option of tritonserver 2.x and trtserver 1.x (src/command_line_parser.cc)
TRITON_FLAGS = frozenset(
    """
    --allow-client-shm --allow-cpu-metrics --allow-gpu-metrics --allow-grpc --allow-http
    --allow-metrics --allow-model-control --allow-poll-model-repository --allow-sagemaker
    --allow-vertex-ai --backend-config --backend-directory --buffer-manager-thread-count
    --cache-config --cache-directory --cuda-memory-pool-byte-size --disable-auto-complete-config
    --enable-peer-access --exit-on-error --exit-timeout-secs --grpc-address
    --grpc-header-forward-pattern --grpc-health-port --grpc-http2-max-ping-strikes
    --grpc-http2-max-pings-without-data --grpc-http2-min-recv-ping-interval-without-data
    --grpc-infer-allocation-pool-size --grpc-infer-response-compression-level
    --grpc-infer-thread-count --grpc-keepalive-permit-without-calls --grpc-keepalive-time
    --grpc-keepalive-timeout --grpc-max-connection-age --grpc-max-connection-age-grace
    --grpc-max-response-pool-size --grpc-port --grpc-restricted-protocol --grpc-root-cert
    --grpc-server-cert --grpc-server-key --grpc-stream-infer-thread-count --grpc-use-ssl
    --grpc-use-ssl-mutual --host-policy --http-address --http-header-forward-pattern
    --http-health-port --http-max-input-size --http-port --http-restricted-api
    --http-thread-count --id --load-model --log-error --log-file --log-format --log-info
    --log-verbose --log-warning --metrics-address --metrics-config --metrics-interval-ms
    --metrics-port --min-supported-compute-capability --model-config-name --model-control-mode
    --model-load-gpu-limit --model-load-retry-count --model-load-thread-count
    --model-namespacing --model-repository --model-store --pinned-memory-pool-byte-size
    --rate-limit --rate-limit-resource --repoagent-directory --repository-poll-secs
    --response-cache-byte-size --reuse-grpc-port --reuse-http-port --sagemaker-port
    --sagemaker-safe-port-range --sagemaker-thread-count --strict-model-config
    --strict-readiness --tf-add-vgpu --tf-allow-soft-placement --tf-gpu-memory-fraction
    --trace-config --trace-count --trace-file --trace-level --trace-log-frequency --trace-rate
    --vertex-ai-default-model --vertex-ai-port --vertex-ai-thread-count
    """.split()
)


def serve_option_names() -> frozenset[str]:
    """The option strings ``naiad serve`` accepts (whatever this build of naiad has)."""
    from .cli import add_serve_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_serve_arguments(parser)
    return frozenset(s for action in parser._actions for s in action.option_strings)


def translate(argv: list[str], known: frozenset[str]) -> tuple[list[str], list[str]]:
    """Split tritonserver's ``argv`` into the arguments for ``naiad serve`` and the Triton flags
    naiad lacks (each with its value, as given). Unknown non-Triton flags are kept, so that
    ``naiad serve`` reports them as errors."""
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = arg.split("=", 1)[0]
        i += 1
        if not arg.startswith("--") or name in known or name not in TRITON_FLAGS:
            kept.append(arg)
            continue
        given = [arg]
        # tritonserver's options all take a value (but one): `--flag value` drops the value too
        if "=" not in arg and name != "--disable-auto-complete-config":
            if i < len(argv) and not argv[i].startswith("--"):
                given.append(argv[i])
                i += 1
        dropped.append(" ".join(given))
    return kept, dropped


def serve_argv(argv: list[str]) -> list[str]:
    """``naiad`` argv (``serve ...``) for tritonserver's ``argv``; warns about dropped flags."""
    kept, dropped = translate(argv, serve_option_names())
    if dropped:
        print(
            "naiad: warning: ignoring tritonserver options naiad does not have: "
            + ", ".join(dropped),
            file=sys.stderr,
        )
    return ["serve", *kept]
