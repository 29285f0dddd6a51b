"""A single-node server's sessions across a restart: the snapshot file (`session.snapshot`'s
bytes) written when a `MemoryStore` server stops cleanly and read back when it starts.

`RestartSnapshot(path, key)` is set on a `QuantumServer` (`server.restart_snapshot`) before it
starts: `load` runs at start, before the socket is bound, so no client meets a half-filled
store; `save` at stop, once every connection is closed and its session marked DISCONNECTING.

Loading checks the whole file before it inserts anything: a missing file starts the server
empty without a word beyond an info line; a corrupt, truncated, foreign or future-version one
is reported (a warning naming the path and the reason) and the server starts empty as well.
What expired while the server was down is dropped. A loaded snapshot is deleted at once: if
the server is killed later (no new snapshot), an old one must not bring back sessions that
ended since, nor their tokens.

The file is written as the key file is: mode 0600, to a temporary file in the same folder,
flushed to disk, renamed over the old one, and the folder flushed too, so a crash while
writing leaves either the old snapshot or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from quantum.keys import ServerKeyFile
from session.errors import SessionExists
from session.logs import LazyLogger
from session.memory import MemoryStore
from session.model import SessionFilter
from session.snapshot import (
    Progress,
    Retained,
    Snapshot,
    SnapshotError,
    SnapshotKey,
    decode,
    encode_parts,
    for_restart,
)

if TYPE_CHECKING:
    from server import QuantumServer

__all__ = ["RestartSnapshot", "default_snapshot_path", "snapshot_key"]

log = LazyLogger("quantum.server")


def default_snapshot_path(key_path: Path) -> Path:
    """Beside the key file: its path with the extension `.snapshot` (`server.key` ->
    `server.snapshot`), or `.snapshot` added to a key file already named so."""
    path = key_path.with_suffix(".snapshot")
    return path if path != key_path else key_path.with_name(key_path.name + ".snapshot")


def snapshot_key(key: ServerKeyFile) -> SnapshotKey:
    """The snapshot's MAC key, from both secrets of the server key file."""
    return SnapshotKey.derive(key.private_key + key.ticket_secret)


class RestartSnapshot:
    """The snapshot file of one server: `load` it at start, `save` it at stop."""

    def __init__(self, path: Path, key: ServerKeyFile) -> None:
        self.path = path
        self.key = snapshot_key(key)

    # -- start

    async def load(self, server: QuantumServer) -> int:
        """Put the snapshot's live sessions into the server's (empty) store and their retained
        data into `server.retained`; how many sessions. Never raises for a bad snapshot."""
        started = time.monotonic()
        path = str(self.path)
        store = server.manager.store
        if not isinstance(store, MemoryStore):  # a shared store outlives the server itself
            log.warning("session snapshot not loaded: the store is not a MemoryStore", path=path)
            return 0
        try:
            data = _read(self.path)
        except FileNotFoundError:
            log.info("no session snapshot to load", path=path)
            return 0
        except OSError as exc:
            log.warning("session snapshot not loaded: starting with no sessions", path=path,
                        reason=f"cannot read it: {exc.strerror or exc}")
            return 0
        log.info("loading the session snapshot", path=path, bytes=len(data))
        try:
            snapshot = decode(data, self.key, _progress("loading the session snapshot", path))
        except SnapshotError as exc:
            log.warning("session snapshot not loaded: starting with no sessions", path=path,
                        reason=str(exc), kind=exc.kind)
            return 0
        del data
        now_ts = time.time()
        live, expired, blobs_expired = for_restart(
            snapshot, datetime.fromtimestamp(now_ts, UTC), now_ts)
        try:
            store.restore(list(live.sessions))  # checked whole by decode: all or nothing
        except SessionExists as exc:
            log.warning("session snapshot not loaded: the store already holds sessions",
                        path=path, reason=str(exc))
            return 0
        refused = sum(not server.retained.put(r.session_id, r.blob, r.expires_at)
                      for r in live.retained)
        try:
            self.path.unlink()
        except OSError as exc:
            log.error("could not remove the loaded session snapshot: a later start without a "
                      "clean stop would load it again", path=path, error=str(exc))
        log.info("session snapshot loaded", path=path, sessions=len(live.sessions),
                 expired=expired, retained=len(live.retained) - refused,
                 retained_expired=blobs_expired, retained_over_limit=refused,
                 written_s_ago=round(now_ts - snapshot.written_at, 3),
                 seconds=round(time.monotonic() - started, 3))
        return len(live.sessions)

    # -- stop

    async def save(self, server: QuantumServer) -> bool:
        """Write every session of the server's store and their retained data; whether it was
        written (a failure is logged, never raised: the server is stopping either way)."""
        started = time.monotonic()
        store = server.manager.store
        if not isinstance(store, MemoryStore):  # a shared store outlives the server itself
            log.warning("session snapshot not written: the store is not a MemoryStore",
                        path=str(self.path))
            return False
        sessions, _ = await store.list(SessionFilter())
        ids = {s.session_id for s in sessions}
        now_ts = time.time()
        retained = tuple(Retained(sid, blob, expires_at)
                         for sid, blob, expires_at in server.retained.items()
                         if sid in ids and expires_at > now_ts)
        path = str(self.path)
        log.info("writing the session snapshot", path=path, sessions=len(sessions),
                 retained=len(retained))
        try:
            size = _write_atomically(self.path, encode_parts(
                Snapshot(tuple(sessions), retained, now_ts), self.key,
                _progress("writing the session snapshot", path)))
        except (OSError, ValueError) as exc:
            log.error("session snapshot not written: the sessions are lost with this stop",
                      path=path, error=str(exc))
            return False
        log.info("session snapshot written", path=path, sessions=len(sessions),
                 retained=len(retained), bytes=size,
                 seconds=round(time.monotonic() - started, 3))
        return True


def _progress(event: str, path: str) -> Progress:
    """A big snapshot's progress, logged (every `PROGRESS_EVERY` sessions)."""
    def report(done: int, total: int) -> None:
        log.info(event, path=path, sessions_done=done, of=total)
    return report


def _read(path: Path) -> bytes:
    """The whole file; OSError for anything but a regular file (a FIFO would block forever)."""
    # non-blocking: opening a FIFO for reading would otherwise wait for a writer
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def _write_atomically(path: Path, parts: Iterable[bytes]) -> int:
    """Write `parts` to `path` as described in the module docstring;
    the bytes written."""
    folder = path.parent
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")  # 0600
    size = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for part in parts:
                f.write(part)
                size += len(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size
