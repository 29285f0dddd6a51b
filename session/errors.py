"""The session service's one error hierarchy.

Every failure a caller can act on is a `SessionError`; the subclasses say which kind, so the
server can map them to close codes without parsing messages. Messages name the id involved
(``session not found: <id>``) because that is what an operator greps the logs for.
"""

from __future__ import annotations

__all__ = [
    "InvalidSession",
    "InvalidToken",
    "SessionCapacityExceeded",
    "SessionChanged",
    "SessionConflict",
    "SessionError",
    "SessionExists",
    "SessionExpired",
    "SessionLimitExceeded",
    "SessionNotFound",
    "StoreUnavailable",
    "TooManyUserSessions",
]


class SessionError(Exception):
    """Base of every error the session service raises on purpose."""


class SessionNotFound(SessionError):
    """No session with that id (or connection id) is stored."""


class SessionExists(SessionError):
    """A session with that id, or a session for that connection id, is already stored."""


class SessionExpired(SessionError):
    """The session is stored but its expiry time has passed."""


class StoreUnavailable(SessionError):
    """The backing store could not be reached or did not answer in time."""


class InvalidSession(SessionError, ValueError):
    """Input that can never be valid: bad user id, metadata, port, connection id, filter.

    Also a `ValueError` so generic input-validation handlers catch it too.
    """


class InvalidToken(SessionError):
    """The presented resume token does not match the session's stored token hash."""


class SessionChanged(SessionError):
    """A conditional change found the session no longer as its condition requires (say, an
    eviction candidate that a resume took back meanwhile); nothing was changed."""


class SessionConflict(SessionError):
    """A shared store (etcd) saw another node change the session since this node read it:
    nothing was written; re-read and retry (the manager's read-modify-write calls do)."""


class SessionLimitExceeded(SessionError):
    """A new session would exceed a configured limit; nothing was created."""


class TooManyUserSessions(SessionLimitExceeded):
    """The user already has `max_sessions_per_user` sessions and none of them may be evicted
    (every one is still held by a live connection)."""


class SessionCapacityExceeded(SessionLimitExceeded):
    """The store already holds `max_sessions` sessions."""
