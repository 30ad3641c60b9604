"""bench.io: atomic writes, checksummed JSONL and the run lock, tested directly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.errors import BenchError, RunLockedError
from bench.io import (
    append_records,
    atomic_write_json,
    atomic_write_text,
    encode_record,
    exclusive_lock,
    read_json,
    read_records,
)


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"x": 1})
    atomic_write_json(target, {"x": 2})
    assert read_json(target) == {"x": 2}
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]  # no temp files left


def test_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.md"
    atomic_write_text(target, "old")

    def full(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BenchError, match="no space left"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_torn_and_corrupted_lines_are_dropped_and_repaired(tmp_path):
    path = tmp_path / "p.jsonl"
    append_records(path, [{"image_id": "a", "caption": "one"}, {"image_id": "b", "caption": "two"}])
    intact = path.read_bytes()
    with path.open("ab") as f:
        f.write(encode_record({"image_id": "c", "caption": "three"}).encode()[:-7])  # torn by a kill
    assert [r["image_id"] for r in read_records(path)] == ["a", "b"]
    read_records(path, repair=True)
    assert path.read_bytes() == intact
    # A complete line whose payload was altered fails its checksum.
    line = encode_record({"image_id": "c", "caption": "three"}).replace("three", "thrEE")
    with path.open("a") as f:
        f.write(line)
    assert len(read_records(path)) == 2


def test_second_process_cannot_take_the_lock(tmp_path):
    code = (
        "import sys; from bench.io import exclusive_lock; from bench.errors import RunLockedError\n"
        "try:\n    exclusive_lock(sys.argv[1]).__enter__()\nexcept RunLockedError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    with exclusive_lock(tmp_path):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        assert out.returncode == 3 and f"pid {os.getpid()}" in out.stdout
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0  # released with the holder
    assert issubclass(RunLockedError, BenchError)
