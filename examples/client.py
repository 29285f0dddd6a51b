"""A client from start to resume: connect, send, receive, heartbeat, then lose the connection
and continue the same session on a new one.

    python examples/hello_server.py --port 9090 --allow-anonymous     # prints its public-key=
    python examples/client.py 127.0.0.1 9090 --user alice --server-key <public-key>

Against a server that requires tickets, add `--ticket "$(quantum-server issue-ticket --user
alice)"`. The server must echo (hello_server.py and echo_server.py do). The README's "The
client" section is an excerpt of this file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: find the project's modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import quantum


async def run(host: str, port: int, user: str, ticket: str | None, public_key: str) -> None:
    async with await quantum.connect(host, port, user_id=user, ticket=ticket,
                                     server_key=public_key, metadata={"room": "blue"}) as conn:
        await conn.send(b"hello")                # reliable and ordered, on channel 0
        reply = await conn.recv()                # or recv_message() for channel and mode
        remaining = await conn.heartbeat()       # the session's remaining seconds
        print(f"session {conn.session_id}: reply {reply!r}, {remaining:.0f} s left, "
              f"srtt {conn.stats.srtt or 0.0:.4f} s", flush=True)
        # a position that the next one replaces: late ones are dropped, lost ones not resent
        await conn.send(b"x=10,y=20", channel=1, mode=quantum.Delivery.UNRELIABLE_SEQUENCED)
        # the session's resume token arrives with the session: keep both to resume it later
        session_id, token = conn.session_id, conn.session_token
        conn.abort()  # here: drop the connection silently, as a crash or a dead network would

    # after a lost connection, continue the same session on a new one
    assert session_id is not None and token is not None
    async with await quantum.connect(host, port, user_id=user, ticket=ticket,
                                     server_key=public_key,
                                     resume=(session_id, token)) as conn:
        print(f"resumed {conn.session_id}: {conn.resumed}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="examples/client.py", description=__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--user", required=True)
    parser.add_argument("--ticket", default=None, help="a login ticket (quantum-server "
                        "issue-ticket); none for a server run with --allow-anonymous")
    parser.add_argument("--server-key", required=True,
                        help="the server's public key, from its ready line, to pin")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args.host, args.port, args.user, args.ticket, args.server_key))
    except quantum.ConnectError as exc:
        print(f"examples/client.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
