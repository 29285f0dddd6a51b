"""The receive side's previous key generation, kept a while after the peer's key update.

A key update (docs/PROTOCOL.md 5.6) moves one direction to the next key generation; the
KEY_PHASE header bit (the generation's low bit) tells the receiver which keys a packet was
sealed with. Packets of the old generation may still arrive, reordered, after the first packet
of the new one: the receiver keeps the old keys for `3 x RTO` after the switch, then drops them,
so that a generation's key does not live on for the rest of the connection.

The connection holds one of these only between a switch and the old keys' discard (an idle
connection holds none); the send side needs no state beyond two packet numbers, on the
connection itself.
"""

from __future__ import annotations

from quantum.crypto import PacketProtection, ProtectionError


class PreviousKeys:
    """The receive keys of the generation before the current one, until `until`."""

    __slots__ = ("protection", "until")

    def __init__(self, protection: PacketProtection, until: float) -> None:
        self.protection = protection
        self.until = until

    def open(self, pn: int, header: bytes, ciphertext: bytes, now: float) -> bytes:
        """Open a reordered packet of the previous generation; ProtectionError once the keys
        were discarded (or if it does not authenticate)."""
        if now > self.until:
            self.protection.release()
            raise ProtectionError(f"packet {pn} is of a key generation discarded after an update")
        return self.protection.open(pn, header, ciphertext)


def open_other_phase(current: PacketProtection, previous: PreviousKeys | None, pn: int,
                     header: bytes, ciphertext: bytes,
                     now: float) -> tuple[PacketProtection | None, bytes]:
    """Open a packet whose KEY_PHASE bit is not the current receive generation's.

    Packet numbers only grow, and a sender moves to a new generation from its next packet on,
    so a packet numbered below the first one the current generation opened is the previous
    generation's; any other is the next generation's (derived on demand). Returns (the next
    generation if the packet moved the receiver to it, else None; the plaintext). Raises
    ProtectionError, changing nothing, when the packet does not open."""
    if current.first_pn >= 0 and pn < current.first_pn:
        if previous is None:
            raise ProtectionError(f"packet {pn} is of a key generation no longer kept")
        return None, previous.open(pn, header, ciphertext, now)
    following = current.next()
    return following, following.open(pn, header, ciphertext)
