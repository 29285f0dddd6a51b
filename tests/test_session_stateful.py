"""SessionManager + MemoryStore against a plain reference model, driven by hypothesis.

The limits are small here (2 sessions per user, 5 in all) so that the machine reaches them
often: evictions, refusals and their reasons are part of the model.

Every coroutine is driven with a single ``send(None)``: MemoryStore promises never to suspend,
so this also checks that promise on every path the machine takes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import hypothesis.strategies as st
import structlog
from hypothesis import event, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    rule,
)
from structlog.testing import LogCapture

from session.errors import (
    InvalidSession,
    InvalidToken,
    SessionCapacityExceeded,
    SessionError,
    SessionExpired,
    SessionNotFound,
    TooManyUserSessions,
)
from session.manager import EVICTED_REASON, ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import MAX_METADATA_ENTRIES, Session, SessionFilter, State, new_session_id
from tests.conftest import FakeClock
from tests.profiles import scaled

TIMEOUT = 100.0
USERS = ("alice", "bob", "carol")
PER_USER = 2
TOTAL = 5
KEYS = ("device", "room", "team", "level")


def run_now(coro: Coroutine[Any, Any, Any]) -> Any:
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise AssertionError("a MemoryStore-backed coroutine suspended")


def outcome(coro: Coroutine[Any, Any, Any]) -> tuple[str, Any]:
    """("ok", value) or (error class name, None), so expectations read as data."""
    try:
        return "ok", run_now(coro)
    except SessionError as exc:
        return type(exc).__name__, None


@dataclass
class Ref:
    session_id: str
    user_id: str
    connection_id: str
    token: str
    state: State
    expires_at: datetime
    metadata: dict[str, str]
    last_active_at: datetime
    client: tuple[str, int] = ("10.0.0.1", 1000)


@dataclass
class Model:
    sessions: dict[str, Ref] = field(default_factory=dict)

    def expected(self, session_id: str, now: datetime) -> str:
        ref = self.sessions.get(session_id)
        if ref is None:
            return SessionNotFound.__name__
        if now >= ref.expires_at:
            return SessionExpired.__name__
        return "ok"

    def evictions(self, user: str, now: datetime) -> list[str] | None:
        """The sessions a new one for `user` evicts, or None if it is refused."""
        mine = [ref for ref in self.sessions.values() if ref.user_id == user]
        if len(mine) < PER_USER:
            return []
        unheld = sorted(
            (ref for ref in mine
             if now >= ref.expires_at or ref.state in (State.DISCONNECTING, State.CLOSED)),
            key=lambda ref: (now < ref.expires_at, ref.last_active_at, ref.session_id))
        excess = len(mine) - PER_USER + 1
        if len(unheld) < excess:
            return None
        return [ref.session_id for ref in unheld[:excess]]


metadata_st = st.dictionaries(st.sampled_from(KEYS), st.text(max_size=5), max_size=3)
state_st = st.sampled_from(list(State))


class SessionMachine(RuleBasedStateMachine):
    ids = Bundle("ids")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.store = MemoryStore()
        logger = structlog.wrap_logger(
            None, processors=[LogCapture()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        )
        self.manager = SessionManager(ManagerConfig(
            store=self.store, default_timeout=TIMEOUT, clock=self.clock, logger=logger,
            max_sessions_per_user=PER_USER, max_sessions=TOTAL))
        self.ended: list[tuple[str, str]] = []
        self.manager.add_listener(lambda s, reason: self.ended.append((s.session_id, reason)))
        self.model = Model()

    @initialize(target=ids)
    def unknown_id(self) -> str:
        return new_session_id()  # never created: exercises the not-found paths

    @rule(target=ids, user=st.sampled_from(USERS), metadata=metadata_st)
    def create(self, user: str, metadata: dict[str, str]) -> Any:
        cid = str(uuid.uuid4())
        now = self.clock.now
        evicted = self.model.evictions(user, now)
        if len(self.model.sessions) >= TOTAL:
            expected, evicted = SessionCapacityExceeded.__name__, []
        elif evicted is None:
            expected, evicted = TooManyUserSessions.__name__, []
        else:
            expected = "ok"
        self.ended.clear()
        result, created = outcome(self.manager.create_session(user, "10.0.0.1", 1000, cid,
                                                              metadata))
        assert result == expected
        event(f"create: {result}{', evicting' if evicted else ''}")
        assert self.ended == [(sid, EVICTED_REASON) for sid in evicted]
        for sid in evicted:
            del self.model.sessions[sid]
        if created is None:
            return multiple()
        session, token = created
        self.model.sessions[session.session_id] = Ref(
            session.session_id, user, cid, token, State.CONNECTING,
            now + timedelta(seconds=TIMEOUT), dict(metadata), now)
        return multiple(session.session_id)

    @rule(user=st.sampled_from(["", "x" * 257]), port=st.sampled_from([-1, 65536, 1]))
    def create_invalid(self, user: str, port: int) -> None:
        before = run_now(self.store.count())
        result, _ = outcome(self.manager.create_session(user, "10.0.0.1", port,
                                                        str(uuid.uuid4())))
        assert result == InvalidSession.__name__
        assert run_now(self.store.count()) == before

    @rule(sid=ids, state=st.none() | state_st, metadata=st.none() | metadata_st)
    def update(self, sid: str, state: State | None, metadata: dict[str, str] | None) -> None:
        now = self.clock.now
        expected = self.model.expected(sid, now)
        if expected == "ok":
            merged = {**self.model.sessions[sid].metadata, **(metadata or {})}
            if len(merged) > MAX_METADATA_ENTRIES:
                expected = InvalidSession.__name__
        result, _ = outcome(self.manager.update_session(sid, state=state, metadata=metadata))
        assert result == expected
        if result == "ok":
            ref = self.model.sessions[sid]
            ref.metadata.update(metadata or {})
            ref.state = state or ref.state
            ref.last_active_at = now

    @rule(sid=ids)
    def disconnect(self, sid: str) -> None:
        """What the server does when a connection ends without FIN: the session stays,
        unheld, until it expires or is resumed (or evicted)."""
        self.update(sid, State.DISCONNECTING, None)

    @rule(sid=ids)
    def heartbeat(self, sid: str) -> None:
        now = self.clock.now
        expected = self.model.expected(sid, now)
        result, remaining = outcome(self.manager.heartbeat(sid))
        assert result == expected
        if result == "ok":
            assert remaining == TIMEOUT
            ref = self.model.sessions[sid]
            ref.expires_at = now + timedelta(seconds=TIMEOUT)
            ref.last_active_at = now
            if ref.state in (State.CONNECTING, State.IDLE):
                ref.state = State.ACTIVE

    @rule(sid=ids, right=st.booleans(), port=st.integers(1, 65535))
    def resume(self, sid: str, right: bool, port: int) -> None:
        now = self.clock.now
        ref = self.model.sessions.get(sid)
        token = ref.token if ref is not None and right else "wrong-token"
        if ref is None:
            expected = SessionNotFound.__name__
        elif not right:
            expected = InvalidToken.__name__
        else:
            expected = self.model.expected(sid, now)
        cid = str(uuid.uuid4())
        result, _ = outcome(self.manager.resume_session(sid, token, cid, "10.0.0.2", port))
        assert result == expected
        if result == "ok":
            assert ref is not None
            ref.connection_id, ref.client, ref.state = cid, ("10.0.0.2", port), State.ACTIVE
            ref.expires_at = now + timedelta(seconds=TIMEOUT)
            ref.last_active_at = now

    @rule(sid=consumes(ids))
    def delete(self, sid: str) -> None:
        expected = "ok" if sid in self.model.sessions else SessionNotFound.__name__
        self.ended.clear()
        result, _ = outcome(self.manager.delete_session(sid, "test"))
        assert result == expected
        if result == "ok":
            del self.model.sessions[sid]
            assert self.ended == [(sid, "test")]
        else:
            assert self.ended == []

    @rule(seconds=st.sampled_from([TIMEOUT, TIMEOUT / 2]) | st.floats(0, TIMEOUT * 1.5))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def cleanup(self) -> None:
        now = self.clock.now
        due = {sid for sid, ref in self.model.sessions.items() if now >= ref.expires_at}
        self.ended.clear()
        assert run_now(self.manager.cleanup_expired()) == len(due)
        assert sorted(self.ended) == sorted((sid, "expired") for sid in due)
        for sid in due:
            del self.model.sessions[sid]

    @rule(user=st.none() | st.sampled_from(USERS), state=st.none() | state_st,
          limit=st.none() | st.integers(0, 5), offset=st.integers(0, 6))
    def list_sessions(self, user: str | None, state: State | None, limit: int | None,
                      offset: int) -> None:
        flt = SessionFilter(user_id=user, state=state, limit=limit, offset=offset)
        page, total = run_now(self.manager.list_sessions(flt))
        matching = sorted(
            sid for sid, ref in self.model.sessions.items()
            if (user is None or ref.user_id == user) and (state is None or ref.state is state)
        )
        assert total == len(matching)
        end = None if limit is None else offset + limit
        assert [s.session_id for s in page] == matching[offset:end]

    @rule(sid=ids)
    def get(self, sid: str) -> None:
        result, session = outcome(self.manager.get_session(sid))
        assert result == self.model.expected(sid, self.clock.now)
        if session is not None:
            self.check(session, self.model.sessions[sid])

    # -- invariants: the store and every index agree with the model

    def check(self, session: Session, ref: Ref) -> None:
        assert (session.session_id, session.user_id, session.connection_id) == (
            ref.session_id, ref.user_id, ref.connection_id)
        assert (session.client_ip, session.client_port) == ref.client
        assert session.state is ref.state
        assert session.expires_at == ref.expires_at
        assert session.last_active_at == ref.last_active_at
        assert session.metadata == ref.metadata

    @invariant()
    def store_matches_model(self) -> None:
        sessions = self.model.sessions
        assert run_now(self.store.count()) == len(sessions)
        for sid, ref in sessions.items():
            self.check(run_now(self.store.get(sid)), ref)
            by_cid = run_now(self.store.get_by_connection_id(ref.connection_id))
            assert by_cid.session_id == sid
        for user in USERS:
            mine = sorted(sid for sid, ref in sessions.items() if ref.user_id == user)
            assert [s.session_id for s in run_now(self.store.get_by_user_id(user))] == mine

    @invariant()
    def stats_match_model(self) -> None:
        stats = run_now(self.manager.get_stats())
        assert stats["total"] == len(self.model.sessions)
        for state in State:
            expected = sum(1 for ref in self.model.sessions.values() if ref.state is state)
            assert stats[state.name.lower()] == expected

    @invariant()
    def expiry_heap_stays_bounded(self) -> None:
        assert self.store.heap_size() <= 2 * len(self.model.sessions) + 1024


SessionMachine.TestCase.settings = settings(
    max_examples=scaled(100), stateful_step_count=40, deadline=None
)
TestSessionMachine = SessionMachine.TestCase
