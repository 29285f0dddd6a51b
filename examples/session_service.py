"""The session service on its own: no network, just the manager and a store.

    python examples/session_service.py [--debug]

Creates a session, keeps it alive, resumes it with its token from a new connection, and ends
it. With `--debug` the library logs every step (a line per heartbeat included); without, it
logs INFO and above on stderr. The README's "The session service alone" and "Logging"
sections are excerpts of this file; `examples/session_demo.py` is the long walkthrough.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: find the project's modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from session.logs import configure_logging
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore


async def run() -> None:
    async with SessionManager(ManagerConfig(store=MemoryStore(), default_timeout=300)) as manager:
        connection_id = str(uuid.uuid4())        # the transport's id for the connection
        session, token = await manager.create_session("alice", "203.0.113.7", 40000,
                                                      connection_id)
        remaining = await manager.heartbeat(session.session_id)
        print(f"created {session.session_id} for {session.user_id}: {remaining:.0f} s left")

        # the same user on a new connection proves it holds the session with its token
        resumed = await manager.resume_session(session.session_id, token, str(uuid.uuid4()),
                                               "198.51.100.4", 40001)
        print(f"resumed from {resumed.client_ip}:{resumed.client_port}, state {resumed.state}")
        await manager.delete_session(session.session_id, "logged out")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="examples/session_service.py", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="log every step")
    args = parser.parse_args(argv)
    if args.debug:
        # process-wide, an application's decision: before building any manager or server
        configure_logging("console", "debug")  # or "json"; "info" is the library's default
    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
