"""The operator's command line: a thin client of the gRPC session API.

    quantum-server sessions list [--user U] [--state S] [--page N] [--page-size N]
    quantum-server sessions get SESSION_ID
    quantum-server sessions kick SESSION_ID [--reason R]
    quantum-server sessions watch [--user U]
    quantum-server sessions stats
    quantum-server api-token [--key-file PATH]

Every `sessions` command takes `--api HOST:PORT` (default 127.0.0.1:9091), the credential from
the token file beside the key file (`--key-file`, or `--token-file` directly), `--ca-cert PEM`
to speak TLS, and `--json` for scripts (one JSON document; `watch`: one object per line).

Exit status: 0 done; 1 the API refused the request (not found, expired, bad argument...);
2 bad usage or a local problem (flags, token file); 3 the API could not be reached or the
store behind it is down (UNAVAILABLE, deadline exceeded); 4 the credential was refused.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from quantum.addresses import host_port_text
from quantum.keys import default_key_path
from quantum_server.api_token import ApiTokenError, load_or_create_token, load_token, token_path
from quantum_server.services import DEFAULT_GRPC, host_port
from session.api import session_pb2 as pb
from session.api import session_pb2_grpc
from session.api.auth import bearer_metadata

__all__ = ["main"]

EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_UNAUTHENTICATED = 1, 2, 3, 4
_STATES = ("connecting", "active", "idle", "disconnecting", "closed")
_EVENT_NAMES = {pb.SessionEvent.TYPE_CREATED: "CREATED",
                pb.SessionEvent.TYPE_STATE_CHANGED: "STATE_CHANGED",
                pb.SessionEvent.TYPE_DELETED: "DELETED", pb.SessionEvent.TYPE_EXPIRED: "EXPIRED"}


class _UsageError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Client:
    channel: grpc.Channel
    stub: Any  # session_pb2_grpc.SessionServiceStub (generated, untyped)
    auth: tuple[tuple[str, str], ...]


# ------------------------------------------------------------------------------ parsing


def _positive(text: str) -> int:
    from quantum_server.cli import _positive as positive

    return int(positive(int)(text))


def _seconds(text: str) -> float:
    from quantum_server.cli import _positive as positive

    value = float(positive(float)(text))
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text}")
    return value


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", type=host_port, default=host_port(DEFAULT_GRPC),
                        metavar="HOST:PORT", help=f"the server's API (default {DEFAULT_GRPC})")
    common.add_argument("--key-file", type=Path, default=None,
                        help=f"server key file whose API token to use (default "
                             f"{default_key_path()})")
    common.add_argument("--token-file", type=Path, default=None,
                        help="the API token file itself (default: beside the key file)")
    common.add_argument("--ca-cert", type=Path, default=None, metavar="PEM",
                        help="use TLS, trusting this CA certificate (or the server's own)")
    common.add_argument("--timeout", type=_seconds, default=10.0,
                        help="seconds to wait for an answer (default 10; watch: to connect)")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    return common


def sessions_parser() -> argparse.ArgumentParser:
    common = _client_options()
    p = argparse.ArgumentParser(prog="quantum-server sessions",
                                description="List, inspect, kick and watch the sessions of a "
                                            "running server over its gRPC API.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", parents=[common], help="list sessions, a page at a time")
    listing.add_argument("--user", default="", help="only this user's sessions")
    listing.add_argument("--state", type=str.lower, choices=_STATES, default=None,
                         help="only sessions in this state")
    listing.add_argument("--page", type=_positive, default=1, help="page number, from 1")
    listing.add_argument("--page-size", type=_positive, default=50,
                         help="sessions per page (default 50, at most 1000)")
    get = commands.add_parser("get", parents=[common], help="show one session")
    get.add_argument("session_id")
    kick = commands.add_parser("kick", parents=[common],
                               help="end a session (its connection is closed with the reason)")
    kick.add_argument("session_id")
    kick.add_argument("--reason", default="kicked by an operator",
                      help="why (the client sees it; default 'kicked by an operator')")
    watch = commands.add_parser("watch", parents=[common],
                                help="print session changes as they happen, until Ctrl-C")
    watch.add_argument("--user", default="", help="only this user's sessions")
    commands.add_parser("stats", parents=[common], help="session counts per state")
    return p


def _token_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quantum-server api-token",
                                description="Print the bearer token of the server's gRPC API "
                                            "(created beside the key file if missing).")
    p.add_argument("--key-file", type=Path, default=None,
                   help=f"server key file (default {default_key_path()})")
    return p


# ------------------------------------------------------------------------------ output


def _time(stamp: Any) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "-"
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _state(value: int) -> str:
    name: str = pb.SessionState.Name(value)
    return name.removeprefix("SESSION_STATE_")


def _left(stamp: Any) -> str:
    seconds = int((stamp.ToDatetime(tzinfo=UTC) - datetime.now(UTC)).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return result


def _describe(session: Any) -> str:
    s = session.stats
    lines = [
        f"session:       {session.session_id}",
        f"user:          {session.user_id}",
        f"state:         {_state(session.state)}",
        f"connection:    {session.connection_id or '(none yet)'}",
        f"client:        {host_port_text(session.client_ip, session.client_port)}",
        f"server:        {session.server_addr or '-'}",
        f"created:       {_time(session.created_at)}",
        f"last active:   {_time(session.last_active_at)}",
        f"expires:       {_time(session.expires_at)} (in {_left(session.expires_at)})",
        f"timeout:       {session.timeout_seconds} s",
        f"stats:         {s.packets_received} packets / {s.bytes_received} bytes in, "
        f"{s.packets_sent} / {s.bytes_sent} out, {s.retransmissions} retransmitted, "
        f"rtt {s.current_rtt_ms} ms",
    ]
    if session.metadata:
        lines.append("metadata:")
        lines.extend(f"  {key} = {value}" for key, value in sorted(session.metadata.items()))
    return "\n".join(lines)


def _event_line(event: Any) -> str:
    session = event.session
    text = (f"{_time(event.time)}  {_EVENT_NAMES.get(event.type, str(event.type)):<13}  "
            f"{session.session_id}  user={session.user_id}  state={_state(session.state)}")
    if event.type == pb.SessionEvent.TYPE_STATE_CHANGED:
        text += f"  from={_state(event.previous_state)}"
    if event.reason:
        text += f"  reason={event.reason!r}"
    return text


# ------------------------------------------------------------------------------ commands


def _connect(args: argparse.Namespace) -> _Client:
    path = args.token_file or token_path(args.key_file or default_key_path())
    try:
        token = load_token(path)
    except ApiTokenError as exc:
        raise _UsageError(str(exc)) from None
    host, port = args.api
    target = host_port_text(host, port)
    if args.ca_cert is not None:
        try:
            roots = args.ca_cert.read_bytes()
        except OSError as exc:
            raise _UsageError(f"--ca-cert {args.ca_cert}: {exc.strerror}") from None
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots))
    else:
        channel = grpc.insecure_channel(target)
    return _Client(channel, session_pb2_grpc.SessionServiceStub(channel), bearer_metadata(token))


def _list(client: _Client, args: argparse.Namespace) -> None:
    state = (pb.SessionState.Value(f"SESSION_STATE_{args.state.upper()}") if args.state
             else pb.SESSION_STATE_UNSPECIFIED)
    reply = client.stub.ListSessions(pb.ListSessionsRequest(
        user_id=args.user, state=state, page=args.page, page_size=args.page_size),
        metadata=client.auth, timeout=args.timeout)
    if args.json:
        print(json.dumps(_dict(reply), indent=2))
        return
    pages = max(1, -(-reply.total // reply.page_size))
    if reply.sessions:
        rows = [("SESSION ID", "USER", "STATE", "CLIENT", "LAST ACTIVE", "EXPIRES IN")]
        rows += [(s.session_id, s.user_id, _state(s.state),
                  host_port_text(s.client_ip, s.client_port), _time(s.last_active_at),
                  _left(s.expires_at)) for s in reply.sessions]
        print(_table(rows))
    print(f"page {reply.page} of {pages}: {len(reply.sessions)} of {reply.total} sessions")


def _get(client: _Client, args: argparse.Namespace) -> None:
    reply = client.stub.GetSession(pb.GetSessionRequest(session_id=args.session_id),
                                   metadata=client.auth, timeout=args.timeout)
    print(json.dumps(_dict(reply.session), indent=2) if args.json
          else _describe(reply.session))


def _kick(client: _Client, args: argparse.Namespace) -> None:
    client.stub.DeleteSession(
        pb.DeleteSessionRequest(session_id=args.session_id, reason=args.reason),
        metadata=client.auth, timeout=args.timeout)
    print(json.dumps({"session_id": args.session_id, "kicked": True, "reason": args.reason})
          if args.json else f"kicked {args.session_id} ({args.reason})")


def _stats(client: _Client, args: argparse.Namespace) -> None:
    reply = client.stub.GetStats(pb.GetStatsRequest(), metadata=client.auth,
                                 timeout=args.timeout)
    counts = _dict(reply)
    if args.json:
        print(json.dumps({k: int(v) for k, v in counts.items()}, indent=2))
        return
    print(_table([("STATE", "SESSIONS"), *((k.upper(), str(int(counts[k]))) for k in
                                           ("connecting", "active", "idle", "disconnecting",
                                            "closed", "total"))]))


def _watch(client: _Client, args: argparse.Namespace) -> None:
    grpc.channel_ready_future(client.channel).result(timeout=args.timeout)
    call = client.stub.WatchSessions(pb.WatchSessionsRequest(user_id=args.user),
                                     metadata=client.auth)
    call.initial_metadata()  # the server sends its headers once the watch is registered
    if call.is_active():
        print(f"watching session changes at {args.api[0]}:{args.api[1]} (Ctrl-C to stop)",
              file=sys.stderr, flush=True)
    events: Iterable[Any] = call
    try:
        for event in events:
            print(json.dumps(_dict(event)) if args.json else _event_line(event), flush=True)
    except KeyboardInterrupt:
        call.cancel()


_COMMANDS: dict[str, Callable[[_Client, argparse.Namespace], None]] = {
    "list": _list, "get": _get, "kick": _kick, "stats": _stats, "watch": _watch}


def _exit_status(code: grpc.StatusCode) -> int:
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return EXIT_UNAVAILABLE
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return EXIT_UNAUTHENTICATED
    return EXIT_REFUSED


def _sessions(argv: list[str]) -> int:
    args = sessions_parser().parse_args(argv)
    prog = f"quantum-server sessions {args.command}"
    try:
        client = _connect(args)
    except _UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with client.channel:
        try:
            _COMMANDS[args.command](client, args)
        except grpc.FutureTimeoutError:
            print(f"{prog}: cannot reach the API at {args.api[0]}:{args.api[1]} within "
                  f"{args.timeout:g} s", file=sys.stderr)
            return EXIT_UNAVAILABLE
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()  # the error is the call object too
            if code is grpc.StatusCode.CANCELLED and args.command == "watch":
                return 0
            print(f"{prog}: {code.name}: {exc.details()}", file=sys.stderr)
            return _exit_status(code)
        except KeyboardInterrupt:
            return 130
    return 0


def _api_token(argv: list[str]) -> int:
    args = _token_parser().parse_args(argv)
    key_file = args.key_file or default_key_path()
    try:
        token, path, created = load_or_create_token(key_file)
    except ApiTokenError as exc:
        print(f"quantum-server api-token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if created:
        print(f"created {path}", file=sys.stderr)
    print(token)
    return 0


def main(argv: list[str]) -> int:
    """`argv` starts with the subcommand: "sessions" or "api-token"."""
    if argv[0] == "api-token":
        return _api_token(argv[1:])
    return _sessions(argv[1:])
