"""The outsider of tests/test_deployment.py: anyone who can reach the server's public address and holds only the
federation's public CA certificate (no node key, no secret). It drives Flower's own ``flwr`` CLI and plain HTTPS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import tomli_w

FLWR = str(Path(sys.executable).parent / "flwr")
CONNECTION = "target"


@dataclass(frozen=True)
class Response:
    status: int
    server: str
    body: bytes


@dataclass
class Outsider:
    home: Path
    address: str  # the public HOST:PORT
    ca: Path

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        connection = {"address": self.address, "root-certificates": str(self.ca)}
        (self.home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))

    def flwr(self, *args: object) -> subprocess.CompletedProcess:
        """``flwr ARGS...`` against the public address; stdout and stderr together in ``.stdout``."""
        env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "200"}
        argv = [FLWR, *map(str, args)]
        return subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)

    def request(self, method: str, path: str, body: bytes = b"", address: str | None = None) -> Response:
        """One HTTPS request (protobuf content type, as Flower's clients send), verified with the CA only."""
        context = ssl.create_default_context(cafile=str(self.ca))
        request = urllib.request.Request(f"https://{address or self.address}{path}", data=body if method != "GET" else None,
                                         method=method, headers={"content-type": "application/protobuf"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                return Response(response.status, response.headers.get("server", ""), response.read())
        except urllib.error.HTTPError as error:
            return Response(error.code, error.headers.get("server", ""), error.read())


def refuses_connections(host: str, port: int) -> bool:
    """True if nothing accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(5)
        return sock.connect_ex((host, port)) != 0
