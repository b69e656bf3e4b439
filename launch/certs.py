"""Key material for a real deployment: a private CA, the SuperLink's TLS certificate, and one ECDSA key per node.

TLS: the SuperLink presents ``server.pem`` (signed by ``ca.pem``) whose subjectAltName lists every host name and IP
address the nodes and the operator's ``flwr`` will dial; a SuperNode verifies it with ``--root-certificates ca.pem``.
Node authentication: each SuperNode signs its requests with its own ECDSA P-384 key (OpenSSH format, the format
``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` read); the SuperLink, started
with ``--enable-supernode-auth``, refuses any key that was not registered.

The SuperExec auth secret (``write_superexec_secret``) lets only our task launcher take tasks from a Runtime API.

Private keys are written with file mode 0600 and never overwritten: generating twice into one folder is refused,
so a running federation's keys cannot be replaced by accident.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
SERVER_DAYS = 365
CURVE = ec.SECP384R1()  # Flower accepts NIST curves for node keys; P-384 is its documented choice
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)", re.ASCII)


class CertificateError(ValueError):
    """Key material that cannot be generated or used; the message names the file or value and the rule."""


@dataclass(frozen=True)
class ServerCertificates:
    """Paths of the SuperLink's TLS material."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    def check(self) -> None:
        """Raise ``CertificateError`` naming every missing file, and how to create them."""
        missing = [str(p) for p in (self.ca_cert, self.server_cert, self.server_key) if not p.is_file()]
        if missing:
            raise CertificateError(
                f"TLS files not found: {', '.join(missing)}. Create them with "
                "`python -m launch certs --out DIR --host HOST` (or pass --insecure for a local test only)."
            )


@dataclass(frozen=True)
class NodeKey:
    """One SuperNode's authentication key pair (OpenSSH format)."""

    name: str
    private_key: Path
    public_key: Path


def server_certificates(folder: str | os.PathLike[str]) -> ServerCertificates:
    """The file names ``generate_server_certificates`` writes in ``folder``."""
    folder = Path(folder)
    return ServerCertificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")


def node_key(folder: str | os.PathLike[str], name: str) -> NodeKey:
    """The file names ``generate_node_key`` writes in ``folder`` for node ``name``."""
    folder = Path(folder)
    return NodeKey(name, folder / f"{name}.key", folder / f"{name}.pub")


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600; refuse to replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CertificateError(f"{path} already exists; refusing to overwrite a private key (delete it first).") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _write_public(path: Path, data: bytes) -> None:
    if path.exists():
        raise CertificateError(f"{path} already exists; refusing to overwrite it (delete it first).")
    path.write_bytes(data)


def is_dns_name(host: str) -> bool:
    """True for a host name of RFC 1123: dot-separated labels of letters, digits and inner hyphens, at most 63
    characters each and 253 in all, whose last label is not all digits (so 300.1.1.1 is a bad IP, not a name)."""
    labels = host.split(".")
    return (len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit())


def _subject_alt_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not is_dns_name(host):
                raise CertificateError(
                    f"host {host!r} is neither an IP address nor a DNS name (an IPv4 address has four numbers of "
                    "0-255; a name has labels of letters, digits and inner hyphens, and does not end in a number)."
                ) from None
            names.append(x509.DNSName(host))
    return names


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpref"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def generate_server_certificates(folder: str | os.PathLike[str], hosts: Sequence[str]) -> ServerCertificates:
    """Create a CA and a SuperLink certificate valid for ``hosts`` (IP addresses and/or DNS names).

    Raises:
        CertificateError: if ``hosts`` is empty or holds something that is not a host, or a file already exists.
    """
    if not hosts:
        raise CertificateError("at least one host (IP address or DNS name) is needed for the certificate's subjectAltName.")
    paths = server_certificates(folder)
    paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    sans = _subject_alt_names(hosts)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew between machines

    ca_key = ec.generate_private_key(CURVE)
    ca_name = _name("fedpref federation CA")
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(CURVE)
    server_cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if path.exists():
            raise CertificateError(f"{path} already exists; refusing to overwrite TLS material (delete the folder's files first).")
    # The CA's private key is not kept: nothing else is ever signed with it, so it cannot leak.
    _write_public(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_public(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.server_key, server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


def generate_node_key(folder: str | os.PathLike[str], name: str) -> NodeKey:
    """Create node ``name``'s ECDSA P-384 key pair (``NAME.key`` private, ``NAME.pub`` public, OpenSSH format).

    Raises:
        CertificateError: if ``name`` is not a plain file name or the key already exists.
    """
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise CertificateError(f"node name {name!r} must be letters, digits, '-', '_' or '.' (it names the key files).")
    paths = node_key(folder, name)
    paths.private_key.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(CURVE)
    _write_private(paths.private_key, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    _write_public(paths.public_key, key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return paths


def certificate_hosts(path: str | os.PathLike[str]) -> list[str]:
    """The host names and IP addresses a PEM certificate's subjectAltName lists (to explain TLS errors)."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in sans.get_values_for_type(x509.IPAddress)] + sans.get_values_for_type(x509.DNSName)


def check_superlink_tls(address: str, ca: str | os.PathLike[str], *, timeout_s: float = 10.0) -> None:
    """Open a TLS connection to the SuperLink at ``address`` (HOST:PORT) and verify its certificate with ``ca``.

    Flower reports a certificate that fails verification as an unreachable server; this names the cause first.

    Raises:
        CertificateError: the SuperLink is unreachable, does not speak TLS, or its certificate is not one ``ca``
            signed for that host.
    """
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        context = ssl.create_default_context(cafile=str(ca))
        context.set_alpn_protocols(["h2"])  # gRPC's protocol
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                pass
    except ssl.SSLCertVerificationError as error:
        raise CertificateError(
            f"the SuperLink at {address} presented a certificate that --ca {ca} does not accept "
            f"({error.verify_message}). Use the federation's own ca.pem (from `python -m launch certs` on the "
            f"server), and check that the server's certificate lists {host}.") from None
    except ssl.SSLError as error:
        raise CertificateError(f"TLS with the SuperLink at {address} failed ({error.reason or error}), with --ca {ca}; "
                               "is the SuperLink running with --insecure, or is --ca a certificate file?") from None
    except (OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CertificateError(f"cannot reach the SuperLink at {address} ({reason}); is it running, and is the "
                               "address right?") from None


SECRET_BYTES = 32


def write_superexec_secret(path: str | os.PathLike[str]) -> Path:
    """Write a fresh random SuperExec auth secret to ``path`` (mode 0600), replacing an earlier one.

    The SuperLink (or SuperNode) and its task launcher both read it at start; only a holder can take tasks from the
    Runtime API. A new one per start means nothing has to be kept or rotated.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(os.urandom(SECRET_BYTES))
    os.replace(temporary, path)
    return path
