"""Writes the fuzzers' seed inputs (run from clients/c/fuzz: `python3 make_seeds.py`).

fuzz-connection records: flags u8, seq u32, ack u32, time step u8 (ms), control u8 (bits 0..3:
SACK blocks mod 9; bit 6: the server updates its keys first; bit 7: use seq as the packet
number), body length u16, body (see fuzz_connection.c). Each seed is one realistic exchange,
so the fuzzer starts deep inside the frame handling."""

from __future__ import annotations

import struct
from pathlib import Path

ACK, FIN, FEC, PSH = 0x02, 0x04, 0x10, 0x20
OWN_SEQ, KEY_UPDATE = 0x80, 0x40


def record(flags: int, body: bytes, seq: int = 0, ack: int = 1, step: int = 5,
           sack: int = 0) -> bytes:
    return struct.pack(">BIIBBH", flags, seq, ack, step, sack, len(body)) + body


def message(channel: int, mode: int, mid: int, data: bytes) -> bytes:
    return struct.pack(">BBBIH", 1, channel, mode, mid, len(data)) + data


def fragment(channel: int, mode: int, mid: int, offset: int, total: int, data: bytes) -> bytes:
    return struct.pack(">BBBIIIH", 1, channel, mode | 0x80, mid, offset, total,
                       len(data)) + data


def parity(group: int, m: int, index: int, seqs: list[int], shard: bytes) -> bytes:
    return (struct.pack(">BIBBB", 5, group, m, index, len(seqs))
            + struct.pack(f">{len(seqs)}I", *seqs) + struct.pack(">H", len(shard)) + shard)


SEEDS = {
    "messages": record(ACK, message(0, 0, 0, b"hi"))
    + record(ACK, fragment(3, 1, 0, 5, 10, b"world") + fragment(3, 1, 0, 0, 6, b"hello "))
    + record(ACK, fragment(3, 0, 0, 3, 10, b"lo wor") + fragment(3, 0, 0, 0, 10, b"hel")
             + fragment(3, 0, 0, 8, 10, b"ld")),
    "keepalive-ack": record(ACK, struct.pack(">BII", 3, 1, 60000)),
    "sack-and-floor": record(ACK, struct.pack(">II", 2, 3) + b"\x06\x00\x00\x00\x05", ack=1,
                             sack=1),
    "parity": record(ACK | PSH, message(1, 0, 0, b"a"))
    + record(ACK | FEC, parity(0, 2, 0, [3], b"\x00\x0e" + bytes(14))),
    "path": record(ACK, b"\x07" + bytes(range(8))),
    "fin": record(ACK | FIN, struct.pack(">BHH", 4, 0, 3) + b"bye"),
    "replay": record(ACK, b"\x02\x00\x00\x00\x07", seq=2, sack=OWN_SEQ)
    + record(ACK, b"\x02\x00\x00\x00\x07", seq=2, sack=OWN_SEQ),
    "key-update": record(ACK, b"\x0b") + record(ACK, b"\x0b", sack=KEY_UPDATE)
    + record(ACK, b"\x0b", seq=3, sack=OWN_SEQ) + record(ACK | 0x80, b"\x0b")
    + record(ACK, b"\x0b" + bytes(1400), sack=KEY_UPDATE),
}

DATAGRAMS = {
    "syn-ack-shape": b"QUNT\x03\x03" + bytes(16) + bytes(8) + struct.pack(">H", 211)
    + bytes(64) + b"\x01" + struct.pack(">H", 118) + bytes(118 + 26),
    "reject": b"QUNT\x03\x08" + bytes(16) + bytes(8) + struct.pack(">H", 9)
    + b"\x0a\x00\x1e\x00\x04none",
    "sack": bytes.fromhex("51554e540322ababababababababababababababababfffffffe000000050005"
                          "ffffffff000000020000000700000009020000002a"),
    "fragment": bytes.fromhex("51554e540302ababababababababababababababababfffffffe000000050013"
                              "01038000000007000005140000138800026869"),
}


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, data in SEEDS.items():
        (here / "seeds-connection" / f"{name}.bin").write_bytes(data)
    for name, data in DATAGRAMS.items():
        (here / "seeds-datagram" / f"{name}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
