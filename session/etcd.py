"""`EtcdStore`: sessions in etcd, shared by every server node of a cluster.

Key layout (all under a configurable prefix, default ``/quantum``)::

    <prefix>/s/<session_id>            the session record: compact JSON, {"v": 1, ...}
    <prefix>/c/<connection_id>         the owning session id (connection index; absent while
                                       no connection holds the session yet)
    <prefix>/u/<quoted user_id>/<sid>  empty value (user index; user id percent-encoded)

The three keys of a session share one etcd lease and are only ever written together, in one
transaction. Every write compares the mod revision of the session key with the revision this
node last saw, so two nodes never silently overwrite each other: merges (heartbeats, stats)
are retried on the newer record, whole-record `update` conflicts raise `SessionConflict`.

Expiry. `expires_at` in the record is authoritative for `expire`. The lease is a backstop for
sessions whose node died: its TTL is the session's timeout (``expires_at - last_active_at``)
times ``1 + refresh_fraction`` plus one second, and it is refreshed only when
``refresh_fraction`` of the timeout has passed since the last refresh. So a lease never ends
before the session's real expiry, and a dead node's session vanishes at most
``refresh_fraction * timeout + 1.5 s`` after it (etcd checks leases every 0.5 s).

Heartbeats are local. The node keeps a cache of the sessions it created, updated, touched or
read, kept coherent by a watch on ``<prefix>/s/``. A heartbeat (`touch`) changes the cached
copy; etcd is written only when the lease needs refreshing, when the state changes, or (for
timestamps and stats) at most every ``stats_interval`` seconds by a background flusher. What
other nodes may see as stale, and for how long at most: ``last_active_at``, ``expires_at``
and ``stats`` of a session owned by another node, by up to ``stats_interval`` seconds (and
by up to the refresh interval for ``expires_at`` when the flusher cannot reach etcd); cached
copies lag etcd by the watch's delivery delay (milliseconds while the watch is connected).

Listeners (`add_listener`) hear of sessions removed by anyone else (another node's delete or
expiry, or a lease running out): ``callback(session, reason)``, reason ``"expired"`` when the
last known record had expired by the local wall clock, else ``"deleted"``. The signature is
`session.manager.Listener`'s.

Failure. Each call has ``timeout`` seconds over all endpoints (members of one cluster, tried
in turn when one fails); when none answers the call raises `StoreUnavailable` naming the
endpoints. The next call tries again, so the store recovers as soon as etcd is back. A record
that does not decode is logged with its key; reading it raises `InvalidSession`, and listings
skip it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import aetcd
import aetcd.exceptions
import aetcd.rtypes
import aetcd.utils

from session.errors import (
    InvalidSession,
    SessionConflict,
    SessionError,
    SessionExists,
    SessionExpired,
    StoreUnavailable,
)
from session.logs import LazyLogger
from session.model import Session, SessionFilter, State, Stats, validate_session
from session.store import (
    Listener,
    Store,
    Wake,
    changed,
    not_found,
    not_found_for_connection,
    too_many_user_sessions,
)

__all__ = [
    "SCHEMA_VERSION",
    "EtcdStore",
    "SessionConflict",
    "decode_session",
    "encode_session",
]

SCHEMA_VERSION = 1

_T = TypeVar("_T")
_log = LazyLogger("session.etcd")

# Reconnect quickly once etcd is back instead of gRPC's default backoff of up to two minutes;
# keepalive pings notice a silently dead member.
_GRPC_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
}
_TRANSIENT = (
    aetcd.exceptions.ConnectionFailedError,
    aetcd.exceptions.ConnectionTimeoutError,
    aetcd.exceptions.InternalError,
    asyncio.TimeoutError,
)
_MERGE_ATTEMPTS = 5
_TXN_OPS = 100  # etcd refuses transactions of more than 128 operations by default
_WAKE = frozenset({State.CONNECTING, State.IDLE})
_ACTIVE = State.ACTIVE


# -- serialisation


def encode_session(session: Session) -> bytes:
    """The record stored at ``<prefix>/s/<id>``: compact JSON with a schema version."""
    data = session.to_dict()
    data["v"] = SCHEMA_VERSION
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def decode_session(key: bytes, value: bytes) -> Session:
    """Parse a record; anything malformed raises `InvalidSession` naming the key."""
    where = key.decode(errors="replace")
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSession(f"session record at {where} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidSession(f"session record at {where} is not a JSON object")
    version = data.pop("v", None)
    if version != SCHEMA_VERSION:
        raise InvalidSession(
            f"session record at {where} has schema version {version!r}, "
            f"this node reads version {SCHEMA_VERSION}"
        )
    try:
        return Session.from_dict(data)
    except InvalidSession as exc:
        raise InvalidSession(f"session record at {where}: {exc}") from None


# -- the cluster connection


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Accept ``host:port``, ``http://host:port`` or ``[v6]:port``; reject anything else."""
    text = endpoint.strip()
    for scheme in ("http://", "https://"):
        text = text.removeprefix(scheme)
    host, sep, port_text = text.rstrip("/").rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"etcd endpoint {endpoint!r} has port {port} out of range")
    return host.strip("[]"), port


