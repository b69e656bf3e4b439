"""The public port's Caddy config (launch/proxy.py): Flower's Fleet routes and nothing else, no admin API, no ACME.

The live refusals (every Control and Runtime route, /docs, /openapi.json through the public address) are in
tests/test_deployment.py; these check the config itself and that the real Caddy accepts it.
"""

import json
import subprocess

from launch.certs import generate_server_certificates
from launch.proxy import FLEET_PATHS, caddy_binary, caddy_config, write_caddy_config


def _config(tmp_path, secure=True):
    certificates = generate_server_certificates(tmp_path / "certs", ["127.0.0.2", "127.0.0.1"]) if secure else None
    return caddy_config(listen_host="127.0.0.2", listen_port=9092, superlink_port=9093, certificates=certificates,
                        storage=tmp_path / "data")


def test_the_proxy_forwards_exactly_flowers_fleet_routes():
    from flwr.superlink.routers.fleet.router import router

    assert sorted((tuple(r.methods), r.path) for r in router.routes) == sorted((("POST",), p) for p in FLEET_PATHS)


def test_each_fleet_route_reaches_the_superlink_as_its_exact_path_and_everything_else_is_refused(tmp_path):
    routes = _config(tmp_path)["apps"]["http"]["servers"]["fleet"]["routes"]
    *forwarded, refuse = routes
    assert [r["match"] for r in forwarded] == [[{"method": ["POST"], "path": [p]}] for p in FLEET_PATHS]
    for route, path in zip(forwarded, FLEET_PATHS):
        rewrite, proxy = route["handle"]
        assert rewrite == {"handler": "rewrite", "uri": path} and route["terminal"] is True
        assert proxy["upstreams"] == [{"dial": "127.0.0.1:9093"}]
        assert proxy["transport"]["tls"]["server_name"] == "127.0.0.1"  # verified with the federation's CA
    assert "match" not in refuse and refuse["handle"] == [{"handler": "static_response", "status_code": 404, "close": True}]


def test_caddy_runs_without_its_admin_api_acme_or_udp_listener(tmp_path):
    config = _config(tmp_path)
    server = config["apps"]["http"]["servers"]["fleet"]
    assert config["admin"] == {"disabled": True, "config": {"persist": False}}
    assert server["automatic_https"] == {"disable": True} and server["protocols"] == ["h1", "h2"]  # no HTTP/3 (UDP)
    assert server["listen"] == ["127.0.0.2:9092"]


def test_an_insecure_proxy_has_no_tls_anywhere(tmp_path):
    config = _config(tmp_path, secure=False)
    assert "tls" not in config["apps"] and "tls_connection_policies" not in config["apps"]["http"]["servers"]["fleet"]
    assert all("transport" not in r["handle"][1] for r in config["apps"]["http"]["servers"]["fleet"]["routes"][:-1])


def test_the_real_caddy_accepts_the_config_and_it_is_private(tmp_path):
    certificates = generate_server_certificates(tmp_path / "certs", ["127.0.0.2", "127.0.0.1"])
    path = write_caddy_config(tmp_path / "proxy", listen_host="127.0.0.2", listen_port=9092, superlink_port=9093,
                              certificates=certificates)
    assert path.stat().st_mode & 0o077 == 0
    assert json.loads(path.read_text())["apps"]["tls"]["certificates"]["load_files"][0]["key"] == str(certificates.server_key)
    result = subprocess.run([str(caddy_binary()), "validate", "--config", str(path)], capture_output=True, text=True,
                            timeout=60, env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")})
    assert result.returncode == 0, result.stderr[-2000:]
