"""A download server for the attack tests: "get N SIZE" queues N messages of SIZE bytes at once
(a real download: far more than one congestion window waiting), each message's bytes all equal
to its index modulo 251. Takes every quantum-server flag."""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from quantum.errors import SendBufferFull
from quantum.frames import Delivery
from server import Application, Peer, run_app


class Downloads(Application):
    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        verb, count, size = message.decode().split()
        assert verb == "get"
        try:
            for i in range(int(count)):
                peer.send(bytes([i % 251]) * int(size))
        except SendBufferFull:
            peer.close("send buffer full")


if __name__ == "__main__":
    sys.exit(run_app(Downloads(), None, "download-server"))