class _Cluster:
    """One etcd cluster reached through whichever member answers.

    aetcd's client talks to one address, so failover lives here: the current member serves
    until a call fails with a connection error or deadline, then the next member is tried,
    all within the `timeout` budget. A dead member refuses connections at once, so failing
    over costs milliseconds; only a black-holed member uses up a call's budget.
    """

    def __init__(self, endpoints: list[str], timeout: float) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        self.endpoints = endpoints
        self._addresses = [_parse_endpoint(e) for e in endpoints]
        self.timeout = timeout
        self._index = 0
        self._client: aetcd.Client | None = None
        self._generation = 0

    def describe(self) -> str:
        return ", ".join(self.endpoints)

    def current(self) -> tuple[aetcd.Client, int]:
        if self._client is None:
            host, port = self._addresses[self._index]
            self._client = aetcd.Client(
                host=host, port=port, timeout=self.timeout, options=_GRPC_OPTIONS
            )
            self._generation += 1
        return self._client, self._generation

    async def fail_over(self, generation: int) -> None:
        """Move to the next member, unless another caller already did since `generation`."""
        if generation != self._generation or self._client is None:
            return
        old, self._client = self._client, None
        self._index = (self._index + 1) % len(self._addresses)
        with contextlib.suppress(Exception):
            await old.close()

    async def call(self, op: Callable[[aetcd.Client], Awaitable[_T]]) -> tuple[_T, bool]:
        """Run `op` on some member; returns its result and whether an attempt failed first.

        The flag matters for writes: an attempt whose answer was lost may have been applied,
        so a retried transaction whose compare fails must check whether it was its own.
        """
        last: BaseException | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        members = len(self._addresses)
        # a member that hangs (no quorum, partitioned) gets its share of the budget, not all
        # of it, so the others are still tried in time
        share = self.timeout if members == 1 else max(self.timeout / members, 0.5)
        for attempt in range(2 * members):
            remaining = deadline - loop.time()
            if attempt and remaining <= 0:
                break
            client, generation = self.current()
            try:
                async with asyncio.timeout(min(share, remaining) if attempt else share):
                    return await op(client), attempt > 0
            except _TRANSIENT as exc:
                last = exc
                await self.fail_over(generation)
            except aetcd.exceptions.ClientError as exc:
                raise StoreUnavailable(f"etcd at {self.describe()} failed: {exc}") from exc
        raise StoreUnavailable(
            f"etcd unreachable at {self.describe()} (timeout {self.timeout:g} s): "
            f"{last or 'no member answered'}"
        ) from last

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            with contextlib.suppress(Exception):
                await client.close()


# -- the node-local cache


@dataclass(slots=True)
class _Entry:
    """What this node knows of one session."""

    session: Session  # newest known version, including changes not yet written
    mod_rev: int  # mod revision of the session key in etcd as last seen
    seen_rev: int  # revision callers last read: `update` must not overwrite anything newer
    lease: int
    lease_ttl: int
    span: timedelta  # expires_at - last_active_at the lease TTL was computed from
    refresh_at: float  # monotonic time after which the next keepalive is due
    written: float  # monotonic time of the last record write
    owned: bool  # created, updated or touched here: this node expires it and refreshes it
    dirty: bool = False  # timestamps or stats changed since the last write




