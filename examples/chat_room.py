"""Chat rooms: what one member says, the others in the same room hear.

    python examples/chat_room.py --port 9090 --allow-anonymous
    quantum-client 127.0.0.1 9090 --user alice --metadata room=games

The room is the session metadata `room` (default "lobby"). Arrivals and departures are
announced; the departure says why the connection ended (client closed, idle timeout...).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quantum.errors import SendBufferFull
from quantum.frames import Delivery
from server import Application, Peer, run_app


class ChatRoom(Application):
    def __init__(self) -> None:
        self.rooms: defaultdict[str, set[Peer]] = defaultdict(set)

    def _say(self, room: str, text: str, sender: Peer | None = None) -> None:
        data = text.encode()
        for member in list(self.rooms[room]):
            if member is not sender:
                try:
                    member.send(data)
                except SendBufferFull:
                    # a member that does not keep up would make the room wait or the server
                    # hold its backlog without bound: it leaves instead
                    self.rooms[room].discard(member)
                    member.close("too slow: send buffer full")

    def on_connect(self, peer: Peer) -> None:
        room = peer.metadata.get("room", "lobby")
        others = sorted(p.user_id for p in self.rooms[room])
        peer.send(f"* welcome to {room}; here: {', '.join(others) or 'nobody yet'}".encode())
        self._say(room, f"* {peer.user_id} joined")
        self.rooms[room].add(peer)

    def on_message(self, peer: Peer, message: bytes, channel: int, mode: Delivery) -> None:
        room = peer.metadata.get("room", "lobby")
        self._say(room, f"{peer.user_id}: {message.decode('utf-8', 'replace')}", peer)

    def on_disconnect(self, peer: Peer, reason: str) -> None:
        room = peer.metadata.get("room", "lobby")
        if peer in self.rooms[room]:
            self.rooms[room].discard(peer)
            self._say(room, f"* {peer.user_id} left ({reason})")


def main(argv: list[str] | None = None) -> int:
    return run_app(ChatRoom(), argv, "chat-room")


if __name__ == "__main__":
    sys.exit(main())
