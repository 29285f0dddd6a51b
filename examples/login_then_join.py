"""Log in over gRPC, then join over UDP: how most game backends hand a player its session.

    python examples/login_then_join.py --api 127.0.0.1:9091 \\
        --token-file ~/.config/quantum/server.api-token \\
        --server 127.0.0.1:9090 --server-key <public key> --user alice

The first half is the login service (yours, usually behind HTTPS): it creates the session over
the session API and hands the player the session id and token. The second half is the player's
client: it connects to the realtime server over UDP and claims that session with them. Prints
the session id, its state before and after the claim, and the remaining seconds a heartbeat
reports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

import quantum
from session.api import session_pb2 as pb
from session.api import session_pb2_grpc


async def login(api_address: str, api_token: str, user: str,
                player_ip: str) -> tuple[str, str]:
    """The login service: a session for `user`, no connection yet; (session id, token)."""
    async with grpc.aio.insecure_channel(api_address) as channel:  # loopback: TLS otherwise
        api = session_pb2_grpc.SessionServiceStub(channel)
        created = await api.CreateSession(pb.CreateSessionRequest(
            user_id=user, client_ip=player_ip, metadata={"room": "blue"}, timeout_seconds=600),
            metadata=(("authorization", f"Bearer {api_token}"),))
        # -> the login service sends these two to the player over its HTTPS reply
        return created.session.session_id, created.token


async def state_of(api_address: str, api_token: str, session_id: str) -> str:
    async with grpc.aio.insecure_channel(api_address) as channel:
        api = session_pb2_grpc.SessionServiceStub(channel)
        reply = await api.GetSession(pb.GetSessionRequest(session_id=session_id),
                                     metadata=(("authorization", f"Bearer {api_token}"),))
        return str(pb.SessionState.Name(reply.session.state))


async def join(host: str, port: int, public_key: str, user: str, session_id: str,
               session_token: str) -> quantum.QuantumClient:
    """The player's client: claim the session over UDP."""
    conn = await quantum.connect(host, port, user_id=user, server_key=public_key,
                                 resume=(session_id, session_token))
    assert conn.session_id == session_id  # the session the login service created
    return conn


async def main_async(args: argparse.Namespace) -> int:
    api_token = Path(args.token_file).expanduser().read_text().strip()
    host, _, port = args.server.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # an IPv6 server: --server [::1]:9090
    session_id, session_token = await login(args.api, api_token, args.user, host)
    print(f"session {session_id}: {await state_of(args.api, api_token, session_id)}")
    conn = await join(host, int(port), args.server_key, args.user, session_id, session_token)
    async with conn:  # leaving it closes the connection: a logout, which ends the session
        remaining = await conn.heartbeat()
        print(f"claimed over UDP: {await state_of(args.api, api_token, session_id)}, "
              f"remaining {remaining} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", default="127.0.0.1:9091", help="the session API (gRPC)")
    parser.add_argument("--token-file", required=True, help="the API token file")
    parser.add_argument("--server", default="127.0.0.1:9090",
                        help="the realtime server (UDP), HOST:PORT ([::1]:9090 for IPv6)")
    parser.add_argument("--server-key", required=True, help="the server's public key to pin")
    parser.add_argument("--user", default="alice")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
