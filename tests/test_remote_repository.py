"""Model repositories in object storage, against a real S3 server (moto's server mode) on
127.0.0.1 with IAM authentication on: real ONNX models uploaded as objects, the real naiad server
reading ``s3://127.0.0.1:PORT/bucket/path``, the real tritonclient talking to it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
from conftest import free_port
from httphelpers import simple_inputs
from tritonclient.utils import InferenceServerException

boto3 = pytest.importorskip("boto3", reason="moto[server] is in requirements-dev.txt")
pytest.importorskip("s3fs", reason="naiad[s3] is in requirements-dev.txt")
pytest.importorskip("moto", reason="moto[server] is in requirements-dev.txt")

REGION = "us-east-1"


@dataclass
class S3Server:
    port: int
    key_id: str
    secret: str

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, bucket: str, prefix: str) -> str:
        """Triton's form for an S3 endpoint of one's own: s3://host:port/bucket/path."""
        return f"s3://127.0.0.1:{self.port}/{bucket}/{prefix}"

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.key_id,
            aws_secret_access_key=self.secret,
        )

    def upload(self, local_repo: Path, bucket: str, prefix: str) -> None:
        s3 = self.client()
        for path in sorted(local_repo.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local_repo).as_posix()}"
                s3.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    """moto's S3 server as a subprocess. Its first three requests (unauthenticated) make an IAM
    user with an access key; every request after them must be signed with that key."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "wb")
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("moto's S3 server did not start")
            time.sleep(0.1)
    try:
        iam = boto3.client(
            "iam",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name=REGION,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="naiad")
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(UserName="naiad", PolicyName="all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="naiad")["AccessKey"]
        server = S3Server(port, key["AccessKeyId"], key["SecretAccessKey"])
        server.client().create_bucket(Bucket="models")
        yield server
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture
def aws_env(monkeypatch, s3, tmp_path):
    """The server's environment: the usual AWS variables (and nothing from this machine's
    ~/.aws), and a cache folder the test can look into."""
    for name in list(os.environ):
        if name.startswith("AWS_") or name.startswith("TRITON_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("TRITON_AWS_MOUNT_DIRECTORY", str(cache))
    return cache


def wait_for(predicate, timeout=30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except InferenceServerException:
            pass
        time.sleep(0.1)
    return False


def infer_simple(client) -> tuple[bool, bool]:
    """(OUTPUT0 == a + b, OUTPUT0 == a - b) for one request to ``simple``."""
    a, b, inputs = simple_inputs()
    out = client.infer("simple", inputs).as_numpy("OUTPUT0")
    return bool((out == a + b).all()), bool((out == a - b).all())


def swapped_simple():
    """``simple`` with its two outputs swapped: OUTPUT0 = INPUT0 - INPUT1."""
    from conftest import make_models as mm
    from onnx import TensorProto, helper

    ios = [
        mm._io(n, TensorProto.INT32, [mm.DIM]) for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")
    ]
    nodes = [
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT0"], name="sub"),
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT1"], name="add"),
    ]
    return mm._model(nodes, ios[:2], ios[2:], "simple")


@pytest.fixture
def remote_repo(s3, models, tmp_path, request):
    """``simple`` and ``mlp`` uploaded under a prefix of their own; the s3:// URL."""
    local = tmp_path / "upload"
    models.write_simple(local)
    models.write_mlp(local)
    prefix = request.node.name
    s3.upload(local, "models", prefix)
    return s3.url("models", prefix)


