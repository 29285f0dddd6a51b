"""A MemoryStore server's restart time with its sessions in the snapshot (issue 15).

    python -m benchmarks.restart [--sessions 50000] [--retained-fraction 0.1]
                                 [--blob-bytes 1024] [--json]

One `QuantumServer` (real UDP socket on loopback, real `RestartSnapshot`) holds N sessions
(default 50,000: real token hashes, a metadata entry each, as a login makes them) and, for a
fraction of them, a retained blob (what a lost connection still owed, default 10 % with 1 KiB
each). Then it is stopped (`stop` writes the snapshot: mode 0600, fsync, rename) and a second
server is started on a fresh store (`start` loads it, drops nothing since nothing expired,
checks it whole, inserts every session and deletes the file). Reported, in seconds:

* ``stop_s``, ``start_s``: the whole `stop` and `start` with the snapshot; ``restart_s`` their
  sum; ``write_s`` and ``load_s``: the snapshot's own share as the server logged it;
* ``stop_empty_s``, ``start_empty_s``: the same server without sessions, measured in the same
  run (the baseline of everything else a stop and a start do);
* ``fill_baseline_s``: inserting the same N sessions into an empty `MemoryStore` directly, which
  any load has to do; ``load_vs_fill`` is ``load_s`` over it (the cost of reading, checking and
  decoding, as a ratio);
* ``stop_cpu_s``, ``start_cpu_s``, ``fill_baseline_cpu_s``: the same in CPU time of this
  process, which a machine loaded by other work inflates far less than wall time;
  ``start_cpu_vs_fill_cpu`` is the ratio of the first and the last;
* ``snapshot_bytes``, ``sessions_restored``, ``retained_restored``.

`measure` is the function `benchmarks.reconnect` reports under its ``"restart"`` key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from quantum.auth import AnonymousAuthenticator
from quantum.build import is_compiled
from quantum.keys import ServerKeyFile
from quantum_server.restart import RestartSnapshot
from server import QuantumServer, ServerConfig
from session.logs import configure_logging
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, State
from session.tokens import new_token

DEFAULT_SESSIONS = 50_000


def make_sessions(count: int) -> list[Session]:
    """`count` sessions as a server holds them after its clients' connections closed."""
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=1800)
    made = []
    for i in range(count):
        _, token_hash = new_token()
        made.append(Session(str(uuid.uuid4()), f"player-{i}", str(uuid.uuid4()), "192.0.2.7",
                            1024 + i % 60000, State.DISCONNECTING, now, now, expires,
                            server_addr="127.0.0.1:9090", metadata={"room": f"room-{i % 500}"},
                            token_hash=token_hash))
    return made


def _server(key: ServerKeyFile, path: Path) -> QuantumServer:
    manager = SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=1800.0,
                                           max_sessions=10_000_000))
    server = QuantumServer(manager, key, AnonymousAuthenticator(),
                           ServerConfig(host="127.0.0.1", port=0, stall_probe_interval=0))
    server.restart_snapshot = RestartSnapshot(path, key)
    return server


def _logged_seconds(logs: list[MutableMapping[str, Any]], event: str) -> float:
    return float(next(e["seconds"] for e in logs if e["event"] == event))


async def _stop_start(key: ServerKeyFile, path: Path, sessions: list[Session],
                      blobs: dict[str, bytes]) -> dict[str, Any]:
    """Stop a server holding `sessions` and `blobs`, start another from its snapshot."""
    first = _server(key, path)
    await first.start()
    for session in sessions:
        await first.manager.store.create(session)
    deadline = time.time() + 1800
    for sid, blob in blobs.items():
        first.retained.put(sid, blob, deadline)
    with capture_logs() as logs:
        started, cpu = time.perf_counter(), time.process_time()
        await first.stop()
        stop_s, stop_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    size = path.stat().st_size
    write_s = _logged_seconds(logs, "session snapshot written")
    second = _server(key, path)
    with capture_logs() as logs:
        started, cpu = time.perf_counter(), time.process_time()
        await second.start()
        start_s, start_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    load_s = _logged_seconds(logs, "session snapshot loaded") if sessions else 0.0
    restored = await second.manager.store.count()
    retained = len(second.retained)
    second.restart_snapshot = None
    await second.stop()
    return {"stop_s": stop_s, "start_s": start_s, "stop_cpu_s": stop_cpu_s,
            "start_cpu_s": start_cpu_s, "write_s": write_s, "load_s": load_s,
            "snapshot_bytes": size, "sessions_restored": restored,
            "retained_restored": retained}


async def measure(sessions: int = DEFAULT_SESSIONS, retained_fraction: float = 0.1,
                  blob_bytes: int = 1024) -> dict[str, Any]:
    """The restart figures (see the module docstring) for `sessions` sessions."""
    key = ServerKeyFile.new()
    made = make_sessions(sessions)
    every = max(1, round(1 / retained_fraction)) if retained_fraction > 0 else 0
    blobs = {s.session_id: bytes(blob_bytes) for s in made[::every]} if every else {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "server.snapshot"
        empty = await _stop_start(key, path, [], {})
        path.unlink(missing_ok=True)
        full = await _stop_start(key, path, made, blobs)
    fill = MemoryStore()
    started, cpu = time.perf_counter(), time.process_time()
    for session in made:
        await fill.create(session)
    fill_s, fill_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {
        "benchmark": "restart", "compiled": is_compiled(),
        "sessions": sessions, "retained": len(blobs), "blob_bytes": blob_bytes,
        "snapshot_bytes": full["snapshot_bytes"],
        "stop_s": round(full["stop_s"], 4), "start_s": round(full["start_s"], 4),
        "restart_s": round(full["stop_s"] + full["start_s"], 4),
        "write_s": full["write_s"], "load_s": full["load_s"],
        "stop_empty_s": round(empty["stop_s"], 4), "start_empty_s": round(empty["start_s"], 4),
        "stop_cpu_s": round(full["stop_cpu_s"], 4), "start_cpu_s": round(full["start_cpu_s"], 4),
        "fill_baseline_s": round(fill_s, 4), "fill_baseline_cpu_s": round(fill_cpu_s, 4),
        "start_cpu_vs_fill_cpu": (round(full["start_cpu_s"] / fill_cpu_s, 2) if fill_cpu_s > 0
                                  else None),
        "load_vs_fill": round(full["load_s"] / fill_s, 2) if fill_s > 0 else None,
        "sessions_restored": full["sessions_restored"],
        "retained_restored": full["retained_restored"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=DEFAULT_SESSIONS)
    parser.add_argument("--retained-fraction", type=float, default=0.1,
                        help="share of the sessions with a retained blob (default 0.1)")
    parser.add_argument("--blob-bytes", type=int, default=1024)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.sessions < 1 or not 0 <= args.retained_fraction <= 1 or args.blob_bytes < 0:
        parser.error("--sessions must be at least 1, --retained-fraction within 0..1 and "
                     "--blob-bytes at least 0")
    # the server's logs on stderr (stdout carries the figures), at INFO, which carries the
    # snapshot's own timings: configured, so that `capture_logs` hands back this
    # configuration afterwards, not structlog's print-to-stdout default
    configure_logging("console", "info")
    results = asyncio.run(measure(args.sessions, args.retained_fraction, args.blob_bytes))
    if args.json:
        print(json.dumps(results))
    else:
        for name, value in results.items():
            print(f"{name:20} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
