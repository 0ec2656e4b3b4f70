"""moto in server mode on a free loopback port, for the AWS tests (S3 here; EC2 for the cloud tests).

``MotoServer`` starts a ``ThreadedMotoServer`` on 127.0.0.1 (port 0: the kernel picks a free one)
and gives the environment a boto3 client, or a ``deepgrid`` subprocess and its Ray workers, need to
talk to it and only to it: fake keys, a region, ``AWS_ENDPOINT_URL``, and no shared config or
credentials file of the user's. ``require_auth()`` makes moto check access keys (it accepts any by
default), so that a wrong key gets the answer AWS gives.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import import_or_missing

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


class MotoServer:
    """A running moto server; ``url`` is its endpoint."""

    def __init__(self) -> None:
        server_module = import_or_missing("moto.server", "moto[server] is not installed (the dev extra)")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
        self._server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"

    def env(self, home: Path) -> dict[str, str]:
        """Variables that point boto3 (and every process that inherits them) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_CONFIG_FILE": str(home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "no-aws-credentials"),
            "HOME": str(home),
        }

    def patch_env(self, monkeypatch: pytest.MonkeyPatch, home: Path) -> dict[str, str]:
        """Set :meth:`env` in this process (and unset what would override it); returns it."""
        env = self.env(home)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EC2"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return env

    def client(self, service: str = "s3") -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY)

    def _post(self, path: str, body: bytes = b"") -> None:
        request = urllib.request.Request(self.url + path, data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()

    @contextmanager
    def require_auth(self) -> Iterator[None]:
        """Inside: requests with keys moto's IAM does not know are refused (InvalidAccessKeyId)."""
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")

    def reset(self) -> None:
        """Forget every bucket and resource."""
        self._post("/moto-api/reset")

    def stop(self) -> None:
        self._server.stop()


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        yield server
    finally:
        server.stop()