def test_load_and_infer_mixed_with_a_local_repository(
    aws_env, remote_repo, models, server_factory, tmp_path
):
    local = tmp_path / "local"
    models.write_simple_identity(local)
    srv = server_factory([local, remote_repo])
    c = httpclient.InferenceServerClient(srv.url)
    assert c.is_server_ready()
    assert infer_simple(c) == (True, False)
    x = np.random.default_rng(0).standard_normal((1, models.DIM)).astype(np.float32)
    inp = httpclient.InferInput("input", [1, models.DIM], "FP32")
    inp.set_data_from_numpy(x)
    out = c.infer("mlp", [inp]).as_numpy("output")
    np.testing.assert_allclose(out, models.mlp_numpy(x), rtol=1e-5, atol=1e-5)
    data = np.array([[b"from", b"disk"]], dtype=np.object_)
    inp = httpclient.InferInput("INPUT0", [1, 2], "BYTES")
    inp.set_data_from_numpy(data)
    assert c.infer("simple_identity", [inp]).as_numpy("OUTPUT0").tolist() == data.tolist()
    names = {m["name"] for m in c.get_model_repository_index()}
    assert names == {"simple", "mlp", "simple_identity"}
    # the models were downloaded into the cache folder, once
    cached = [p for p in aws_env.rglob("model.onnx")]
    assert len(cached) == 2
    assert srv.log().count("downloaded ") == 2
    c.close()


def test_poll_reloads_a_changed_object_and_nothing_else(
    aws_env, s3, remote_repo, models, server_factory, tmp_path
):
    srv = server_factory(remote_repo, "--model-control-mode=poll", "--repository-poll-secs=0.2")
    c = httpclient.InferenceServerClient(srv.url)
    assert infer_simple(c) == (True, False)
    assert srv.log().count("downloaded ") == 2
    # the model file of `simple` is replaced by one computing a - b
    bucket, prefix = "models", remote_repo.split("/models/", 1)[1]
    s3.client().put_object(
        Bucket=bucket,
        Key=f"{prefix}/simple/1/model.onnx",
        Body=swapped_simple().SerializeToString(),
    )
    assert wait_for(lambda: infer_simple(c) == (False, True))
    log = srv.log()
    # one file of one model came down again; mlp, unchanged through every poll, did not
    assert "downloaded 1 file(s) of model 'simple'" in log
    assert log.count("downloaded ") == 3
    assert log.count("model 'mlp' version 1 is READY") == 1
    # a removed model unloads
    s3.client().delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [
                {"Key": f"{prefix}/mlp/config.pbtxt"},
                {"Key": f"{prefix}/mlp/1/model.onnx"},
            ]
        },
    )
    assert wait_for(lambda: not c.is_model_ready("mlp"))
    assert infer_simple(c) == (False, True)
    c.close()


def test_explicit_load_unload_and_a_model_uploaded_later(
    aws_env, s3, remote_repo, models, server_factory, tmp_path
):
    srv = server_factory(remote_repo, "--model-control-mode=explicit")
    c = httpclient.InferenceServerClient(srv.url)
    assert not c.is_model_ready("simple")
    assert {m["name"] for m in c.get_model_repository_index()} == {"simple", "mlp"}
    c.load_model("simple")
    assert infer_simple(c) == (True, False)
    c.unload_model("simple")
    assert wait_for(lambda: not c.is_model_ready("simple"))
    # a model uploaded after start-up loads on request
    late = tmp_path / "late"
    models.write_simple_identity(late)
    s3.upload(late, "models", remote_repo.split("/models/", 1)[1])
    c.load_model("simple_identity")
    assert c.is_model_ready("simple_identity")
    with pytest.raises(InferenceServerException, match="failed to load 'nowhere'"):
        c.load_model("nowhere")
    # loading again downloads nothing that did not change
    c.load_model("simple")
    assert srv.log().count("downloaded 2 file(s) of model 'simple'") == 1
    c.close()


@pytest.mark.parametrize(
    "problem, expected",
    [
        ("bad credentials", "access denied, check the credentials"),
        ("missing bucket", "bucket or container not found"),
    ],
)
def test_unreadable_repository_is_a_clear_error_and_local_models_serve(
    problem, expected, aws_env, s3, remote_repo, models, server_factory, monkeypatch, tmp_path
):
    url = remote_repo
    if problem == "bad credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    else:
        url = s3.url("no-such-bucket", "repo")
    local = tmp_path / "local"
    models.write_simple_identity(local)
    # Triton's default --exit-on-error=true: a clear message and status 1, no traceback
    srv = server_factory([local, url], wait_ready=False)
    assert srv.process.wait(60) == 1
    assert f"cannot read model repository {url}: {expected}" in srv.log()
    assert "Traceback" not in srv.log()
    # --exit-on-error=false: the local model serves; loading from the remote says why it fails
    srv = server_factory(
        [local, url],
        "--exit-on-error=false",
        "--model-control-mode=explicit",
        "--load-model=simple_identity",
    )
    c = httpclient.InferenceServerClient(srv.url)
    assert c.is_model_ready("simple_identity")
    with pytest.raises(InferenceServerException) as info:
        c.load_model("simple")
    assert f"failed to load 'simple', cannot read model repository {url}: {expected}" in str(
        info.value
    )
    c.load_model("simple_identity")  # a local reload is untouched by the remote's state
    assert c.is_model_ready("simple_identity")
    assert "Traceback" not in srv.log()
    c.close()


