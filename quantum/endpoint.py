"""One server socket's demultiplexing, sans-I/O: which connection a datagram is for.

Every datagram of an established connection carries its connection id at bytes 6..22; the
endpoint maps ids to their owners (the server's `Peer`, or the `Connection` itself in the
simulation). A datagram for an id it does not know is a handshake, or nothing: the `Listener`
decides, and hands back a new connection when a handshake completes. Nothing else is checked
here: the connection (or the listener) validates the datagram it is given, once.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from quantum.connection import Address, Connection
from quantum.listener import Listener

OwnerT = TypeVar("OwnerT")


class ServerEndpoint(Generic[OwnerT]):
    """Connection ids to owners, and the listener for the rest."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        #: connection id -> owner of a live connection
        self.owners: dict[bytes, OwnerT] = {}

    def route(self, data: bytes) -> OwnerT | None:
        """The owner of the connection `data` is for, or None (a handshake, or garbage: give
        it to `handshake`). A datagram too short to hold an id matches nothing."""
        return self.owners.get(data[6:22])

    def handshake(self, data: bytes, addr: Address,
                  now: float) -> tuple[list[tuple[bytes, Any]], Connection | None]:
        """A datagram no connection owns: the listener's replies, and a connection if this
        completed a handshake (the caller `add`s it with its owner)."""
        return self.listener.receive_datagram(data, addr, now, len(self.owners))

    def add(self, connection_id: bytes, owner: OwnerT) -> None:
        self.owners[connection_id] = owner

    def remove(self, connection_id: bytes, now: float) -> OwnerT | None:
        """Forget a closed connection (the listener then refuses replays of its handshake);
        its owner, or None if it was not here."""
        owner = self.owners.pop(connection_id, None)
        if owner is not None:
            self.listener.forget(connection_id, now)
        return owner

    def __len__(self) -> int:
        return len(self.owners)
