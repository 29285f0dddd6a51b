"""The server's side of "reconnect and resume, nothing lost" (PROTOCOL.md 12.4).

When a connection whose client asked for carry-over is lost while its session stays
resumable, what it still owed (`Connection.carryover`) is encoded (`quantum.carryover`) and
kept in the server's `RetainedStore` under the session id until the session expires; the
resume that continues the session takes it back and hands it to the new connection. A session
that ends (logout, deletion, expiry) drops it. The snapshot of a stopping server writes the
store's blobs and the restarted server puts them back, so the blobs are all there is: nothing
here holds a reference to a connection.

A blob over the store's caps is not kept, and one that does not decode (a snapshot from
another build) is dropped: either way the resumed client is told its streams start again
(SESSION without carry-over, which the client reports as `CarryoverLost`), never half a state.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from quantum import carryover as wire_carryover
from quantum.carryover import Carryover, CarryoverError
from quantum.connection import Connection
from quantum_server.retained import RetainedStore
from session.logs import LazyLogger

__all__ = ["Carryovers"]

log = LazyLogger("quantum.server")


class Carryovers:
    """Lost connections' carry-over, by session id, as blobs in a `RetainedStore`."""

    def __init__(self, retained: RetainedStore,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.retained = retained
        self._wall = wall_clock
        #: carry-overs kept for a resume, taken back by one, and dropped (over a cap, or
        #: not decodable)
        self.kept = 0
        self.taken = 0
        self.dropped = 0

    def keep(self, session_id: str, conn: Connection, expires_at: float) -> bool:
        """Keep what the lost `conn` owed until `expires_at` (wall-clock seconds). False if
        there was nothing to keep (no carry-over asked for) or it is over a cap."""
        carryover = conn.carryover()
        if carryover is None:
            return False
        return self.keep_carryover(session_id, carryover, expires_at)

    def keep_carryover(self, session_id: str, carryover: Carryover, expires_at: float) -> bool:
        blob = wire_carryover.encode(carryover)
        if self.retained.put(session_id, blob, expires_at):
            self.kept += 1
            return True
        self.dropped += 1
        log.warning("carry-over not kept: over its cap", session_id=session_id,
                    bytes=len(blob), session_cap=self.retained.max_session_bytes,
                    total_cap=self.retained.max_total_bytes)
        return False

    def take(self, session_id: str) -> Carryover | None:
        """What the session's lost connection left, if it is still held (and not anymore)."""
        blob = self.retained.take(session_id, self._wall())
        if blob is None:
            return None
        try:
            carryover = wire_carryover.decode(blob)
        except CarryoverError as exc:
            self.dropped += 1
            log.warning("carry-over dropped: it does not decode", session_id=session_id,
                        error=str(exc))
            return None
        self.taken += 1
        return carryover

    def discard(self, session_id: str) -> None:
        """The session ended: what its lost connection left goes with it."""
        self.retained.discard(session_id)

    def expire(self) -> int:
        """Drop what expired by now (housekeeping); how many."""
        return self.retained.expire(self._wall())