class EtcdStore(Store):
    """The etcd-backed `Store`. Call `start` (or use ``async with``) before anything else."""

    def __init__(
        self,
        endpoints: builtins.list[str] | str = "127.0.0.1:2379",
        prefix: str = "/quantum",
        timeout: float = 2.0,
        *,
        refresh_fraction: float = 0.25,
        stats_interval: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not 0.0 < refresh_fraction <= 1.0:
            raise ValueError(f"refresh_fraction must be in (0, 1], got {refresh_fraction!r}")
        if not (stats_interval > 0 and math.isfinite(stats_interval)):
            raise ValueError(f"stats_interval must be positive seconds, got {stats_interval!r}")
        clean = "/" + prefix.strip("/")
        if clean == "/":
            raise ValueError("prefix must not be empty or '/'")
        self._cluster = _Cluster(list(endpoints), timeout)
        self._prefix = clean.encode()
        self._s = self._prefix + b"/s/"
        self._c = self._prefix + b"/c/"
        self._u = self._prefix + b"/u/"
        self._refresh_fraction = refresh_fraction
        self._stats_interval = stats_interval
        self._mono = monotonic
        self._cache: dict[str, _Entry] = {}
        self._own_deletes: set[str] = set()
        self._listeners: builtins.list[Listener] = []
        self._watch_rev = 0
        # sessions stored cluster-wide, kept by the watch (creations +1, deletions -1) so that
        # `approximate_count` costs no request; set from a full count at start and resync
        self._count = 0
        self._tasks: builtins.list[asyncio.Task[None]] = []
        self._revokes: set[asyncio.Task[None]] = set()
        self._watch_ready = asyncio.Event()
        self._started = False
        self._closing = False
        self._closed = False
        #: etcd requests issued (reads, writes, lease calls): for benchmarks and tests
        self.requests = 0

    # -- life cycle

    @property
    def endpoints(self) -> builtins.list[str]:
        return builtins.list(self._cluster.endpoints)

    @property
    def prefix(self) -> str:
        return self._prefix.decode()

    async def start(self) -> None:
        """Connect, learn the current revision and start the watch and the flusher.

        Raises `StoreUnavailable` if no endpoint answers within the timeout.
        """
        if self._closing:
            raise RuntimeError("EtcdStore is closed")
        if self._started:
            return
        result, _ = await self._call(lambda c: c.get_prefix(self._s, keys_only=True))
        self._watch_rev = result.header.revision
        self._count = len(result.kvs)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_loop(), name="etcd-session-watch"),
            loop.create_task(self._flush_loop(), name="etcd-session-flush"),
        ]
        self._started = True
        # wait (bounded) for the watch to be registered, so changes made right after start
        # are never missed by this node
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._cluster.timeout):
                await self._watch_ready.wait()

    async def close(self) -> None:
        """Flush what is dirty (best effort), stop the tasks, drop the connection. Idempotent."""
        if self._closing:
            return
        self._closing = True
        if self._started:
            with contextlib.suppress(SessionError):
                await self.flush()
        if self._revokes:
            await asyncio.wait(builtins.list(self._revokes), timeout=self._cluster.timeout)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        await self._cluster.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def add_listener(self, callback: Listener) -> None:
        """Be told of sessions removed elsewhere: ``callback(last_known_session, reason)``."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    # -- keys and low-level calls

    def _skey(self, sid: str) -> bytes:
        return self._s + sid.encode()

    def _ckey(self, cid: str) -> bytes:
        return self._c + cid.encode()

    def _ukey(self, uid: str, sid: str) -> bytes:
        return self._uprefix(uid) + sid.encode()

    def _uprefix(self, uid: str) -> bytes:
        return self._u + quote(uid, safe="").encode() + b"/"

    def _lease_ttl(self, session: Session) -> int:
        timeout = (session.expires_at - session.last_active_at).total_seconds()
        return math.ceil(max(timeout, 1.0) * (1.0 + self._refresh_fraction)) + 1

    def _arm(self, entry: _Entry, mono: float) -> None:
        """The lease was just granted or kept alive: schedule the next keepalive."""
        timeout = (entry.lease_ttl - 1) / (1.0 + self._refresh_fraction)
        entry.refresh_at = mono + timeout * self._refresh_fraction

    def _new_entry(self, session: Session, rev: int, lease: int, owned: bool) -> _Entry:
        now = self._mono()
        entry = _Entry(
            session, rev, rev, lease, self._lease_ttl(session),
            session.expires_at - session.last_active_at, now, now, owned,
        )
        self._arm(entry, now)
        return entry

    async def _call(self, op: Callable[[aetcd.Client], Awaitable[_T]]) -> tuple[_T, bool]:
        if self._closed:
            raise StoreUnavailable("EtcdStore is closed")
        self.requests += 1
        return await self._cluster.call(op)

    async def _txn(
        self, compare: builtins.list[Any], success: builtins.list[Any],
        failure: builtins.list[Any],
    ) -> tuple[bool, int, builtins.list[Any], bool]:
        """One transaction: (succeeded, revision, responses, retried)."""
        (ok, responses), retried = await self._call(
            lambda c: c.transaction(compare=compare, success=success, failure=failure)
        )
        return ok, _revision_of(responses), responses, retried

    async def _grant(self, ttl: int) -> int:
        lease, _ = await self._call(lambda c: c.lease(ttl))
        return int(lease.id)

    def _revoke_later(self, lease: int) -> None:
        """Free a lease nobody uses any more; failure only means etcd frees it at its TTL."""
        if lease and not self._closed:
            task = asyncio.get_running_loop().create_task(self._revoke(lease))
            self._revokes.add(task)  # held so it is not collected mid-flight
            task.add_done_callback(self._revokes.discard)

    async def _revoke(self, lease: int) -> None:
        with contextlib.suppress(SessionError):
            await self._call(lambda c: c.revoke_lease(lease))

    def _put_ops(self, session: Session, value: bytes, lease: int) -> builtins.list[Any]:
        sid = session.session_id
        ops = [
            aetcd.transactions.Put(self._skey(sid), value, lease=lease),
            aetcd.transactions.Put(self._ukey(session.user_id, sid), b"", lease=lease),
        ]
        if session.connection_id:  # empty: no connection holds it yet, nothing to index
            ops.append(aetcd.transactions.Put(self._ckey(session.connection_id), sid.encode(),
                                              lease=lease))
        return ops

    def _connection_unindex(self, connection_id: str) -> builtins.list[Any]:
        return [aetcd.transactions.Delete(self._ckey(connection_id))] if connection_id else []

    def _connection_free(self, connection_id: str) -> builtins.list[Any]:
        """The compare that a connection id is not indexed yet (none for the empty id)."""
        if not connection_id:
            return []
        return [aetcd.transactions.Create(self._ckey(connection_id)) == 0]

    def _decode_logged(self, key: bytes, value: bytes) -> Session:
        try:
            return decode_session(key, value)
        except InvalidSession as exc:
            _log.error("undecodable session record", key=key.decode(errors="replace"),
                       error=str(exc))
            raise

    # -- Store: writes

    async def create(self, session: Session, *, max_user_sessions: int | None = None) -> None:
        validate_session(session)
        stored = session.copy()
        sid = stored.session_id
        value = encode_session(stored)
        lease = await self._grant(self._lease_ttl(stored))
        try:
            rev = await self._create_txn(stored, value, lease, max_user_sessions)
        except SessionError:
            self._revoke_later(lease)
            raise
        self._cache[sid] = self._new_entry(stored, rev, lease, owned=True)

    async def _create_txn(
        self, stored: Session, value: bytes, lease: int, max_user_sessions: int | None
    ) -> int:
        """Write a new session's keys; the revision written at.

        The user limit is an optimistic check: count the user's index keys at revision R,
        then write only if no key of that index was created after R (a compare over the key
        range: create revision < R + 1 for every key in it). A session of the same user
        created meanwhile, by this node or another, fails the compare, and the count is
        taken again, so of two creates racing for the last slot one wins and one is refused.
        """
        sid, cid = stored.session_id, stored.connection_id
        skey, ckey = self._skey(sid), self._ckey(cid)
        for _ in range(_MERGE_ATTEMPTS):
            compare = [aetcd.transactions.Create(skey) == 0, *self._connection_free(cid)]
            if max_user_sessions is not None:
                compare.append(await self._user_slot_free(stored.user_id, max_user_sessions))
            ok, rev, responses, retried = await self._txn(
                compare,
                self._put_ops(stored, value, lease),
                [aetcd.transactions.Get(skey), aetcd.transactions.Get(ckey)],
            )
            if ok:
                return rev
            current, owner = _kv_of(responses[0]), _kv_of(responses[1])
            if retried and current is not None and current.value == value:
                return int(current.mod_revision)  # our lost-answer attempt did apply
            if current is not None:
                raise SessionExists(f"session already exists: {sid}")
            if owner is not None:
                holder = owner.value.decode(errors="replace")
                raise SessionExists(f"connection {cid} already has a session: {holder}")
            # neither key exists: the user's index changed since it was counted; count again
        raise SessionConflict(
            f"session {sid}: user {stored.user_id!r} kept gaining sessions while this one "
            f"was created; gave up after {_MERGE_ATTEMPTS} attempts"
        )

    async def _user_slot_free(self, user_id: str, limit: int) -> Any:
        """`TooManyUserSessions` if the user has `limit` sessions now; else the compare that
        holds while no session of the user has been created since they were counted."""
        prefix = self._uprefix(user_id)
        index, _ = await self._call(lambda c: c.get_prefix(prefix, keys_only=True))
        count = len(index.kvs)
        if count >= limit:
            raise too_many_user_sessions(user_id, count, limit)
        end = aetcd.utils.prefix_range_end(prefix)
        return aetcd.transactions.Create(prefix, range_end=end) < index.header.revision + 1

    async def update(self, session: Session) -> None:
        validate_session(session)
        new = session.copy()
        entry = await self._entry(new.session_id)
        old = entry.session
        # the timeout the lease was sized for only changes with `expires_at`: an update that
        # counts as activity without extending expiry must not re-grant (and later a heartbeat
        # re-grant back) a lease sized for the shrinking time left
        keep = new.expires_at == old.expires_at
        ttl = entry.lease_ttl if keep else self._lease_ttl(new)
        if (
            entry.owned
            and old.connection_id == new.connection_id
            and old.user_id == new.user_id
            and old.state is new.state
            and old.client_ip == new.client_ip
            and old.client_port == new.client_port
            and old.server_addr == new.server_addr
            and old.metadata == new.metadata
            and old.token_hash == new.token_hash
            and old.previous_token_hash == new.previous_token_hash
            and old.timeout == new.timeout
            and old.created_at == new.created_at
            and ttl == entry.lease_ttl
            and entry.seen_rev == entry.mod_rev
        ):
            # only timestamps and stats changed: the heartbeat-like path, written lazily
            entry.session = new
            entry.dirty = True
            now = self._mono()
            if now >= entry.refresh_at:
                await self._refresh(entry, now)
            return
        await self._write(entry, new, entry.seen_rev, ttl if keep else None)
        entry.owned = True

    async def _write(
        self, entry: _Entry, new: Session, expect_rev: int, keep_ttl: int | None = None
    ) -> None:
        """Replace the record (and indexes) if its revision is still `expect_rev`.

        The lease is sized from the record's timeout, or kept when `keep_ttl` says the
        timeout has not changed.
        """
        old = entry.session
        sid = new.session_id
        skey, ckey = self._skey(sid), self._ckey(new.connection_id)
        ttl = self._lease_ttl(new) if keep_ttl is None else keep_ttl
        lease = entry.lease if ttl == entry.lease_ttl else await self._grant(ttl)
        value = encode_session(new)
        # `new` may be the cached copy, which heartbeats keep changing while the write is in
        # flight: what changed after encoding is still unwritten when the answer comes
        sent_active, sent_stats = new.last_active_at, new.stats
        compare = [aetcd.transactions.Mod(skey) == expect_rev]
        ops = self._put_ops(new, value, lease)
        if old.connection_id != new.connection_id:
            compare.extend(self._connection_free(new.connection_id))
            ops.extend(self._connection_unindex(old.connection_id))
        if old.user_id != new.user_id:
            ops.append(aetcd.transactions.Delete(self._ukey(old.user_id, sid)))
        try:
            ok, rev, responses, retried = await self._txn(
                compare, ops, [aetcd.transactions.Get(skey), aetcd.transactions.Get(ckey)]
            )
        except StoreUnavailable:
            if lease != entry.lease:
                self._revoke_later(lease)
            raise
        if not ok:
            current, owner = _kv_of(responses[0]), _kv_of(responses[1])
            if retried and current is not None and current.value == value:
                rev = current.mod_revision
            else:
                if lease != entry.lease:
                    self._revoke_later(lease)
                if current is None:
                    self._cache.pop(sid, None)
                    raise not_found(sid)
                if current.mod_revision != expect_rev:
                    self._adopt(sid, current)
                    raise SessionConflict(
                        f"session {sid} was changed by another node (revision "
                        f"{current.mod_revision}, expected {expect_rev}); re-read and retry"
                    )
                holder = owner.value.decode(errors="replace") if owner else "?"
                raise SessionExists(
                    f"connection {new.connection_id} already has a session: {holder}"
                )
        if lease != entry.lease:
            self._revoke_later(entry.lease)
            entry.lease, entry.lease_ttl = lease, ttl
            self._arm(entry, self._mono())
        entry.written = self._mono()
        if rev < entry.mod_rev:
            return  # the watch already delivered a later write made on top of this one
        if keep_ttl is None:
            entry.span = new.expires_at - new.last_active_at
        entry.session = new
        entry.mod_rev = entry.seen_rev = rev
        entry.dirty = new.last_active_at != sent_active or new.stats is not sent_stats

    def touch_nowait(self, session_id: str, now: datetime,
                     expires_at: datetime) -> bool | Wake:
        """The common heartbeat without any I/O: an owned ACTIVE session, same timeout, lease
        refresh not yet due. Returns False, changing nothing, when `touch` must do it (the
        session is not cached here, or it needs a state write (a wake-up is one) or a lease
        refresh); never a `Wake`."""
        entry = self._cache.get(session_id)
        if entry is None or not entry.owned:
            return False
        session = entry.session
        if now >= session.expires_at:
            raise SessionExpired(f"session expired: {session_id}")
        if (session.state is not _ACTIVE or expires_at - now != entry.span
                or self._mono() >= entry.refresh_at):
            return False
        session.last_active_at = now
        session.expires_at = expires_at
        entry.dirty = True
        return True

    async def touch(self, session_id: str, now: datetime,
                    expires_at: datetime) -> Wake | None:
        # The hot path. In the common case (an owned, ACTIVE session, same timeout, lease not
        # yet due) it only changes the cached copy: no etcd call, no allocation beyond the
        # timedelta of the timeout check.
        entry = self._cache.get(session_id)
        if entry is None or not entry.owned:
            entry = await self._entry(session_id)
            entry.owned = True
        session = entry.session
        if now >= session.expires_at:
            raise SessionExpired(f"session expired: {session_id}")
        session.last_active_at = now
        session.expires_at = expires_at
        entry.dirty = True
        if session.state is _ACTIVE and expires_at - now == entry.span:
            mono = self._mono()
            if mono >= entry.refresh_at:
                await self._refresh(entry, mono)
            return None
        previous = session.state
        if previous in _WAKE:
            session.state = _ACTIVE
            await self._flush_entry(entry, force=True)  # state changes are not left lazy
            return previous, entry.session.copy()
        if self._lease_ttl(session) != entry.lease_ttl:
            await self._flush_entry(entry, force=True)  # the lease must be re-granted
        else:
            entry.span = expires_at - now
            mono = self._mono()
            if mono >= entry.refresh_at:
                await self._refresh(entry, mono)
        return None

    async def set_stats(self, session_id: str, stats: Stats) -> None:
        entry = self._cache.get(session_id)
        if entry is None or not entry.owned:
            entry = await self._entry(session_id)
            entry.owned = True
        entry.session.stats = stats.copy()
        entry.dirty = True

    async def _refresh(self, entry: _Entry, mono: float) -> None:
        """Keep the lease alive and write the lazily kept fields with it."""
        reply, _ = await self._call(lambda c: c.refresh_lease(entry.lease))
        if reply is None or reply.TTL <= 0:
            # the lease ran out (e.g. etcd was unreachable for longer than the TTL): the keys
            # are gone, so the session is too
            self._cache.pop(entry.session.session_id, None)
            raise not_found(entry.session.session_id)
        self._arm(entry, mono)
        await self._flush_entry(entry, force=True)

    async def _flush_entry(self, entry: _Entry, force: bool = False) -> None:
        """Write a dirty entry, merging onto a newer record if another node changed it."""
        if not entry.dirty and not force:
            return
        local = entry.session
        sid = local.session_id
        for _ in range(_MERGE_ATTEMPTS):
            try:
                await self._write(entry, local, entry.mod_rev)
                return
            except SessionConflict:
                # the newer record was adopted into the entry (by `_write`, or already by the
                # watch while the write was in flight, in which case `_on_event` re-applied
                # the keepalive): re-apply what this node owns on top of it and try again
                remote = entry.session
                _reapply(remote, local)
                entry.dirty = True
                local = remote
        raise SessionConflict(f"session {sid}: gave up after {_MERGE_ATTEMPTS} conflicts")

    async def flush(self) -> None:
        """Write every dirty owned session now (the flusher does this periodically)."""
        for entry in builtins.list(self._cache.values()):
            if entry.dirty and entry.owned:
                await self._flush_entry(entry)

    async def delete(
        self, session_id: str, *, only_if: Callable[[Session], bool] | None = None
    ) -> Session:
        for _ in range(_MERGE_ATTEMPTS):
            entry = await self._entry(session_id)
            session = entry.session
            # checked on the version the transaction's revision compare pins: if another
            # node changed the session since, the compare fails and the newer one is checked
            if only_if is not None and not only_if(session.copy()):
                raise changed(session_id)
            skey = self._skey(session_id)
            self._own_deletes.add(session_id)
            try:
                ok, _, responses, retried = await self._txn(
                    [aetcd.transactions.Mod(skey) == entry.mod_rev],
                    [
                        aetcd.transactions.Delete(skey),
                        aetcd.transactions.Delete(self._ukey(session.user_id, session_id)),
                        *self._connection_unindex(session.connection_id),
                    ],
                    [aetcd.transactions.Get(skey)],
                )
            except StoreUnavailable:
                self._own_deletes.discard(session_id)
                raise
            if ok or (retried and _kv_of(responses[0]) is None):
                self._cache.pop(session_id, None)
                self._revoke_later(entry.lease)
                return session
            self._own_deletes.discard(session_id)
            current = _kv_of(responses[0])
            if current is None:
                self._cache.pop(session_id, None)
                raise not_found(session_id)
            self._adopt(session_id, current)
        raise SessionConflict(f"session {session_id}: gave up deleting after repeated changes")

    async def expire(self, now: datetime) -> builtins.list[Session]:
        due = [
            sid for sid, e in self._cache.items() if e.owned and now >= e.session.expires_at
        ]
        removed: builtins.list[Session] = []
        for sid in due:
            entry = self._cache.get(sid)
            if entry is None or now < entry.session.expires_at:
                continue  # changed while an earlier delete was in flight
            try:
                removed.append(await self.delete(sid))
            except SessionConflict:
                continue  # another node keeps changing it; the next sweep decides
            except InvalidSession:
                continue
            except SessionError as exc:
                if isinstance(exc, StoreUnavailable):
                    raise
                continue  # already gone: someone else (or the lease) removed it
        return removed

    # -- Store: reads

    async def _entry(self, session_id: str) -> _Entry:
        """The cached entry, loading it from etcd on a miss. Raises `SessionNotFound`."""
        entry = self._cache.get(session_id)
        if entry is not None:
            return entry
        key = self._skey(session_id)
        kv, _ = await self._call(lambda c: c.get(key))
        if kv is None:
            raise not_found(session_id)
        return self._adopt(session_id, kv)

    def _adopt(self, session_id: str, kv: Any) -> _Entry:
        """Cache the record `kv` as this node's view of the session."""
        session = self._decode_logged(kv.key, kv.value)
        entry = self._cache.get(session_id)
        if entry is None:
            entry = self._new_entry(session, kv.mod_revision, kv.lease, owned=False)
            self._cache[session_id] = entry
        elif kv.mod_revision > entry.mod_rev:
            if kv.lease != entry.lease:
                entry.lease, entry.lease_ttl = kv.lease, self._lease_ttl(session)
                entry.span = session.expires_at - session.last_active_at
                self._arm(entry, self._mono())
            entry.session = session
            entry.mod_rev = kv.mod_revision
            entry.dirty = False
        return entry

    async def get(self, session_id: str) -> Session:
        entry = await self._entry(session_id)
        entry.seen_rev = entry.mod_rev
        return entry.session.copy()

    async def get_by_connection_id(self, connection_id: str) -> Session:
        key = self._ckey(connection_id)
        kv, _ = await self._call(lambda c: c.get(key))
        if kv is None:
            raise not_found_for_connection(connection_id)
        sid = kv.value.decode(errors="replace")
        try:
            session = await self.get(sid)
        except SessionError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
            raise not_found_for_connection(connection_id) from None
        if session.connection_id != connection_id:
            raise not_found_for_connection(connection_id)
        return session

    async def _all(self) -> builtins.list[Session]:
        """Every stored session, newest known version first from the cache, sorted by id."""
        result, _ = await self._call(lambda c: c.get_prefix(self._s))
        found: dict[str, Session] = {}
        for kv in result.kvs:
            sid = kv.key[len(self._s):].decode(errors="replace")
            entry = self._cache.get(sid)
            if entry is not None and entry.mod_rev >= kv.mod_revision:
                found[sid] = entry.session
                continue
            try:
                found[sid] = decode_session(kv.key, kv.value)
            except InvalidSession as exc:
                _log.error("undecodable session record skipped", key=kv.key.decode(
                    errors="replace"), error=str(exc))
        return [found[sid].copy() for sid in sorted(found)]

    async def _of_user(self, user_id: str) -> builtins.list[Session]:
        prefix = self._u + quote(user_id, safe="").encode() + b"/"
        index, _ = await self._call(lambda c: c.get_prefix(prefix, keys_only=True))
        sids = sorted(kv.key[len(prefix):].decode(errors="replace") for kv in index.kvs)
        missing = [sid for sid in sids if sid not in self._cache]
        loaded: dict[str, Session] = {}
        responses: builtins.list[Any] = []
        for start in range(0, len(missing), _TXN_OPS):
            gets = [aetcd.transactions.Get(self._skey(s)) for s in missing[start:start + _TXN_OPS]]
            _, _, chunk, _ = await self._txn([], gets, [])
            responses.extend(chunk)
        if missing:
            for sid, response in zip(missing, responses, strict=True):
                kv = _kv_of(response)
                if kv is None:
                    continue  # deleted between the two reads
                try:
                    loaded[sid] = decode_session(kv.key, kv.value)
                except InvalidSession as exc:
                    _log.error("undecodable session record skipped",
                               key=kv.key.decode(errors="replace"), error=str(exc))
        sessions: builtins.list[Session] = []
        for sid in sids:
            entry = self._cache.get(sid)
            session = entry.session if entry is not None else loaded.get(sid)
            if session is not None and session.user_id == user_id:
                sessions.append(session.copy())
        return sessions

    async def list(self, filter: SessionFilter) -> tuple[builtins.list[Session], int]:
        if filter.user_id is not None:
            candidates = await self._of_user(filter.user_id)
        else:
            candidates = await self._all()
        matching = [s for s in candidates if filter.matches(s)]
        return filter.page(matching), len(matching)

    async def get_by_user_id(self, user_id: str) -> builtins.list[Session]:
        return await self._of_user(user_id)

    async def count(self) -> int:
        result, _ = await self._call(lambda c: c.get_prefix(self._s, keys_only=True))
        return int(result.count)

    async def approximate_count(self) -> int:
        """The cluster's session count as the watch last reported it: no request. It lags
        etcd by the watch's delivery delay (milliseconds), this node's own creates included."""
        return self._count

    async def ping(self) -> None:
        """One linearizable read of a key that never exists: it needs a member that answers
        and a cluster with quorum, as every write does. Raises `StoreUnavailable`."""
        key = self._prefix + b"/ping"
        await self._call(lambda c: c.get(key))

    async def count_by_state(self) -> dict[State, int]:
        counts = dict.fromkeys(State, 0)
        for session in await self._all():
            counts[session.state] += 1
        return counts

    # -- background: watch and flusher

    async def _watch_loop(self) -> None:
        backoff = 0.1
        while not self._closed:
            try:
                watch, _ = await self._call(
                    lambda c: c.watch_prefix(
                        self._s, start_revision=self._watch_rev + 1, prev_kv=True
                    )
                )
                self._watch_ready.set()
                backoff = 0.1
                async for event in watch:
                    self._on_event(event)
            except aetcd.exceptions.RevisionCompactedError:
                await self._resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch must outlive every etcd failure
                _log.warning("etcd watch interrupted", endpoints=self._cluster.describe(),
                             error=str(exc))
            if self._closed:
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    def _on_event(self, event: Any) -> None:
        kv = event.kv
        self._watch_rev = max(self._watch_rev, kv.mod_revision)
        sid = kv.key[len(self._s):].decode(errors="replace")
        if event.kind == aetcd.rtypes.EventKind.PUT:
            if kv.version == 1:  # the first version of the key: a session was created
                self._count += 1
            if sid in self._cache:
                with contextlib.suppress(InvalidSession):
                    entry = self._cache[sid]
                    dirty, local = entry.dirty, entry.session
                    self._adopt(sid, kv)
                    if dirty and entry.session is not local:
                        # keep this node's unwritten keepalive and stats, unless the record
                        # already has them (e.g. it is this node's own write, or one on top)
                        entry.dirty = _reapply(entry.session, local)
            return
        self._count = max(0, self._count - 1)
        if sid in self._own_deletes:
            self._own_deletes.discard(sid)
            return
        gone = self._cache.pop(sid, None)
        last: Session | None = gone.session if gone is not None else None
        if last is None and event.prev_kv is not None:
            with contextlib.suppress(InvalidSession):
                last = self._decode_logged(event.prev_kv.key, event.prev_kv.value)
        if last is None:
            return
        reason = "expired" if datetime.now(UTC) >= last.expires_at else "deleted"
        self._notify(last, reason)

    def _notify(self, session: Session, reason: str) -> None:
        for callback in tuple(self._listeners):
            try:
                callback(session.copy(), reason)
            except Exception:  # one faulty listener must not stop the watch
                _log.exception("etcd store listener failed", session_id=session.session_id)

    async def _resync(self) -> None:
        """After the watch lost history (compaction), re-read every cached session."""
        result, _ = await self._call(lambda c: c.get_prefix(self._s))
        present = {kv.key[len(self._s):].decode(errors="replace"): kv for kv in result.kvs}
        for sid in builtins.list(self._cache):
            kv = present.get(sid)
            if kv is None:
                entry = self._cache.pop(sid)
                self._notify(entry.session, "deleted")
            else:
                with contextlib.suppress(InvalidSession):
                    self._adopt(sid, kv)
        self._watch_rev = result.header.revision
        self._count = len(present)

    async def _flush_loop(self) -> None:
        interval = self._stats_interval
        while not self._closed:
            await asyncio.sleep(interval / 2)
            now = self._mono()
            for entry in builtins.list(self._cache.values()):
                if not (entry.owned and entry.dirty) or now - entry.written < interval:
                    continue
                try:
                    if now >= entry.refresh_at:
                        await self._refresh(entry, now)
                    else:
                        await self._flush_entry(entry)
                except SessionError as exc:
                    _log.warning("session flush failed", session_id=entry.session.session_id,
                                 error=str(exc))
                    if isinstance(exc, StoreUnavailable):
                        break


