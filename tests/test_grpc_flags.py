"""The gRPC flags: TLS and mutual TLS with a CA made here, the restricted protocol and its header
check, header forwarding, response compression, keepalive options and bad flag values."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject, issuer, key, signer, *, ca=False, server=False):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("naiad test CA", "naiad test CA", ca_key, ca_key, ca=True)
    files = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for who in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(who, "naiad test CA", key, ca_key, server=who == "server")
        files[f"{who}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{who}-key.pem"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    for name, data in files.items():
        (out / name).write_bytes(data)
    return {name: str(out / name) for name in files}


def _ok(c, **kw) -> None:
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    np.testing.assert_array_equal(c.infer("simple", inputs, **kw).as_numpy("OUTPUT0"), a + a)


def _fails(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


FRONTS = pytest.mark.parametrize("front", ["--grpc-fast-path=true", "--grpc-fast-path=false"])


@FRONTS
def test_tls(example_repo, server_factory, pki, front):
    srv = server_factory(
        example_repo,
        front,
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={pki['server.pem']}",
        f"--grpc-server-key={pki['server-key.pem']}",
    )
    c = grpcclient.InferenceServerClient(srv.grpc_url, ssl=True, root_certificates=pki["ca.pem"])
    assert c.is_server_live()
    _ok(c)
    results = []
    c.start_stream(callback=lambda result, error: results.append((result, error)))
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    inputs = [grpcclient.InferInput(f"INPUT{i}", [1, 16], "INT32") for i in (0, 1)]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    for i in range(3):
        c.async_stream_infer("simple", inputs, request_id=str(i))
    c.stop_stream()
    assert [r.get_response().id for r, e in results if e is None] == ["0", "1", "2"]
    c.close()
    plain = grpcclient.InferenceServerClient(srv.grpc_url)
    assert _fails(lambda: plain.is_server_live(client_timeout=10)).status() in (
        "StatusCode.UNAVAILABLE",
        "StatusCode.DEADLINE_EXCEEDED",
    )
    plain.close()


@FRONTS
def test_mutual_tls(example_repo, server_factory, pki, front):
    srv = server_factory(
        example_repo,
        front,
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={pki['server.pem']}",
        f"--grpc-server-key={pki['server-key.pem']}",
        f"--grpc-root-cert={pki['ca.pem']}",
    )
    c = grpcclient.InferenceServerClient(
        srv.grpc_url,
        ssl=True,
        root_certificates=pki["ca.pem"],
        private_key=pki["client-key.pem"],
        certificate_chain=pki["client.pem"],
    )
    _ok(c)
    c.close()
    anonymous = grpcclient.InferenceServerClient(
        srv.grpc_url, ssl=True, root_certificates=pki["ca.pem"]
    )
    assert _fails(lambda: anonymous.is_server_live(client_timeout=10)).status() in (
        "StatusCode.UNAVAILABLE",
        "StatusCode.DEADLINE_EXCEEDED",
    )
    anonymous.close()


def test_tls_handshake_on_the_lean_front(example_repo, server_factory, pki):
    """ALPN h2 and TLS 1.2+; a client without a certificate is refused at the handshake; one
    that connects and never handshakes is closed after --http-header-timeout."""
    srv = server_factory(
        example_repo,
        "--http-header-timeout=1",
        "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={pki['server.pem']}",
        f"--grpc-server-key={pki['server-key.pem']}",
        f"--grpc-root-cert={pki['ca.pem']}",
    )
    pid = srv.process.pid
    baseline = len(os.listdir(f"/proc/{pid}/fd"))

    def client(cert: bool, version=ssl.TLSVersion.TLSv1_2) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=pki["ca.pem"])
        context.set_alpn_protocols(["h2"])
        context.maximum_version = version
        if cert:
            context.load_cert_chain(pki["client.pem"], pki["client-key.pem"])
        raw = socket.create_connection(("127.0.0.1", srv.grpc_port), timeout=20)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")

    with client(cert=True) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        assert tls.version() == "TLSv1.2"
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with client(cert=False, version=ssl.TLSVersion.TLSv1_3) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert tls.recv(1024) == b""  # TLS 1.3 tells the client after its handshake
            raise ConnectionError("closed")
    silent = [socket.create_connection(("127.0.0.1", srv.grpc_port), timeout=20) for _ in range(20)]
    for sock in silent:
        assert sock.recv(1024) == b""  # closed by the handshake timeout
        sock.close()
    deadline = time.monotonic() + 10
    while len(os.listdir(f"/proc/{pid}/fd")) > baseline and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(os.listdir(f"/proc/{pid}/fd")) <= baseline


def test_restricted_protocol(example_repo, server_factory):
    srv = server_factory(
        example_repo,
        "--grpc-restricted-protocol=health,metadata:admin-key=admin-value",
        "--grpc-restricted-protocol=inference:infer-key=infer-value",
    )
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    e = _fails(c.is_server_live)
    assert e.status() == "StatusCode.UNAVAILABLE"
    assert "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'" in (
        e.message()
    )
    assert _fails(lambda: c.get_model_metadata("simple")).status() == "StatusCode.UNAVAILABLE"
    wrong = {"triton-grpc-protocol-admin-key": "guess"}
    assert _fails(lambda: c.is_server_live(headers=wrong)).status() == "StatusCode.UNAVAILABLE"
    admin = {"triton-grpc-protocol-admin-key": "admin-value"}
    assert c.is_server_live(headers=admin)
    assert c.get_model_metadata("simple", headers=admin).name == "simple"
    assert c.get_model_config("simple").config.name == "simple"  # model-config: unrestricted
    from naiad.grpc import health_pb2, health_service_pb2_grpc

    with grpc.insecure_channel(srv.grpc_url) as channel:
        health = health_service_pb2_grpc.HealthStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        answer = health.Check(health_pb2.HealthCheckRequest(), metadata=list(admin.items()))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    e = _fails(lambda: _ok(c))
    assert "expecting header 'triton-grpc-protocol-infer-key'" in e.message()
    _ok(c, headers={"triton-grpc-protocol-infer-key": "infer-value"})
    errors = []
    c.start_stream(callback=lambda result, error: errors.append(error))
    try:
        c.async_stream_infer("simple", [])
    except InferenceServerException:
        pass  # the server already ended the stream
    c.stop_stream()
    assert errors and errors[0].status() == "StatusCode.UNAVAILABLE"
    c.close()


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--grpc-restricted-protocol=health:a=1", None),
        ("--grpc-restricted-protocol=healthy:a=1", "unknown restricted protocol 'healthy'"),
        ("--grpc-restricted-protocol=health", "option format is '<config name>:<setting>=<value>'"),
        ("--grpc-infer-response-compression-level=huge", "--grpc_infer_response_compression_level"),
        ("--grpc-infer-thread-count=1", "Must be in the range 2 to 128."),
        ("--grpc-max-response-pool-size=0", "must be greater than 0"),
        ("--grpc-header-forward-pattern=(", "invalid --grpc-header-forward-pattern"),
    ],
)
def test_bad_flag_values(example_repo, flag, message):
    args = [flag] if message else [flag, "--grpc-restricted-protocol=health,trace:b=2"]
    want = message or "restricted protocol 'health' can not be specified in multiple config groups"
    proc = subprocess.run(
        [sys.executable, "-m", "naiad", "serve", "--model-repository", str(example_repo), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert want in proc.stderr


def test_header_forwarding_reserved_names(example_repo, server_factory):
    srv = server_factory(example_repo, "--grpc-header-forward-pattern=^(x-fwd-|sequence_id)")
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    _ok(c, headers={"x-fwd-tenant": "blue", "other": "ignored"})
    e = _fails(lambda: _ok(c, headers={"sequence_id": "3"}))
    assert e.status() == "StatusCode.INVALID_ARGUMENT"
    assert "Header 'sequence_id' is reserved for Triton usage and cannot be forwarded." in (
        e.message()
    )
    c.close()


def test_compression_keepalive_and_reuse_port(example_repo, server_factory):
    srv = server_factory(
        example_repo,
        "--grpc-infer-response-compression-level=HIGH",
        "--grpc-keepalive-time=10000",
        "--grpc-keepalive-timeout=5000",
        "--grpc-keepalive-permit-without-calls=true",
        "--grpc-http2-max-pings-without-data=0",
        "--grpc-http2-min-recv-ping-interval-without-data=5000",
        "--grpc-http2-max-ping-strikes=0",
        "--grpc-max-connection-age=600000",
        "--grpc-max-connection-age-grace=1000",
        "--reuse-grpc-port=true",
        "--grpc-infer-allocation-pool-size=16",
    )
    c = grpcclient.InferenceServerClient(
        srv.grpc_url,
        keepalive_options=grpcclient.KeepAliveOptions(
            keepalive_time_ms=10000, keepalive_permit_without_calls=True
        ),
    )
    _ok(c)
    _ok(c, compression_algorithm="gzip")
    c.close()
    # SO_REUSEPORT: a second server may bind the same gRPC port
    twin = server_factory(
        example_repo,
        f"--grpc-port={srv.grpc_port}",
        "--grpc-address=127.0.0.1",
        "--reuse-grpc-port=true",
    )
    assert "Started GRPCInferenceService" in twin.log()
