"""Echo server: every message goes straight back to its sender, on its channel and mode.

    python examples/echo_server.py --port 9090 --allow-anonymous
    quantum-client 127.0.0.1 9090 --user alice

It takes every `quantum-server` flag (`--help`).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantum.frames import Delivery
from server import Application, Peer, run_app


class Echo(Application):
    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        peer.send(message, channel, mode)


def main(argv: list[str] | None = None) -> int:
    return run_app(Echo(), argv, "echo-server")


if __name__ == "__main__":
    sys.exit(main())