def test_triton_credential_file(aws_env, s3, remote_repo, server_factory, monkeypatch, tmp_path):
    """TRITON_CLOUD_CREDENTIAL_PATH: the longest matching key gives the credentials."""
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    creds = tmp_path / "cloud_credential.json"
    good = {"key_id": s3.key_id, "secret_key": s3.secret, "region": REGION}
    bad = {"key_id": "nobody", "secret_key": "nothing", "region": REGION}
    creds.write_text(json.dumps({"s3": {"": bad, s3.url("models", ""): good}}))
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(creds))
    srv = server_factory(remote_repo)
    c = httpclient.InferenceServerClient(srv.url)
    assert infer_simple(c) == (True, False)
    c.close()


def test_import_naiad_does_not_import_fsspec():
    code = (
        "import sys, naiad, naiad.server, naiad.cli, naiad.models, naiad.remote;"
        "bad = [m for m in ('fsspec', 's3fs', 'gcsfs', 'adlfs', 'boto3') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- URL forms and credentials (no server needed) ------------------------------------------


def test_triton_url_forms():
    from naiad.remote import parse_location

    env: dict[str, str] = {}
    loc = parse_location("s3://bucket/path/to/repo", env)
    assert (loc.protocol, loc.root) == ("s3", "bucket/path/to/repo")
    assert "endpoint_url" not in loc.options["client_kwargs"]
    loc = parse_location("s3://minio.local:9000/bucket/repo/", env)
    assert loc.root == "bucket/repo"
    assert loc.options["client_kwargs"]["endpoint_url"] == "http://minio.local:9000"
    loc = parse_location("s3://https://minio.local:443/bucket/repo", env)
    assert loc.options["client_kwargs"]["endpoint_url"] == "https://minio.local:443"
    loc = parse_location("gs://bucket/repo", env)
    assert (loc.protocol, loc.root) == ("gcs", "bucket/repo")
    loc = parse_location("as://account/container/repo", {"AZURE_STORAGE_KEY": "k"})
    assert (loc.protocol, loc.root) == ("abfs", "container/repo")
    assert (loc.options["account_name"], loc.options["account_key"]) == ("account", "k")


def test_malformed_urls_are_usage_errors(server_factory, tmp_path):
    from naiad.remote import LocationError, parse_location

    for url in ("s3://", "gs:///", "as://account", "as://account/"):
        with pytest.raises(LocationError):
            parse_location(url, {})
    srv = server_factory("s3://", wait_ready=False)
    assert srv.process.wait(60) == 2
    assert "names no bucket" in srv.log()


def test_credential_file_longest_match(tmp_path):
    from naiad.remote import LocationError, parse_location

    path = tmp_path / "creds.json"
    path.write_text(
        json.dumps(
            {
                "s3": {
                    "": {"key_id": "K0", "secret_key": "S0", "region": "r0"},
                    "s3://bucket-2": {"key_id": "K2", "secret_key": "S2", "session_token": "T2"},
                },
                "gs": {"": "/default.json", "gs://special": "/special.json"},
                "as": {"as://acct/c": {"account_str": "acct", "account_key": "AK"}},
            }
        )
    )
    env = {"TRITON_CLOUD_CREDENTIAL_PATH": str(path)}
    one = parse_location("s3://bucket-1/repo", env).options
    two = parse_location("s3://bucket-2/repo", env).options
    assert (one["key"], one["secret"], one["client_kwargs"]["region_name"]) == ("K0", "S0", "r0")
    assert (two["key"], two["secret"], two["token"]) == ("K2", "S2", "T2")
    assert parse_location("gs://special/repo", env).options["token"] == "/special.json"
    assert parse_location("gs://other/repo", env).options["token"] == "/default.json"
    assert parse_location("as://acct/c/repo", env).options["account_key"] == "AK"
    path.write_text("{not json")
    with pytest.raises(LocationError, match="TRITON_CLOUD_CREDENTIAL_PATH"):
        parse_location("s3://bucket/repo", env)


def test_missing_extra_names_the_package(tmp_path):
    """A gs:// repository without gcsfs installed says which extra to install."""
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    from naiad.remote import open_repositories

    paths, remotes = open_repositories(
        ["gs://bucket/repo"], {"TRITON_GCS_MOUNT_DIRECTORY": str(tmp_path)}
    )
    assert remotes.refresh() == {}
    assert "pip install 'naiad[gcs]'" in remotes.errors["gs://bucket/repo"]
    assert paths[0].is_dir() and paths[0].parent == tmp_path


def test_unreachable_endpoint_is_a_clear_error(aws_env, tmp_path):
    from naiad.remote import open_repositories

    url = f"s3://127.0.0.1:{free_port()}/models/repo"  # nothing listens there
    paths, remotes = open_repositories([url])
    assert remotes.refresh() == {}
    assert remotes.errors[url].startswith(f"cannot read model repository {url}: ")
    assert paths[0].is_dir() and not any(paths[0].iterdir())


def test_an_outage_keeps_models_serving_and_never_loads_a_stale_cache(
    aws_env, s3, models, server_factory, tmp_path
):
    """EXPLICIT: a model loaded from the remote keeps serving while its bucket is gone; loading
    it then fails with the reason instead of reading the old files from the cache; once the
    bucket is back it loads again."""
    local = tmp_path / "upload"
    models.write_simple(local)
    bucket = s3.client()
    bucket.create_bucket(Bucket="outage")
    s3.upload(local, "outage", "repo")
    url = s3.url("outage", "repo")
    srv = server_factory(url, "--model-control-mode=explicit", "--load-model=simple")
    c = httpclient.InferenceServerClient(srv.url)
    assert infer_simple(c) == (True, False)
    keys = [o["Key"] for o in bucket.list_objects_v2(Bucket="outage")["Contents"]]
    bucket.delete_objects(Bucket="outage", Delete={"Objects": [{"Key": k} for k in keys]})
    bucket.delete_bucket(Bucket="outage")
    with pytest.raises(InferenceServerException, match="bucket or container not found"):
        c.load_model("simple")
    assert infer_simple(c) == (True, False)  # the loaded version still serves
    bucket.create_bucket(Bucket="outage")
    s3.upload(local, "outage", "repo")
    c.load_model("simple")
    assert infer_simple(c) == (True, False)
    c.close()


def test_a_kept_cache_is_not_downloaded_again_after_a_restart(aws_env, remote_repo, server_factory):
    """With TRITON_AWS_MOUNT_DIRECTORY the cache and its manifest outlive the process: the next
    start downloads nothing that did not change (a restarted container in its old pod)."""
    first = server_factory(remote_repo)
    assert first.log().count("downloaded ") == 2
    assert first.stop() == 0
    second = server_factory(remote_repo)
    c = httpclient.InferenceServerClient(second.url)
    assert infer_simple(c) == (True, False)
    assert "downloaded " not in second.log()
    c.close()


def test_the_private_cache_is_removed_at_shutdown(
    aws_env, remote_repo, server_factory, monkeypatch, tmp_path
):
    """Without a mount directory the cache is private to the process and goes with it."""
    monkeypatch.delenv("TRITON_AWS_MOUNT_DIRECTORY")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    srv = server_factory(remote_repo)
    caches = list(tmp.glob("naiad-remote-*"))
    assert len(caches) == 1
    assert (caches[0] / "simple" / "1" / "model.onnx").is_file()
    assert caches[0].stat().st_mode & 0o077 == 0  # no one else reads it
    assert srv.stop() == 0
    assert not caches[0].exists()
