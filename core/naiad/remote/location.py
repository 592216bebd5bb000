"""Where a remote model repository lives, and how to open it with fsspec.

Triton's URL forms (docs/deploy.md):

- ``s3://bucket/path``; ``s3://host:port/bucket/path`` for an S3-compatible endpoint of one's own
  (plain HTTP, as in Triton), ``s3://https://host:port/bucket/path`` for HTTPS;
- ``gs://bucket/path``;
- ``as://account/container/path`` (Azure Blob Storage).

Credentials come from each SDK's usual environment variables and files, or from Triton's
``TRITON_CLOUD_CREDENTIAL_PATH`` JSON (the longest matching key wins). Nothing here imports
fsspec or a cloud SDK: this module only parses.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

#: URL scheme -> (fsspec protocol, the package that provides it, naiad's extra)
PROTOCOLS = {
    "s3": ("s3", "s3fs", "s3"),
    "gs": ("gcs", "gcsfs", "gcs"),
    "as": ("abfs", "adlfs", "azure"),
}
#: where Triton lets a remote repository be copied to (else a private temporary folder)
MOUNT_DIRECTORY_ENV = {
    "s3": "TRITON_AWS_MOUNT_DIRECTORY",
    "gs": "TRITON_GCS_MOUNT_DIRECTORY",
    "as": "TRITON_AZURE_MOUNT_DIRECTORY",
}
CREDENTIAL_PATH_ENV = "TRITON_CLOUD_CREDENTIAL_PATH"

_S3_ENDPOINT = re.compile(r"^(?:(https?)://)?([0-9A-Za-z\-.]+):([0-9]+)/(.*)$")


class LocationError(ValueError):
    """A repository URL that cannot be used (malformed, or its credentials file is)."""


def is_remote(location: object) -> bool:
    """True for ``s3://``, ``gs://`` and ``as://`` repository locations."""
    if not isinstance(location, str):
        return False
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme in PROTOCOLS


@dataclass(frozen=True, slots=True)
class RemoteLocation:
    """A parsed repository URL: the fsspec protocol, the root path and the options to open it."""

    url: str
    scheme: str
    #: path in the filesystem's own form: ``bucket/prefix`` (Azure: ``container/prefix``)
    root: str
    #: keyword arguments for ``fsspec.filesystem(protocol, **options)``
    options: dict = field(default_factory=dict, compare=False)

    @property
    def protocol(self) -> str:
        return PROTOCOLS[self.scheme][0]

    @property
    def package(self) -> str:
        return PROTOCOLS[self.scheme][1]

    @property
    def extra(self) -> str:
        return PROTOCOLS[self.scheme][2]


def parse_location(url: str, environ: Mapping[str, str] | None = None) -> RemoteLocation:
    """Parse ``url``; credentials from ``TRITON_CLOUD_CREDENTIAL_PATH`` when it is set.

    Raises LocationError for a URL without a bucket (or account/container) or a bad JSON file.
    """
    env: Mapping[str, str] = os.environ if environ is None else environ
    scheme, _, rest = url.partition("://")
    if scheme not in PROTOCOLS:
        raise LocationError(f"'{url}' is not an s3://, gs:// or as:// URL")
    credentials = _credentials_for(url, scheme, env)
    if scheme == "gs":
        return _parse_gs(url, rest, credentials)
    if not isinstance(credentials, dict):
        raise LocationError(
            f"{CREDENTIAL_PATH_ENV} file: the '{scheme}' entry for '{url}' must be an object"
        )
    if scheme == "s3":
        return _parse_s3(url, rest, credentials, env)
    return _parse_as(url, rest, credentials, env)


def _clean(path: str) -> str:
    return "/".join(part for part in path.split("/") if part)


def _parse_s3(url: str, rest: str, cred: dict, env: Mapping[str, str]) -> RemoteLocation:
    options: dict = {"skip_instance_cache": True, "use_listings_cache": False}
    client_kwargs: dict = {}
    match = _S3_ENDPOINT.match(rest)
    if match:
        secure, host, port, rest = match.groups()
        client_kwargs["endpoint_url"] = f"{secure or 'http'}://{host}:{port}"
    root = _clean(rest)
    if not root:
        raise LocationError(f"'{url}' names no bucket")
    if cred.get("key_id"):
        options["key"] = cred["key_id"]
    if cred.get("secret_key"):
        options["secret"] = cred["secret_key"]
    if cred.get("session_token"):
        options["token"] = cred["session_token"]
    if cred.get("profile"):
        options["profile"] = cred["profile"]
    region = cred.get("region") or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION")
    if region:
        client_kwargs["region_name"] = region
    options["client_kwargs"] = client_kwargs
    # fail in seconds, not minutes, when the endpoint does not answer
    options["config_kwargs"] = {"connect_timeout": 10, "retries": {"max_attempts": 3}}
    return RemoteLocation(url, "s3", root, options)


def _parse_gs(url: str, rest: str, cred: dict | str) -> RemoteLocation:
    root = _clean(rest)
    if not root:
        raise LocationError(f"'{url}' names no bucket")
    options: dict = {"skip_instance_cache": True}
    if isinstance(cred, str) and cred:
        options["token"] = cred  # path of a service-account or authorized-user JSON
    return RemoteLocation(url, "gs", root, options)


def _parse_as(url: str, rest: str, cred: dict, env: Mapping[str, str]) -> RemoteLocation:
    account, _, path = rest.partition("/")
    root = _clean(path)
    if not account or not root:
        raise LocationError(f"'{url}' must be as://account/container[/path]")
    options: dict = {
        "skip_instance_cache": True,
        "account_name": cred.get("account_str") or account,
    }
    key = cred.get("account_key") if cred else None
    auth = (cred.get("auth_type") if cred else None) or env.get("AZURE_STORAGE_AUTH_TYPE", "")
    if key is None and not auth:
        key = env.get("AZURE_STORAGE_KEY")
    if key:
        options["account_key"] = key
    elif auth in ("managed_identity", "default"):
        # adlfs then uses azure-identity's DefaultAzureCredential, managed identity included (a
        # user-assigned one's client id goes in AZURE_CLIENT_ID: adlfs reads Triton's
        # AZURE_STORAGE_CLIENT_ID as a service principal's)
        options["anon"] = False
    return RemoteLocation(url, "as", root, options)


def _credentials_for(url: str, scheme: str, env: Mapping[str, str]) -> dict | str:
    """The entry of Triton's credential file for ``url`` (longest matching key), or {}."""
    path = env.get(CREDENTIAL_PATH_ENV)
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError) as exc:
        raise LocationError(f"cannot read {CREDENTIAL_PATH_ENV} file '{path}': {exc}") from exc
    entries = table.get(scheme, {}) if isinstance(table, dict) else {}
    if not isinstance(entries, dict):
        raise LocationError(f"{CREDENTIAL_PATH_ENV} file '{path}': '{scheme}' must be an object")
    matches = [key for key in entries if url.startswith(key)]
    if not matches:
        return {}
    return entries[max(matches, key=len)]
