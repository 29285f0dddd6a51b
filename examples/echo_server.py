"""Echo server: every message goes straight back to its sender, on its channel and mode.

    python examples/echo_server.py --port 9090 --allow-anonymous
    quantum-client 127.0.0.1 9090 --user alice

It takes every `quantum-server` flag (`--help`). `serve_app` is the serving loop the examples
share: `server.serve` builds its server without an application, so it cannot be reused here.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantum.auth import AnonymousAuthenticator, Authenticator, TicketAuthenticator
from quantum.frames import Delivery
from quantum.keys import KeyFileError, ServerKeyFile, default_key_path
from server import Application, Peer, QuantumServer, ServerConfig, build_parser
from session.errors import StoreUnavailable
from session.logs import configure_logging
from session.manager import ManagerConfig, SessionManager
from session.memory import MemoryStore
from session.store import Store


class Echo(Application):
    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        peer.send(message, channel, mode)


def _store(args: argparse.Namespace) -> Store:
    if args.store == "memory":
        return MemoryStore()
    from session.etcd import EtcdStore

    endpoints = [e.strip() for e in args.etcd_endpoints.split(",") if e.strip()]
    return EtcdStore(endpoints, prefix=args.etcd_prefix)


async def serve_app(app: Application, args: argparse.Namespace, name: str) -> int:
    """Run `app` on a QuantumServer configured by the quantum-server flags until SIGINT/SIGTERM."""
    configure_logging(args.log_format, args.log_level)
    try:
        key, _ = ServerKeyFile.load_or_create(args.key_file or default_key_path())
    except KeyFileError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    authenticator: Authenticator = (AnonymousAuthenticator() if args.allow_anonymous
                                    else TicketAuthenticator(key.ticket_secret))
    manager = SessionManager(ManagerConfig(store=_store(args),
                                           default_timeout=args.session_timeout))
    config = ServerConfig(host=args.host, port=args.port,
                          keepalive_interval=args.keepalive_interval,
                          idle_timeout=args.idle_timeout, fec=args.fec,
                          max_connections=args.max_connections)
    server = QuantumServer(manager, key, authenticator, config, app)
    try:
        await server.start()
    except (OSError, StoreUnavailable) as exc:
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    print(f"{name} ready on {server.address_text} fingerprint={key.fingerprint} "
          f"public-key={key.public_key_text}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.wait_for(server.stop(), timeout=4.5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.prog = "echo_server.py"
    return asyncio.run(serve_app(Echo(), parser.parse_args(argv), "echo-server"))


if __name__ == "__main__":
    sys.exit(main())