def _reapply(remote: Session, local: Session) -> bool:
    """Carry what this node owns and has not written yet onto a newer record of the session.

    That is the keepalive (timestamps, and the wake-up from CONNECTING/IDLE that the same
    `touch` made: the two travel together, or the old state would be written back under the
    new timestamp) when it is newer than the record's, and the stats. Used both when a write
    loses its compare and when the watch delivers a remote write over unwritten changes; the
    two can happen to the same write, so applying it twice must change nothing. Returns
    whether the record lacked any of it, i.e. whether it still has to be written.
    """
    behind = local.last_active_at > remote.last_active_at
    if behind:
        remote.last_active_at = local.last_active_at
        remote.expires_at = local.expires_at
        if local.state is _ACTIVE and remote.state in _WAKE:
            remote.state = _ACTIVE
    if remote.stats != local.stats:
        remote.stats = local.stats
        behind = True
    return behind


def _kv_of(response: Any) -> Any:
    """The key-value of a transaction's Get response, or None when the key is absent."""
    if isinstance(response, builtins.list):
        return response[0][1] if response else None
    return None


def _revision_of(responses: builtins.list[Any]) -> int:
    """The store revision a transaction was applied at, from whichever response carries it."""
    for response in responses:
        if isinstance(response, builtins.list):
            if response:
                return int(response[0][1].header.revision)
            continue
        kind = response.WhichOneof("response")
        if kind is not None:
            return int(getattr(response, kind).header.revision)
    return 0
