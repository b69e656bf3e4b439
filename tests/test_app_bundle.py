"""The app bundle (FAB) `flwr run` sends to the server and every device ships the product only, runs from itself,
and is named by the hash a device approves (launch/approved_apps.py, pyproject.toml's fab-include)."""

import hashlib
import io
import os
import subprocess
import sys
import zipfile

import pytest

from launch.approved_apps import ApprovedAppsError, bundle_bytes, bundle_hash, read_approved_apps
from tests.helpers import ROOT

PRODUCT = {"client", "model", "privacy", "protocol", "server", "storage", "validation", "conf"}
"""What the ServerApp and ClientApp need: the packages they import and the YAML the ServerApp composes."""


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return bundle_bytes(ROOT)


def test_the_bundle_ships_the_product_only(bundle):
    names = zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == PRODUCT | {"pyproject.toml", ".info"}, tops
    assert not [n for n in names if n.split("/")[0] in {"tests", "simulations", "benchmarks", "generation", "launch"}]
    assert all(n.endswith((".py", ".yaml")) for n in names if n.split("/")[0] in PRODUCT)


@pytest.mark.slow  # a fresh interpreter importing both apps from the bundle (seconds); what it ships: checked above
def test_both_apps_and_the_servers_config_load_from_the_bundle_alone(bundle, tmp_path):
    zipfile.ZipFile(io.BytesIO(bundle)).extractall(tmp_path)
    code = ("import sys, client.client_app, server.server_app; "
            "from server.server_app import compose_settings; compose_settings('deploy', []); "
            f"ours = {sorted(PRODUCT - {'conf'})!r}; "
            "print('\\n'.join(sorted(getattr(m, '__file__', None) or '' for n, m in list(sys.modules.items()) "
            "if n.split('.')[0] in ours)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    files = [f for f in result.stdout.splitlines() if f]
    assert files and all(f.startswith(str(tmp_path)) for f in files), [f for f in files if not f.startswith(str(tmp_path))]


def test_the_hash_a_device_approves_is_the_bundles_and_stable(bundle):
    assert bundle_hash(ROOT) == hashlib.sha256(bundle).hexdigest() == hashlib.sha256(bundle_bytes(ROOT)).hexdigest()


def test_the_approved_apps_file_lists_hashes_and_comments(tmp_path):
    path = tmp_path / "approved.txt"
    path.write_text(f"# fedpref 0.1\n{'a' * 64}  # this release\n\n{'b' * 64}\n")
    assert read_approved_apps(path) == {"a" * 64, "b" * 64}


@pytest.mark.parametrize("text,message", [
    ("", "lists no app bundle hash"),
    ("# nothing yet\n", "lists no app bundle hash"),
    (f"{'a' * 64}\nsha256:{'b' * 64}\n", r"approved\.txt:2: each entry must be an app bundle's SHA-256"),
    ("A" * 64, r"approved\.txt:1: .*64 lowercase hex digits"),
])
def test_a_bad_approved_apps_file_is_refused_naming_the_line_and_rule(tmp_path, text, message):
    path = tmp_path / "approved.txt"
    path.write_text(text)
    with pytest.raises(ApprovedAppsError, match=message):
        read_approved_apps(path)
    with pytest.raises(ApprovedAppsError, match="cannot be read"):
        read_approved_apps(tmp_path / "missing.txt")
