"""Echo server: every message goes straight back to its sender, on its channel and mode.

    python examples/echo_server.py --port 9090 --allow-anonymous
    quantum-client 127.0.0.1 9090 --user alice

It takes every `quantum-server` flag (`--help`).

Backpressure, as an application should handle it: when a client's send buffer is full
(`SendBufferFull`), its echoes wait in a backlog until `peer.drain()` says there is room again,
in order. The backlog is bounded too: a client that uploads faster than it takes its echoes
back, by more than `MAX_BACKLOG` bytes (or never acknowledges them at all), is closed with a
reason instead of growing the server's memory. Unreliable echoes are dropped when full, as
that delivery mode allows.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantum.errors import ConnectionClosedError, MessageError, SendBufferFull
from quantum.frames import Delivery
from server import Application, Peer, run_app

#: echoes one client may have waiting for room in its send buffer
MAX_BACKLOG = 4 << 20


class _Backlog:
    def __init__(self) -> None:
        self.messages: deque[tuple[bytes, int, Delivery]] = deque()
        self.size = 0


class Echo(Application):
    def __init__(self) -> None:
        self._backlogs: dict[Peer, _Backlog] = {}

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        backlog = self._backlogs.get(peer)
        if backlog is None:
            try:
                peer.send(message, channel, mode)
                return
            except SendBufferFull:
                backlog = self._backlogs[peer] = _Backlog()
                peer.server.spawn(self._drain(peer, backlog))
        if backlog.size + len(message) > MAX_BACKLOG:
            peer.close("send buffer full: echoes are not being read")
            return
        backlog.messages.append((message, channel, mode))
        backlog.size += len(message)

    async def _drain(self, peer: Peer, backlog: _Backlog) -> None:
        """Send the waiting echoes in order, each as soon as it fits."""
        try:
            while backlog.messages:
                message, channel, mode = backlog.messages[0]
                try:
                    peer.send(message, channel, mode)
                except SendBufferFull:
                    await peer.drain()
                    continue
                backlog.messages.popleft()
                backlog.size -= len(message)
        except (ConnectionClosedError, MessageError):
            pass  # the client left (send on a closed connection): its echoes go with it
        finally:
            self._backlogs.pop(peer, None)

    def on_disconnect(self, peer: Peer, reason: str) -> None:
        self._backlogs.pop(peer, None)


def main(argv: list[str] | None = None) -> int:
    return run_app(Echo(), argv, "echo-server")


if __name__ == "__main__":
    sys.exit(main())
