"""The deployment helpers on their own (no Flower process): key material, command lines, connection file, ports, CLI errors."""

import argparse
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import tomllib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from launch import launch_cli, serve
from launch.certs import (
    CertificateError, certificate_hosts, check_superlink_tls, generate_node_key, generate_server_certificates,
    server_certificates,
)
from launch.flower_commands import (
    CommandError, flower_environment, node_config_text, superlink_command, supernode_command, write_run_config,
)
from launch.connection import write_connection
from launch.processes import PortInUseError, descendants, ensure_port_free, free_port, is_alive, start


# ------------------------------------------------------------------------------------------------ certificates
def test_server_certificate_is_signed_by_the_ca_and_names_every_host(tmp_path):
    paths = generate_server_certificates(tmp_path, ["127.0.0.1", "fedpref.example.org"])
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert certificate_hosts(paths.server_cert) == ["127.0.0.1", "fedpref.example.org"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert stat.S_IMODE(paths.server_key.stat().st_mode) == 0o600
    assert not list(tmp_path.glob("ca.key*"))  # the CA key is never written: nothing else can be signed


def test_node_keys_are_p384_in_the_openssh_format_flower_reads(tmp_path):
    key = generate_node_key(tmp_path, "node-1")
    private = serialization.load_ssh_private_key(key.private_key.read_bytes(), None)
    public = serialization.load_ssh_public_key(key.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert public.public_numbers() == private.public_key().public_numbers()
    assert stat.S_IMODE(key.private_key.stat().st_mode) == 0o600


def test_key_material_is_never_overwritten(tmp_path):
    generate_server_certificates(tmp_path, ["127.0.0.1"])
    with pytest.raises(CertificateError, match="already exists"):
        generate_server_certificates(tmp_path, ["127.0.0.1"])
    generate_node_key(tmp_path, "a")
    with pytest.raises(CertificateError, match="refusing to overwrite a private key"):
        generate_node_key(tmp_path, "a")


@pytest.mark.parametrize("hosts,message", [([], "at least one host"), (["bad host"], "neither an IP address nor a DNS name")])
def test_certificates_need_real_hosts(tmp_path, hosts, message):
    with pytest.raises(CertificateError, match=message):
        generate_server_certificates(tmp_path, hosts)


def test_node_names_cannot_escape_the_key_folder(tmp_path):
    with pytest.raises(CertificateError, match="must be letters"):
        generate_node_key(tmp_path, "../evil")


def test_missing_tls_files_are_named_with_how_to_create_them(tmp_path):
    with pytest.raises(CertificateError, match=r"ca\.pem.*server\.pem.*server\.key.*python -m launch certs"):
        server_certificates(tmp_path).check()


# ----------------------------------------------------------------------------------------------- command lines
def test_superlink_runs_on_loopback_with_tls_node_authentication_and_process_isolation(tmp_path):
    secure = superlink_command(port=9093, database=tmp_path / "s.db", certificates=server_certificates(tmp_path),
                               secret_file=tmp_path / "secret")
    assert "--enable-supernode-auth" in secure and "--ssl-certfile" in secure and "--insecure" not in secure
    assert "--disable-runtime-dependency-installation" in secure
    assert secure[secure.index("--host") + 1] == "127.0.0.1" and secure[secure.index("--isolation") + 1] == "process"
    assert secure[secure.index("--superexec-auth-secret-file") + 1] == str(tmp_path / "secret")
    insecure = superlink_command(port=9093, database=tmp_path / "s.db", certificates=None, secret_file=tmp_path / "s")
    assert "--insecure" in insecure and "--enable-supernode-auth" not in insecure


def test_supernode_command_names_its_log_and_key(tmp_path):
    argv = supernode_command(superlink="127.0.0.1:9092", runtime_port=9101, node_config={"log-db": "/d/my log.db"},
                             root_certificates="ca.pem", private_key="n.key", secret_file="s")
    assert argv[argv.index("--node-config") + 1] == 'log-db="/d/my log.db"'
    assert argv[argv.index("--root-certificates") + 1] == "ca.pem" and "--auth-supernode-private-key" in argv
    assert argv[argv.index("--host") + 1] == "127.0.0.1" and argv[argv.index("--isolation") + 1] == "process"


def test_node_config_text_parses_back_with_flowers_parser():
    from flwr.common.config import parse_config_args

    values = {"log-db": "/data/it's here/events.db", "partition-id": 3, "flag": True}
    assert parse_config_args([node_config_text(values)]) == values
    with pytest.raises(CommandError, match="cannot hold both"):
        node_config_text({"log-db": "a'b\"c"})


def test_flower_processes_get_the_venv_first_and_no_runtime_env(tmp_path):
    env = flower_environment(tmp_path, base={"PATH": "/usr/bin"})
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1" and env["FLWR_HOME"] == str(tmp_path.resolve())


def test_run_config_file_holds_the_overrides_and_refuses_a_relative_output_dir(tmp_path):
    path = write_run_config(tmp_path / "r.toml", config_name="deploy", overrides=["a='x y'"], output_dir=tmp_path / "out")
    assert tomllib.loads(path.read_text()) == {"config-name": "deploy", "overrides": '["a=\'x y\'"]', "output-dir": str(tmp_path / "out")}
    with pytest.raises(CommandError, match="absolute path"):
        write_run_config(tmp_path / "r.toml", config_name="deploy", overrides=[], output_dir="relative")


def test_connection_entry_keeps_the_other_entries_of_the_file(tmp_path):
    (tmp_path / "config.toml").write_text('[superlink]\ndefault = "other"\n[superlink.other]\naddress = "x:1"\n')
    (tmp_path / "ca.pem").write_text("x")
    write_connection(tmp_path, "fedpref", address="127.0.0.1:9092", root_certificates=tmp_path / "ca.pem")
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["other"] == {"address": "x:1"} and config["superlink"]["default"] == "other"
    assert config["superlink"]["fedpref"] == {"address": "127.0.0.1:9092", "root-certificates": str(tmp_path / "ca.pem")}


# ------------------------------------------------------------------------------------------------------- ports
def test_a_port_in_use_is_reported_with_the_process_holding_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=rf"port {port} on 127\.0\.0\.1 is already in use \(held by pid {os.getpid()}"):
            ensure_port_free("127.0.0.1", port, "SuperLink")
    ensure_port_free("127.0.0.1", port, "SuperLink")  # released


def test_stopping_a_process_stops_what_it_spawned_in_another_session(tmp_path):
    # A parent that starts a child in its own session (as flower-superlink starts flower-superexec), then sleeps.
    script = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
              "start_new_session=True); time.sleep(60)")
    process = start("parent", [sys.executable, "-c", script], log_path=tmp_path / "p.log", env=os.environ)
    deadline = time.monotonic() + 20
    while not descendants(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = [process.pid, *descendants(process.pid)]
    assert len(tree) == 2
    assert process.stop(timeout_s=5) == []
    assert not any(is_alive(p) for p in tree)


# --------------------------------------------------------------------------------------------------------- CLI
def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch", *args], capture_output=True, text=True, timeout=60)


def test_cli_refuses_to_start_a_superlink_without_certificates(tmp_path):
    result = _cli("superlink", "--certs", str(tmp_path), "--port", str(free_port()))
    assert result.returncode == 2 and "TLS files not found" in result.stderr


def _superlink_args(*extra: str) -> argparse.Namespace:
    return launch_cli.build_parser().parse_args(["superlink", "--port", str(free_port()), "--local-port", str(free_port()), *extra])


def test_cli_insecure_mode_needs_the_flag_and_warns(tmp_path, capsys):
    plan = serve.plan_superlink(_superlink_args("--insecure", "--state", str(tmp_path / "s.db")))
    assert "--insecure" in plan.superlink and "WARNING: --insecure" in capsys.readouterr().err


def test_cli_refuses_a_supernode_without_a_log_store_or_key(tmp_path):
    generate_server_certificates(tmp_path / "certs", ["127.0.0.1"])
    missing_log = _cli("supernode", "--superlink", "127.0.0.1:9", "--ca", str(tmp_path / "certs" / "ca.pem"), "--key",
                       str(tmp_path / "none.key"), "--log-db", str(tmp_path / "none.db"), "--port", str(free_port()))
    assert missing_log.returncode == 2 and "no log store there" in missing_log.stderr and "client.logs import" in missing_log.stderr
    from client.log_store import LogStore

    LogStore.open(tmp_path / "events.db").close()
    (tmp_path / "approved.txt").write_text("0" * 64 + "\n")
    missing_key = _cli("supernode", "--superlink", "127.0.0.1:9", "--ca", str(tmp_path / "certs" / "ca.pem"), "--key",
                       str(tmp_path / "none.key"), "--log-db", str(tmp_path / "events.db"), "--port", str(free_port()),
                       "--approved-apps", str(tmp_path / "approved.txt"))
    assert missing_key.returncode == 2 and "--key" in missing_key.stderr and "does not exist" in missing_key.stderr
    bad_address = _cli("supernode", "--superlink", "localhost", "--insecure", "--log-db", str(tmp_path / "events.db"))
    assert bad_address.returncode == 2 and "must be HOST:PORT" in bad_address.stderr


# ------------------------------------------------------------------------------------------------ issue 16, item 8-9
def test_every_option_of_every_subcommand_has_help_text_and_defaults_are_shown():
    parser = launch_cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
    superlink = subparsers.choices["superlink"].format_help()
    assert "9092" in superlink and "deploy/superlink/state.db" in superlink and "127.0.0.1" in superlink
    assert "9094" in subparsers.choices["supernode"].format_help()


@pytest.mark.parametrize("host", ["300.1.1.1", "1.2.3", "256.0.0.1", "-dash.example", "a..b", "under_score.example",
                                  "x" * 64 + ".example", "."])
def test_certificates_refuse_what_is_neither_an_ip_address_nor_a_dns_name(tmp_path, host):
    with pytest.raises(CertificateError, match="neither an IP address nor a DNS name"):
        generate_server_certificates(tmp_path, [host])
    assert not (tmp_path / "ca.pem").exists()


def test_certificates_accept_real_dns_names_and_ip_addresses(tmp_path):
    hosts = ["localhost", "fedpref.example.org", "node-1.lan", "10.0.0.1", "::1"]
    paths = generate_server_certificates(tmp_path, hosts)
    assert sorted(certificate_hosts(paths.server_cert)) == sorted(hosts)


def _tls_server(certs) -> tuple[socket.socket, threading.Thread]:
    """A TLS listener with the SuperLink's certificate that completes handshakes (what a client verifies first)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = listener.accept()
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_a_superlink_certificate_from_another_ca_is_named_as_a_certificate_problem(tmp_path):
    ours = generate_server_certificates(tmp_path / "ours", ["127.0.0.1"])
    other = generate_server_certificates(tmp_path / "other", ["127.0.0.1"])
    listener, _ = _tls_server(ours)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    try:
        check_superlink_tls(address, ours.ca_cert)  # the right CA: no error
        with pytest.raises(CertificateError) as caught:
            check_superlink_tls(address, other.ca_cert)
    finally:
        listener.close()
    message = str(caught.value)
    assert "certificate" in message and str(other.ca_cert) in message and "network" not in message


def test_an_unreachable_superlink_is_named_with_its_address(tmp_path):
    certs = generate_server_certificates(tmp_path, ["127.0.0.1"])
    with pytest.raises(CertificateError, match=r"cannot reach the SuperLink at 127\.0\.0\.1:\d+"):
        check_superlink_tls(f"127.0.0.1:{free_port()}", certs.ca_cert)


def test_the_superlink_state_file_is_private_new_or_pre_existing(tmp_path):
    fresh, old = tmp_path / "new" / "state.db", tmp_path / "state.db"
    old.write_bytes(b"")
    os.chmod(old, 0o644)
    for state in (fresh, old):
        serve.plan_superlink(_superlink_args("--insecure", "--state", str(state)))
        assert stat.S_IMODE(state.stat().st_mode) == 0o600


# ------------------------------------------------------------------------------------------ issue 23, item 4
def test_certs_always_list_loopback_where_the_proxy_and_flwr_reach_the_superlink(tmp_path):
    result = _cli("certs", "--out", str(tmp_path), "--host", "fedpref.example.org")
    assert result.returncode == 0, result.stderr
    assert certificate_hosts(tmp_path / "server.pem") == ["127.0.0.1", "fedpref.example.org"]


def test_a_superlink_certificate_without_loopback_is_refused(tmp_path):
    generate_server_certificates(tmp_path / "certs", ["fedpref.example.org"])
    result = _cli("superlink", "--certs", str(tmp_path / "certs"), "--port", str(free_port()), "--local-port",
                  str(free_port()), "--state", str(tmp_path / "s.db"))
    assert result.returncode == 2 and "lists ['fedpref.example.org'] but not 127.0.0.1" in result.stderr


def test_the_public_and_local_ports_must_differ(tmp_path):
    port = str(free_port())
    result = _cli("superlink", "--insecure", "--port", port, "--local-port", port, "--state", str(tmp_path / "s.db"))
    assert result.returncode == 2 and f"--local-port {port} must differ from --port {port}" in result.stderr


def test_a_device_needs_a_valid_approved_apps_file(tmp_path):
    from client.log_store import LogStore

    LogStore.open(tmp_path / "events.db").close()
    device = ["supernode", "--superlink", "127.0.0.1:9", "--insecure", "--log-db", str(tmp_path / "events.db"),
              "--port", str(free_port())]
    missing = _cli(*device)
    assert missing.returncode == 2 and "--approved-apps FILE is required" in missing.stderr and "app-hash" in missing.stderr
    (tmp_path / "approved.txt").write_text("not-a-hash\n")
    bad = _cli(*device, "--approved-apps", str(tmp_path / "approved.txt"))
    assert bad.returncode == 2 and f"{tmp_path / 'approved.txt'}:1: each entry must be" in bad.stderr


def test_app_hash_prints_the_hash_alone_in_process(tmp_path, capsys):
    """On a tiny app folder (bundling this project's takes seconds: the slow twin below does it)."""
    from launch.approved_apps import bundle_hash
    from launch.launch_cli import main
    from tests.helpers import ROOT

    app = tmp_path / "app"
    for folder in ("client", "model", "privacy", "protocol", "server", "storage", "validation"):  # fab-include's
        (app / folder).mkdir(parents=True)
        (app / folder / "tiny.py").write_text("X = 1\n")
    (app / "conf").mkdir()
    (app / "conf" / "tiny.yaml").write_text("x: 1\n")
    (app / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())  # the project's app config
    assert main(["app-hash", "--app-dir", str(app)]) == 0 and capsys.readouterr().out == bundle_hash(app) + "\n"
    assert main(["app-hash", "--app-dir", str(tmp_path)]) == 2
    assert "has no pyproject.toml" in capsys.readouterr().err


@pytest.mark.slow  # two child processes that each import the launcher: the same as above, as a shell sees it
def test_app_hash_prints_the_hash_alone(tmp_path):
    from launch.approved_apps import bundle_hash
    from tests.helpers import ROOT

    result = _cli("app-hash")
    assert result.returncode == 0 and result.stdout == bundle_hash(ROOT) + "\n"
    assert _cli("app-hash", "--app-dir", str(tmp_path)).returncode == 2
