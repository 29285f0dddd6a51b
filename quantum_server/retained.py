"""What a lost connection leaves behind for its session's resume, held until the session expires.

When a connection is lost (idle timeout, unreachable, keys exhausted, a server shutdown that
leaves sessions resumable), what it still owed its peer (reliable messages not yet
acknowledged, and how far each channel had delivered) is encoded by the protocol layer into one
opaque blob and put here under the session id. A resume takes it back; a session that expires,
ends or is deleted drops it. The server's snapshot on a clean stop writes every blob held
(`items`) and the restarted server puts them back (`put`), so a restart loses nothing either.

The store knows nothing of what a blob means, only how big it is: each session's blob is
capped (`max_session_bytes`) and so is the total (`max_total_bytes`), so no peer can make the
server hold more than the configured memory for the connections it lost. A blob over either
cap is refused (the caller then declares the data lost, with a clear event) rather than
truncated. Expiry is by wall-clock time (`time.time()`), because blobs outlive the process
in the snapshot; `expire(now)` costs what is due (a heap of deadlines, stale entries skipped),
not a sweep of everything held.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator

__all__ = ["RetainedStore"]


class RetainedStore:
    """Blobs by session id, each with the wall-clock time it expires at."""

    def __init__(self, max_session_bytes: int, max_total_bytes: int) -> None:
        if max_session_bytes < 0 or max_total_bytes < 0:
            raise ValueError("retention limits must be >= 0 bytes, got "
                             f"{max_session_bytes!r} per session, {max_total_bytes!r} in total")
        self.max_session_bytes = max_session_bytes
        self.max_total_bytes = max_total_bytes
        self._blobs: dict[str, tuple[bytes, float]] = {}
        self._deadlines: list[tuple[float, str]] = []
        self._total = 0

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._blobs

    @property
    def total_bytes(self) -> int:
        return self._total

    def put(self, session_id: str, blob: bytes, expires_at: float) -> bool:
        """Hold `blob` for `session_id` until `expires_at`, replacing what it held. False (and
        nothing held for it) when the blob is over a cap or the deadline is not a finite
        time."""
        self.discard(session_id)
        size = len(blob)
        if (size > self.max_session_bytes or self._total + size > self.max_total_bytes
                or not math.isfinite(expires_at)):
            return False
        self._blobs[session_id] = (bytes(blob), expires_at)
        self._total += size
        heapq.heappush(self._deadlines, (expires_at, session_id))
        return True

    def take(self, session_id: str, now: float) -> bytes | None:
        """The blob held for `session_id` (and no longer held), or None if there is none or it
        expired by `now`."""
        entry = self._blobs.pop(session_id, None)
        if entry is None:
            return None
        blob, expires_at = entry
        self._total -= len(blob)
        return blob if expires_at > now else None

    def discard(self, session_id: str) -> None:
        """Drop what is held for `session_id` (the session ended or was deleted)."""
        entry = self._blobs.pop(session_id, None)
        if entry is not None:
            self._total -= len(entry[0])

    def expire(self, now: float) -> int:
        """Drop every blob whose deadline has passed by `now`; how many were dropped."""
        dropped = 0
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            expires_at, session_id = heapq.heappop(deadlines)
            entry = self._blobs.get(session_id)
            if entry is not None and entry[1] == expires_at:  # not a superseded deadline
                del self._blobs[session_id]
                self._total -= len(entry[0])
                dropped += 1
        if len(deadlines) > 2 * len(self._blobs) + 64:  # superseded entries pile up: rebuild
            self._deadlines = [(at, sid) for sid, (_, at) in self._blobs.items()]
            heapq.heapify(self._deadlines)
        return dropped

    def items(self) -> Iterator[tuple[str, bytes, float]]:
        """(session id, blob, expires at) for everything held, for the snapshot."""
        for session_id, (blob, expires_at) in list(self._blobs.items()):
            yield session_id, blob, expires_at
