"""Where an agent finds its S3 endpoint, region and credentials.

In order: the config's ``s3:`` section, then the usual environment (``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_CA_BUNDLE``), then a profile
(``s3.profile``, else ``AWS_PROFILE``, else ``default``) in the shared credentials file
(``AWS_SHARED_CREDENTIALS_FILE``, else ``~/.aws/credentials``). Credentials are read on the
agent, where they live; they never cross the wire.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import attrs


class S3ConfigError(Exception):
    """No usable endpoint or credentials. One line."""


@attrs.frozen
class Endpoint:
    scheme: str  # http | https
    host: str
    port: int

    @property
    def url(self) -> str:
        default = 443 if self.scheme == "https" else 80
        port = "" if self.port == default else f":{self.port}"
        return f"{self.scheme}://{self.host}{port}"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise S3ConfigError(f"s3 endpoint {url!r} is not an http:// or https:// URL")
        if parts.path not in ("", "/"):
            raise S3ConfigError(f"s3 endpoint {url!r} must not have a path")
        return cls(
            parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        )


@attrs.frozen
class S3Settings:
    bucket: str
    prefix: str
    endpoints: tuple[Endpoint, ...]
    region: str
    addressing: str  # path | virtual
    access_key: str
    secret_key: str = attrs.field(repr=False)
    session_token: str | None = attrs.field(repr=False)
    multipart_threshold: int
    part_size: int
    verify_tls: bool
    ca_bundle: str | None  # PEM file of trusted CAs for https:// (else the system's)
    timeout_s: float
    sign_payload: bool


def resolve(
    bucket: str,
    prefix: str,
    options: object,
    environ: Mapping[str, str] | None = None,
) -> S3Settings:
    """Settings for one agent; ``S3ConfigError`` says what is missing and where it looked."""
    env = os.environ if environ is None else environ
    o = options  # trio_bench.config.S3Options (kept untyped here to avoid an import cycle)
    region = (
        getattr(o, "region", None)
        or env.get("AWS_REGION")
        or env.get("AWS_DEFAULT_REGION")
        or "us-east-1"
    )
    urls = list(getattr(o, "endpoints", ()) or ())
    single = (
        getattr(o, "endpoint", None)
        or env.get("AWS_ENDPOINT_URL_S3")
        or env.get("AWS_ENDPOINT_URL")
    )
    if not urls:
        urls = [single or f"https://s3.{region}.amazonaws.com"]
    endpoints = tuple(Endpoint.parse(u) for u in urls)
    access, secret, token = _credentials(getattr(o, "profile", None), env)
    return S3Settings(
        bucket=bucket,
        prefix=prefix,
        endpoints=endpoints,
        region=region,
        addressing=getattr(o, "addressing", "path"),
        access_key=access,
        secret_key=secret,
        session_token=token,
        multipart_threshold=getattr(o, "multipart_threshold", 64 * 2**20),
        part_size=getattr(o, "part_size", 16 * 2**20),
        verify_tls=getattr(o, "verify_tls", True),
        ca_bundle=getattr(o, "ca_bundle", None) or env.get("AWS_CA_BUNDLE") or None,
        timeout_s=getattr(o, "timeout", 30 * 10**9) / 1e9,
        sign_payload=getattr(o, "sign_payload", False),
    )


def _credentials(profile: str | None, env: Mapping[str, str]) -> tuple[str, str, str | None]:
    if not profile and env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
    name = profile or env.get("AWS_PROFILE") or "default"
    path = Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials")
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error as exc:
        raise S3ConfigError(f"s3 credentials file {path}: {exc}") from None
    if parser.has_section(name):
        section = parser[name]
        key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
        if key and secret:
            return key, secret, section.get("aws_session_token")
        raise S3ConfigError(f"s3 credentials file {path}: profile [{name}] lacks a key or secret")
    raise S3ConfigError(
        "s3: no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on the agent, or "
        f"give a profile [{name}] in {path}"
    )
