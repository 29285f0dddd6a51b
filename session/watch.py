"""Session change events: what `SessionManager.add_watcher` callbacks receive.

One small frozen dataclass per change, published synchronously by the manager right after the
store accepted the change, so a watcher sees the changes in the order they happened:

| kind          | published when                                                            |
|---------------|---------------------------------------------------------------------------|
| CREATED       | `create_session` stored a new session                                     |
| STATE_CHANGED | `update_session` or `resume_session` changed the state, or a heartbeat   |
|               | woke the session up (CONNECTING/IDLE -> ACTIVE)                           |
| DELETED       | `delete_session`, or the store reports that another node deleted it       |
| EXPIRED       | the expiry sweep removed it, or the store reports that it expired         |

On a shared store (etcd) a manager publishes the changes it made itself, and the deletions and
expiries that the store reports from every node.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from session.model import Session, State

__all__ = ["EventKind", "SessionEvent", "Watcher"]


class EventKind(enum.StrEnum):
    CREATED = "CREATED"
    STATE_CHANGED = "STATE_CHANGED"
    DELETED = "DELETED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """`session`: a copy of the session as it was right after the change (for DELETED and
    EXPIRED: as it was last stored), shared by every watcher of the event: read, don't change.
    `previous_state`: set for STATE_CHANGED only. `reason`: why a session was deleted
    ("expired" for EXPIRED). `at`: the manager's clock. `remote`: a shared store reported the
    change, which another node (or a lease running out) made."""

    kind: EventKind
    session: Session
    at: datetime
    previous_state: State | None = None
    reason: str = ""
    remote: bool = False


#: Called synchronously with each event; must not block (queue it and return).
Watcher = Callable[[SessionEvent], None]
