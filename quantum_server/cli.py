"""The `quantum-server` command line: the server itself (`serve`, `run_app`) and its
subcommands (`keygen`, `issue-ticket`). `quantum-server --help` lists the flags; every flag is
checked here or by `ServerConfig`, and a bad one prints what was wrong and exits 2."""

from __future__ import annotations

import argparse
import asyncio
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from quantum.addresses import unbracketed
from quantum.auth import MAX_TICKET_TTL, AnonymousAuthenticator, Authenticator, TicketAuthenticator
from quantum.config import MIN_SEND_BUFFER
from quantum.crypto import CIPHER_IDS, DEFAULT_CIPHERS
from quantum.handshake import MAX_PARAM_MS
from quantum.keys import KeyFileError, ServerKeyFile, default_key_path, fingerprint
from quantum_server.config import ServerConfig
from quantum_server.restart import RestartSnapshot, default_snapshot_path
from quantum_server.services import NetworkServices, ServiceConfigError, add_arguments
from quantum_server.system import GC_YOUNG_THRESHOLD, tune_collector
from server import Application, QuantumServer
from session.errors import StoreUnavailable
from session.logs import LazyLogger
from session.manager import MAX_TIMEOUT, ManagerConfig, SessionManager
from session.memory import MemoryStore

#: follows the application's structlog configuration, even one made after this import; without
#: one, INFO and up on stderr (session/logs.py)
log = LazyLogger("quantum.server")


#: the longest duration the wire carries (keepalive interval, idle timeout: u32 milliseconds)
MAX_WIRE_SECONDS: Final = MAX_PARAM_MS / 1000


def _positive(kind: type[float] | type[int], minimum: float = 0.0,
              maximum: float | None = None) -> Callable[[str], float | int]:
    """An argparse type: a finite number above zero (at least `minimum` if that is set) and at
    most `maximum`."""
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {_plain(minimum)}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {_plain(maximum)}, got {text}")
        return value
    return parse


