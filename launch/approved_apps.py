"""Which app bundles a device runs: the owner's list of approved bundle hashes, and the hash of a bundle.

An app bundle (Flower's FAB) is the zip ``flwr run`` builds from the app folder and sends to every device; its
SHA-256 names it. Flower builds it deterministically (sorted files, a fixed date), so ``bundle_hash`` computes, from
the same folder, the hash the operator's ``flwr run`` will submit. A device started with an approved-apps file starts
a ClientApp only for a bundle whose hash the file lists (``launch.task_launcher``).

The file: one 64-digit lowercase hex hash per line; ``#`` starts a comment; blank lines are ignored.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_HASH = re.compile(r"[0-9a-f]{64}")


class ApprovedAppsError(ValueError):
    """The approved-apps file cannot be used; the message names the file, the line and the rule."""


def read_approved_apps(path: str | os.PathLike[str]) -> frozenset[str]:
    """The hashes ``path`` lists.

    Raises:
        ApprovedAppsError: if the file is missing, unreadable, lists no hash, or a line is not a hash.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ApprovedAppsError(f"approved-apps file {path} cannot be read ({error}).") from None
    hashes = set()
    for number, line in enumerate(lines, start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _HASH.fullmatch(entry):
            raise ApprovedAppsError(
                f"{path}:{number}: each entry must be an app bundle's SHA-256, 64 lowercase hex digits "
                f"(`python -m launch app-hash` prints it); found {entry[:80]!r}.")
        hashes.add(entry)
    if not hashes:
        raise ApprovedAppsError(f"approved-apps file {path} lists no app bundle hash, so this device would run "
                                "nothing; add the hash `python -m launch app-hash` prints for the app you approve.")
    return frozenset(hashes)


def bundle_bytes(app_dir: str | os.PathLike[str]) -> bytes:
    """The app bundle ``flwr run`` builds from ``app_dir`` (Flower's own builder, so the bytes are the same)."""
    from flwr.cli.build import build_fab_from_disk  # flwr's CLI: only when a bundle is built

    return build_fab_from_disk(Path(app_dir).expanduser().resolve())


def bundle_hash(app_dir: str | os.PathLike[str]) -> str:
    """The SHA-256 of the bundle ``flwr run`` submits for ``app_dir``: the name devices approve."""
    return hashlib.sha256(bundle_bytes(app_dir)).hexdigest()
