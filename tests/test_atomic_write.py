"""``storage.atomic``: a file is replaced whole or not at all, fsynced (file and directory), owner-only."""

from __future__ import annotations

import os
import stat

import pytest

import storage.atomic as atomic
from storage.atomic import atomic_write, atomic_write_bytes


def test_atomic_write_replaces_the_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "ledger.json"
    target.write_text("old")
    with atomic_write(target, "w", encoding="utf-8") as handle:
        handle.write("new")
        assert target.read_text() == "old"  # nothing changes until the block ends
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def test_an_error_inside_the_block_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    target = tmp_path / "checkpoint.pt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_write(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_the_file_and_then_its_directory_are_fsynced_before_the_write_returns(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    atomic_write_bytes(tmp_path / "state.stream", b"x")
    assert synced == ["file", "dir"]


def test_the_new_file_is_readable_by_its_owner_only(tmp_path):
    target = tmp_path / "events.jsonl"
    atomic_write_bytes(target, b"private")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_mode_other_than_write_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="'a'"):
        with atomic_write(tmp_path / "x", "a"):
            pass
