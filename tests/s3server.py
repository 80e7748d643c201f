"""Real S3 API servers for the tests, both verifying SigV4 signatures.

- moto in server mode (Python), in its own virtualenv built once (``.cache/moto-venv``, ~30 s,
  from PyPI). ``INITIAL_NO_AUTH_ACTION_COUNT`` lets exactly the three IAM calls that create our
  user, its policy and its access key through unauthenticated; every request after that must be
  correctly signed by a known key.
- s3rver (Node.js, an independent implementation), installed once with npm into
  ``.cache/s3rver`` (~5 s); its one account is S3RVER/S3RVER. It also serves https:// with a
  certificate from a test CA (trustme), for the TLS tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".cache" / "moto-venv"
MOTO_SPEC = "moto[server]>=5"
S3RVER_DIR = ROOT / ".cache" / "s3rver"
S3RVER_SPEC = "s3rver@3.7.1"


class Unavailable(Exception):
    pass


def ensure_moto() -> Path:
    server = VENV / "bin" / "moto_server"
    if server.exists():
        return server
    VENV.parent.mkdir(exist_ok=True)
    _install([sys.executable, "-m", "venv", str(VENV)], f"a virtualenv at {VENV}")
    _install([str(VENV / "bin" / "pip"), "install", "-q", MOTO_SPEC], f"{MOTO_SPEC} into {VENV}")
    return server


def _install(argv: list[str], what: str) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=600)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"could not install {what}: {exc}") from None


def ensure_s3rver() -> Path:
    server = S3RVER_DIR / "node_modules" / ".bin" / "s3rver"
    if server.exists():
        return server
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise Unavailable("s3rver needs Node.js and npm, which are not installed")
    S3RVER_DIR.mkdir(parents=True, exist_ok=True)
    _install(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(S3RVER_DIR), S3RVER_SPEC],
        f"{S3RVER_SPEC} (npm) into {S3RVER_DIR}",
    )
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@attrs.define
class S3TestServer:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    access_key: str = ""
    secret_key: str = ""
    ca_bundle: str | None = None  # set when serving https://

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.ca_bundle else "http"
        return f"{scheme}://{'localhost' if self.ca_bundle else '127.0.0.1'}:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """What an agent needs in its environment to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            **({"AWS_CA_BUNDLE": self.ca_bundle} if self.ca_bundle else {}),
            **overrides,
        }

    def client(self, service: str = "s3"):  # type: ignore[no-untyped-def]
        import botocore.session

        return botocore.session.get_session().create_client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            verify=self.ca_bundle or True,
        )

    def create_bucket(self, name: str) -> None:
        """Create ``name`` unless it exists (servers differ in what a second create says)."""
        client = self.client()
        try:
            client.head_bucket(Bucket=name)
        except client.exceptions.ClientError:
            client.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        paginator = self.client().get_paginator("list_objects_v2")
        return [
            o["Key"]
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        ]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _start(
    name: str, argv: list[str], port: int, env: dict[str, str], log: Path | None = None
) -> subprocess.Popen[bytes]:
    with open(log or os.devnull, "wb") as out:
        process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                process.wait()
                raise Unavailable(f"{name} did not start") from None
            time.sleep(0.1)


def start_s3rver(directory: Path, *, tls: bool = False) -> S3TestServer:
    """s3rver storing under ``directory``; with ``tls``, https:// on localhost with a
    certificate from a fresh test CA whose PEM is the server's ``ca_bundle``."""
    server_bin = ensure_s3rver()
    port = free_port()
    argv = [str(server_bin), "-d", str(directory / "data"), "-a", "127.0.0.1", "-p", str(port)]
    argv += ["--no-vhost-buckets"]
    ca_bundle = None
    if tls:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        cert.private_key_pem.write_to_path(str(directory / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
        argv += ["--key", str(directory / "key.pem"), "--cert", str(directory / "cert.pem")]
        ca_bundle = str(directory / "ca.pem")
    (directory / "data").mkdir(parents=True, exist_ok=True)
    # s3rver's continuation tokens use a cipher OpenSSL 3 keeps in its legacy provider
    process = _start(
        "s3rver",
        argv,
        port,
        {"NODE_OPTIONS": "--openssl-legacy-provider"},
        log=directory / "s3rver.log",  # its requests and errors, for a failing test
    )
    return S3TestServer("s3rver", process, port, "S3RVER", "S3RVER", ca_bundle)


def start_moto() -> S3TestServer:
    import botocore.session

    server_bin = ensure_moto()
    port = free_port()
    process = _start(
        "moto_server",
        [str(server_bin), "-H", "127.0.0.1", "-p", str(port)],
        port,
        {"INITIAL_NO_AUTH_ACTION_COUNT": "3"},
    )
    iam = botocore.session.get_session().create_client(
        "iam",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="triobench")
    iam.put_user_policy(
        UserName="triobench",
        PolicyName="everything",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
            }
        ),
    )
    key = iam.create_access_key(UserName="triobench")["AccessKey"]
    return S3TestServer("moto", process, port, key["AccessKeyId"], key["SecretAccessKey"])
