"""The session service walkthrough: the seed example's ten scenarios, in order.

    python examples/session_demo.py [--log-format console|json] [--log-level debug|info|...]

Each scenario starts with a ``--- Scenario N: <title> ---`` line; everything else is structured
log output (the manager's own lines and the demo's). Scenario 10 uses a one-second session and a
quarter-second cleanup sweep, so the whole run takes about two seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantum.addresses import host_port_text
from session.errors import SessionError
from session.logs import configure_logging, get_logger
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.model import Session, SessionFilter, State, Stats
from session.tokens import preview


def heading(number: int, title: str) -> None:
    print(f"\n--- Scenario {number}: {title} ---", flush=True)


async def run_demo() -> None:
    log = get_logger("demo")
    print("=== Quantum Session Service demo ===", flush=True)
    async with SessionManager(
        ManagerConfig(store=MemoryStore(), default_timeout=300.0, cleanup_interval=60.0)
    ) as manager:
        heading(1, "create user sessions")
        sessions: dict[str, Session] = {}
        for number, (user_id, device) in enumerate(
            [("user1", "desktop"), ("user2", "mobile"), ("user3", "tablet")], start=1
        ):
            session, token = await manager.create_session(
                user_id, f"192.168.1.{100 + number}", 50000 + number, str(uuid.uuid4()),
                metadata={"device": device, "app": "collab-editor"},
            )
            sessions[user_id] = session
            log.info("session created ok", user_id=user_id, session_id=session.session_id,
                     token=preview(token))
        user1, user2, user3 = sessions["user1"], sessions["user2"], sessions["user3"]

        heading(2, "look up a session")
        found = await manager.get_session(user1.session_id)
        log.info("session info", user_id=found.user_id, session_id=found.session_id,
                 state=str(found.state), client=host_port_text(found.client_ip, found.client_port),
                 metadata=found.metadata)

        heading(3, "update session state")
        updated = await manager.update_session(
            user1.session_id, state=State.ACTIVE, metadata={"room": "design-review"},
            stats=Stats(packets_sent=120, packets_received=118, bytes_sent=48_000,
                        bytes_received=51_200, retransmissions=2, current_rtt_ms=23.5),
        )
        log.info("session state updated", session_id=updated.session_id,
                 new_state=str(updated.state), metadata=updated.metadata,
                 rtt_ms=updated.stats.current_rtt_ms)

        heading(4, "session heartbeat")
        for count in (1, 2, 3):
            remaining = await manager.heartbeat(user1.session_id)
            log.info("heartbeat ok", heartbeat_count=count, remaining=remaining)

        heading(5, "list all sessions")
        listed, total = await manager.list_sessions(SessionFilter())
        log.info("session list", total=total, count=len(listed))
        page, total = await manager.list_sessions(SessionFilter(limit=2, offset=0))
        log.info("first page", total=total, count=len(page), limit=2)

        heading(6, "sessions of one user")
        mine, total = await manager.list_sessions(SessionFilter(user_id="user1"))
        log.info("user sessions", user_id="user1", session_count=total,
                 devices=[s.metadata.get("device", "") for s in mine])

        heading(7, "service statistics")
        stats = await manager.get_stats()
        log.info("service stats", total=stats["total"], active=stats["active"],
                 idle=stats["idle"], connecting=stats["connecting"])

        heading(8, "find a session by connection id")
        by_connection = await manager.get_session_by_connection(user2.connection_id)
        log.info("session found by connection id", connection_id=user2.connection_id,
                 session_id=by_connection.session_id, user_id=by_connection.user_id)

        heading(9, "delete a session")
        await manager.delete_session(user3.session_id, "user logout")
        log.info("session removed", user_id="user3")
        log.info("sessions remaining", count=(await manager.get_stats())["total"])

    heading(10, "session expiry")
    await expiry_scenario(log)
    print("\n=== Demo complete ===", flush=True)


async def expiry_scenario(out: Any) -> None:
    cleaned = asyncio.Event()
    async with SessionManager(
        ManagerConfig(store=MemoryStore(), default_timeout=1.0, cleanup_interval=0.25)
    ) as manager:
        manager.add_listener(lambda session, reason: cleaned.set())
        out.info("creating a short-lived session", timeout=1.0)
        session, _ = await manager.create_session("temp-user", "192.168.1.200", 50100,
                                                  str(uuid.uuid4()))
        out.info("short-lived session created, waiting for it to expire",
                 session_id=session.session_id)
        await asyncio.wait_for(cleaned.wait(), timeout=5.0)
        try:
            await manager.get_session(session.session_id)
        except SessionError as exc:
            out.info("session expired and was cleaned up", error=str(exc))
        else:
            raise RuntimeError("the short-lived session survived its expiry")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Walk through the session service.")
    parser.add_argument("--log-format", choices=("console", "json"), default="console")
    parser.add_argument("--log-level", default="debug",
                        choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level, stream=sys.stdout)
    asyncio.run(run_demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