def _whole(text: str, what: str, maximum: int, bound: str) -> int:
    """A whole number from 0 to `maximum`, or argparse's error naming `what` it must be and
    its `bound`."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if not 0 <= value <= maximum:
        raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
    return value


def _byte_count(text: str) -> int:
    """An argparse type: a whole number of bytes, 0 to 2**40 (0: keep nothing)."""
    return _whole(text, "a whole number of bytes", 1 << 40, "0 to 2**40 bytes")


def _gc_threshold(text: str) -> int:
    """An argparse type: the collector's young-generation threshold, 0 to 10,000,000 (0: the
    collector left as CPython sets it)."""
    return _whole(text, "a whole number", 10_000_000, "0 to 10000000")


def _plain(number: float) -> str:
    """A bound as people write it: 31536000, 4294967.295, 0.001."""
    return f"{number:.3f}".rstrip("0").rstrip(".")


def _host(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return unbracketed(text)


def _ciphers(text: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in text.split(","))
    unknown = [n for n in names if n not in CIPHER_IDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown cipher {unknown[0]!r}; choose among {', '.join(CIPHER_IDS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError("a cipher is named twice")
    return names


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantum-server",
        description="Quantum-protocol UDP server with a built-in session service. "
                    "Subcommands: 'keygen', 'issue-ticket', 'api-token' and 'sessions' (see "
                    "'quantum-server sessions -h').")
    p.add_argument("--host", type=_host, default="0.0.0.0",
                   help="address to bind: IPv4, IPv6 (:: serves both: dual stack) or a name "
                        "(default 0.0.0.0)")
    p.add_argument("--port", type=_port, default=9090, help="UDP port (default 9090; 0 = any)")
    p.add_argument("--store", choices=("memory", "etcd"), default="memory",
                   help="session store (default memory)")
    p.add_argument("--etcd-endpoints", default="127.0.0.1:2379",
                   help="comma-separated host:port list of one etcd cluster")
    p.add_argument("--etcd-prefix", default="/quantum", help="etcd key prefix (default /quantum)")
    p.add_argument("--session-timeout", type=_positive(float, maximum=MAX_TIMEOUT),
                   default=1800.0,
                   help="seconds a session lives without heartbeats (default 1800, at most a "
                        "year)")
    wire_seconds = _positive(float, minimum=0.001, maximum=MAX_WIRE_SECONDS)
    p.add_argument("--keepalive-interval", type=wire_seconds, default=10.0,
                   help="keepalive interval clients are told to use (default 10)")
    p.add_argument("--idle-timeout", type=wire_seconds, default=60.0,
                   help="seconds of silence before a connection is dropped (default 60)")
    p.add_argument("--fec", action=argparse.BooleanOptionalAction, default=True,
                   help="Reed-Solomon forward error correction, 10+3 (default on)")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"server key file (default {default_key_path()}; created if missing)")
    p.add_argument("--snapshot", type=Path, default=None, metavar="PATH",
                   help="where a memory-store server keeps its sessions across a restart "
                        "(written on SIGTERM/SIGINT, loaded and deleted at start; default "
                        "beside the key file, its extension .snapshot: server.snapshot)")
    p.add_argument("--no-snapshot", action="store_true",
                   help="neither load nor write the session snapshot: a restart forgets "
                        "every session")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="DEVELOPMENT ONLY: accept any claimed user id without a ticket")
    p.add_argument("--max-connections", type=_positive(int), default=10_000,
                   help="connection cap; handshakes beyond it are refused (default 10000)")
    p.add_argument("--max-send-buffer", type=_positive(int), default=4 << 20,
                   help="bytes one client may have queued or unacknowledged before sends "
                        f"are refused (default 4 MiB, at least {MIN_SEND_BUFFER})")
    p.add_argument("--retain-session-bytes", type=_byte_count, default=1 << 20,
                   help="bytes of a lost connection's unacknowledged reliable data kept for "
                        "its session's resume (default 1 MiB; over it, the data is declared "
                        "lost at the resume; 0: keep nothing)")
    p.add_argument("--retain-total-bytes", type=_byte_count, default=256 << 20,
                   help="bytes kept for the resumes of all lost connections together "
                        "(default 256 MiB)")
    p.add_argument("--stall-timeout", type=_positive(float), default=30.0,
                   help="seconds a client may go on sending without acknowledging anything "
                        "before it is closed (default 30)")
    p.add_argument("--ciphers", type=_ciphers, default=DEFAULT_CIPHERS,
                   help="comma-separated AEAD ciphers to accept, e.g. chacha20-poly1305 "
                        f"(default {','.join(DEFAULT_CIPHERS)}; a client's order decides "
                        "among them)")
    p.add_argument("--max-connections-per-user", type=_positive(int), default=8,
                   help="connections one user may hold at once (default 8)")
    p.add_argument("--max-connections-per-address", type=_positive(int), default=64,
                   help="connections one source address (IPv6: /64) may hold at once "
                        "(default 64; raise it for clients behind a large NAT)")
    p.add_argument("--max-sessions-per-user", type=_positive(int), default=8,
                   help="sessions one user may hold; the least recently active disconnected "
                        "one is evicted for a new one (default 8)")
    p.add_argument("--max-sessions", type=_positive(int), default=100_000,
                   help="sessions the session service holds in all (default 100000)")
    p.add_argument("--handshake-rate", type=_positive(float), default=20.0,
                   help="handshakes per second one source address may start before it must "
                        "prove its address with a retry cookie (default 20)")
    p.add_argument("--handshake-burst", type=_positive(float, minimum=1.0), default=40.0,
                   help="burst allowed above --handshake-rate (default 40)")
    p.add_argument("--retry-above-rate", type=_positive(float), default=500.0,
                   help="handshakes per second in all above which every new source must echo "
                        "a retry cookie first (default 500)")
    p.add_argument("--gc-young-threshold", type=_gc_threshold, default=GC_YOUNG_THRESHOLD,
                   metavar="N",
                   help="net allocations between the cyclic collector's young collections "
                        "once serving, after freezing what setup left "
                        f"(default {GC_YOUNG_THRESHOLD}; 0: neither, CPython's 700)")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    add_arguments(p)  # --grpc, --metrics and their TLS flags
    return p


def _keygen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantum-server keygen",
                                description="Write a new server key file (mode 0600).")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"where to write it (default {default_key_path()})")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    return p


def _ticket_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantum-server issue-ticket",
                                description="Print a signed login ticket for a user.")
    p.add_argument("--user", required=True, help="user id the ticket is for")
    p.add_argument("--ttl", type=_positive(float, maximum=MAX_TICKET_TTL), default=3600.0,
                   help="seconds the ticket is valid (default 3600, at most a year: 31536000)")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"server key file (default {default_key_path()})")
    return p


def _keygen(argv: list[str]) -> int:
    args = _keygen_parser().parse_args(argv)
    path = args.key_file or default_key_path()
    if path.exists() and not args.force:
        print(f"quantum-server keygen: {path} exists; use --force to replace it", file=sys.stderr)
        return 2
    try:
        key = ServerKeyFile.generate(path)
    except KeyFileError as exc:
        print(f"quantum-server keygen: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    print(f"public key:  {key.public_key_text}")
    print(f"fingerprint: {fingerprint(key.public_key)}")
    return 0


def _issue_ticket(argv: list[str]) -> int:
    from quantum.auth import issue_ticket

    args = _ticket_parser().parse_args(argv)
    path = args.key_file or default_key_path()
    try:
        key = ServerKeyFile.load(path)
        print(issue_ticket(key.ticket_secret, args.user, args.ttl, time.time()))
    except (KeyFileError, ValueError) as exc:
        print(f"quantum-server issue-ticket: {exc}", file=sys.stderr)
        return 2
    return 0


def _snapshot_flag_problem(args: argparse.Namespace, key_path: Path) -> str | None:
    """What is wrong with the snapshot flags, if anything."""
    if args.snapshot is None:
        return None
    if args.no_snapshot:
        return "--snapshot contradicts --no-snapshot"
    if args.store != "memory":
        return ("--snapshot is for --store memory: with etcd the sessions are already shared "
                "and outlive every node")
    if args.snapshot.resolve() == key_path.resolve():
        return "--snapshot must not be the key file"
    if args.snapshot.is_dir():
        return f"--snapshot {args.snapshot} is a folder: name a file"
    return None


async def _stop_budget(server: QuantumServer) -> float:
    """Seconds `stop` may take: STOP_BASE to close the connections (`QuantumServer.stop`
    waits up to 2 s for the clients' goodbyes and up to 2 s for the application's and the
    session updates' tasks, then writes), and with a snapshot to write, a second per 5,000
    sessions and per 100 MB of retained data on top: several times what writing takes
    (50,000 sessions: about 3 s of CPU, benchmarks/restart.py), so that a loaded machine does
    not lose the sessions, yet bounded."""
    if server.restart_snapshot is None:
        return STOP_BASE
    sessions = await server.manager.store.count()
    return STOP_BASE + sessions / 5_000 + server.retained.total_bytes / 100e6


#: the stop's budget without a snapshot: the two 2 s waits of `QuantumServer.stop` and 2 s for
#: everything after them (4.5 s left an application task that never ends half a second for
#: the snapshot and the store: seen to run out with 4,000 connections on a loaded machine)
STOP_BASE = 6.0


async def _build_store(args: argparse.Namespace) -> Any:
    if args.store == "memory":
        return MemoryStore()
    from session.etcd import EtcdStore

    endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
    return EtcdStore(endpoints, prefix=args.etcd_prefix)


async def serve(args: argparse.Namespace, app: Application | None = None,
                name: str = "quantum-server") -> int:
    """Run a server (with `app`, if given) configured by the CLI flags until SIGINT/SIGTERM."""
    from session.logs import configure_logging

    configure_logging(args.log_format, args.log_level)
    path = args.key_file or default_key_path()
    if problem := _snapshot_flag_problem(args, path):
        print(f"{name}: {problem}", file=sys.stderr)
        return 2
    try:
        key, created = ServerKeyFile.load_or_create(path)
    except KeyFileError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    if created:
        log.warning("created a new server key file", path=str(path))
    try:
        services = NetworkServices(args, path)  # checks the API flags, reads TLS files, token
    except ServiceConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    authenticator: Authenticator
    if args.allow_anonymous:
        authenticator = AnonymousAuthenticator()
        log.warning("ANONYMOUS MODE: any claimed user id is accepted without a ticket; "
                    "never run this in production")
    else:
        authenticator = TicketAuthenticator(key.ticket_secret)
    try:
        config = ServerConfig(host=args.host, port=args.port,
                              keepalive_interval=args.keepalive_interval,
                              idle_timeout=args.idle_timeout, fec=args.fec,
                              max_connections=args.max_connections,
                              max_connections_per_user=args.max_connections_per_user,
                              max_connections_per_address=args.max_connections_per_address,
                              handshake_rate=args.handshake_rate,
                              handshake_burst=args.handshake_burst,
                              retry_above_rate=args.retry_above_rate,
                              max_send_buffer=args.max_send_buffer,
                              stall_timeout=args.stall_timeout, ciphers=args.ciphers,
                              retain_session_bytes=args.retain_session_bytes,
                              retain_total_bytes=args.retain_total_bytes)
        # checked before any store is built (its own store comes next: an etcd client must not
        # be created for a configuration that is refused anyway)
        manager_config = ManagerConfig(store=MemoryStore(), default_timeout=args.session_timeout,
                                       max_sessions_per_user=args.max_sessions_per_user,
                                       max_sessions=args.max_sessions)
    except ValueError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    manager_config.store = await _build_store(args)
    manager = SessionManager(manager_config)
    server = QuantumServer(manager, key, authenticator, config, app)
    if args.store == "etcd":
        log.info("sessions live in etcd, shared by every node: no session snapshot")
    elif not args.no_snapshot:
        server.restart_snapshot = RestartSnapshot(args.snapshot or default_snapshot_path(path),
                                                  key)
    try:
        await server.start()
    except (OSError, StoreUnavailable) as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    # set up: what the process holds now is frozen, and the young collections are spaced
    tune_collector(args.gc_young_threshold)
    try:
        await services.start(server)
    except OSError as exc:
        await asyncio.wait_for(server.stop(), timeout=STOP_BASE)
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    # the handlers go in before the ready line: whoever reads it may signal at once, and a
    # signal without a handler kills the process with no graceful shutdown
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        print(f"{name} ready on {server.address_text} store={args.store} "
              f"fingerprint={fingerprint(key.public_key)} public-key={key.public_key_text} "
              f"{services.describe()}", flush=True)
        await stop.wait()
        log.info("shutting down")
        await services.stop()
        budget = await _stop_budget(server)
        try:
            await asyncio.wait_for(server.stop(), timeout=budget)
        except TimeoutError:
            # the peers that never answered our FIN and the session updates took longer than
            # the budget (a very loaded machine): say so plainly, no traceback
            log.warning("shutdown took too long: stopped without finishing", seconds=budget,
                        connections_left=len(server.peers))
            print(f"{name}: shutdown did not finish within {budget:.1f} s "
                  f"({len(server.peers)} connections still open); stopped anyway",
                  file=sys.stderr, flush=True)
            return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def run_app(app: Application | None, argv: list[str] | None = None,
            name: str = "quantum-server") -> int:
    """Parse the quantum-server flags and serve `app` on uvloop (plain asyncio on Windows).
    Refuses to start (exit 1) while a compiled module is older than its source."""
    from quantum.build import REBUILD_HINT, stale_modules

    parser = build_parser()
    parser.prog = name
    args = parser.parse_args(argv)
    if stale := stale_modules():  # the old code would run, silently
        print(f"{name}: refusing to start: compiled modules were built from older sources: "
              f"{', '.join(stale)}; {REBUILD_HINT}", file=sys.stderr)
        return 1
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args, app, name))
    status: int = uvloop.run(serve(args, app, name))
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "keygen":
        return _keygen(argv[1:])
    if argv and argv[0] == "issue-ticket":
        return _issue_ticket(argv[1:])
    if argv and argv[0] in ("sessions", "api-token"):
        from quantum_server import admin

        return admin.main(argv)
    return run_app(None, argv)
