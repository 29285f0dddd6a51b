"""The smallest game server: greets each client, echoes its messages, says goodbye.

    python examples/hello_server.py --port 9090 --allow-anonymous
    python examples/client.py 127.0.0.1 9090 --user alice --server-key <public-key>

It takes every `quantum-server` flag (`--help`). The README's "Writing a game or collaboration
server" shows it whole; `examples/echo_server.py` adds backpressure, `examples/chat_room.py`
rooms.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: find the project's modules
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantum.frames import Delivery
from server import Application, Peer, run_app


class Hello(Application):
    def on_connect(self, peer: Peer) -> None:
        print("hello", peer.user_id, peer.session_id, peer.metadata, flush=True)

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        peer.send(message, channel, mode)  # or peer.server.send(session_id, ...)

    def on_disconnect(self, peer: Peer, reason: str) -> None:
        print("bye", peer.user_id, reason, flush=True)


if __name__ == "__main__":
    sys.exit(run_app(Hello(), name="hello-server"))  # takes every quantum-server flag
