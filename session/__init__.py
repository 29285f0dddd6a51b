"""The session service: model, Store interface, MemoryStore, manager. Knows nothing of UDP."""

from session.errors import (
    InvalidSession,
    InvalidToken,
    SessionError,
    SessionExists,
    SessionExpired,
    SessionNotFound,
    StoreUnavailable,
)
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, SessionFilter, State, Stats
from session.store import Store

__all__ = [
    "InvalidSession",
    "InvalidToken",
    "ManagerConfig",
    "MemoryStore",
    "Session",
    "SessionError",
    "SessionExists",
    "SessionExpired",
    "SessionFilter",
    "SessionManager",
    "SessionNotFound",
    "State",
    "Stats",
    "Store",
    "StoreUnavailable",
]
