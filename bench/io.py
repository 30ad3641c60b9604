"""Crash-safe file writing.

Every file bench writes goes through here: whole files are written to a temp file in the same
folder, fsynced and renamed over the target (so a reader sees the old or the new file, never half
of one); records are appended to JSONL as complete lines that carry their own CRC32, so a line
torn by SIGKILL or a full disk is detected on read and dropped, never merged.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.errors import BenchError, RunLockedError


def _disk_error(path: Path, exc: OSError) -> BenchError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return BenchError(f"{path}: no space left on device; the previous complete state was kept")
    return BenchError(f"{path}: cannot write ({exc.strerror or exc})")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600 files; give the result the permissions open() would have.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _disk_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise BenchError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc


# --- checksummed JSONL -------------------------------------------------------------------------

def _crc(payload: str) -> str:
    return f"{zlib.crc32(payload.encode('utf-8')) & 0xFFFFFFFF:08x}"


def encode_record(record: dict[str, Any]) -> str:
    """One JSONL line: the record plus a `_crc` of its canonical JSON, newline-terminated."""
    payload = json.dumps(record, ensure_ascii=False, sort_keys=True)
    return json.dumps({**record, "_crc": _crc(payload)}, ensure_ascii=False, sort_keys=True) + "\n"


def decode_record(line: str) -> dict[str, Any] | None:
    """The record of a complete, intact line; None for a torn or corrupted one."""
    if not line.endswith("\n"):
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or "_crc" not in obj:
        return None
    crc = obj.pop("_crc")
    if _crc(json.dumps(obj, ensure_ascii=False, sort_keys=True)) != crc:
        return None
    return obj


def read_records(path: str | Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """All intact records of a checksummed JSONL file.

    A bad line can only be the last one (appends are whole lines); with ``repair`` the file is
    truncated to its last intact line so that later appends start on a clean line.
    """
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    good_bytes = 0
    with path.open("rb") as f:
        for raw in f:
            rec = decode_record(raw.decode("utf-8", errors="replace"))
            if rec is None:
                break
            records.append(rec)
            good_bytes += len(raw)
    if repair and good_bytes != path.stat().st_size:
        with path.open("r+b") as f:
            f.truncate(good_bytes)
            f.flush()
            os.fsync(f.fileno())
    return records


def append_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    """Append whole lines in one write + fsync; a failure leaves at most one torn last line."""
    if not records:
        return
    path = Path(path)
    data = "".join(encode_record(r) for r in records).encode("utf-8")
    try:
        with path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise _disk_error(path, exc) from exc


# --- run-folder lock ---------------------------------------------------------------------------

# Lock fds this process holds. A forked child (a DataLoader worker) inherits them, and an flock
# lasts until every copy is closed: a worker orphaned by a SIGKILLed run would keep the run
# locked for seconds. Children close their copies right after fork; closing a copy does not
# release the parent's lock (only LOCK_UN or closing every copy does).
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


@contextmanager
def exclusive_lock(folder: str | Path, what: str = "run") -> Iterator[None]:
    """Hold an flock on FOLDER/.lock; a second process gets RunLockedError at once.

    flock is released by the kernel when the process dies, so a SIGKILLed run never leaves a
    stale lock behind.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            try:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            except OSError:
                holder = "?"
            raise RunLockedError(
                f"{folder}: this {what} is in use by another bench process (pid {holder}); "
                "wait for it to finish or stop it"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _HELD_LOCK_FDS.add(fd)
        yield
    finally:
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)
