"""The ``flwr`` CLI's record of how to reach our SuperLink: a ``[superlink.NAME]`` entry in ``$FLWR_HOME/config.toml``.

``flwr run``, ``flwr supernode register``, ``flwr ls`` and ``flwr stop`` name the SuperLink by connection name. The
entry holds its address and the CA that signed its certificate (or ``insecure = true``). Other entries of the file
are kept as they are.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import tomli_w

CONFIG_FILE = "config.toml"


class ConnectionConfigError(ValueError):
    """The connection file cannot be read or the entry cannot be written; names the file and the problem."""


def write_connection(flwr_home: str | os.PathLike[str], name: str, *, address: str,
                     root_certificates: str | os.PathLike[str] | None) -> Path:
    """Add or replace ``[superlink.<name>]``; ``root_certificates`` None writes an insecure connection.

    Raises:
        ConnectionConfigError: if the existing file is not valid TOML, or the CA file does not exist.
    """
    path = Path(flwr_home) / CONFIG_FILE
    config: dict = {}
    if path.is_file():
        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConnectionConfigError(f"{path} is not valid TOML ({error}); fix or remove it.") from None
    entry: dict[str, object] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        ca = Path(root_certificates).resolve()
        if not ca.is_file():
            raise ConnectionConfigError(f"CA certificate {ca} not found; the connection needs the CA that signed the SuperLink's certificate.")
        entry["root-certificates"] = str(ca)
    superlinks = config.setdefault("superlink", {})
    superlinks[name] = entry
    superlinks.setdefault("default", name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(config))
    return path
