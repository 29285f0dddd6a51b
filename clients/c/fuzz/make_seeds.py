"""Writes the fuzzers' seed inputs (run from clients/c/fuzz: `python3 make_seeds.py`).

fuzz-connection records: flags u8, seq u32, ack u32, time step u8 (ms), SACK blocks u8, body
length u16, body (see fuzz_connection.c). Each seed is one realistic exchange, so the fuzzer
starts deep inside the frame handling."""

from __future__ import annotations

import struct
from pathlib import Path

ACK, FIN, FEC, PSH, ECE = 0x02, 0x04, 0x10, 0x20, 0x80


def record(flags: int, body: bytes, seq: int = 0, ack: int = 1, step: int = 5,
           sack: int = 0) -> bytes:
    return struct.pack(">BIIBBH", flags, seq, ack, step, sack, len(body)) + body


def message(channel: int, mode: int, mid: int, index: int, count: int, data: bytes) -> bytes:
    return struct.pack(">BBBIHHH", 1, channel, mode, mid, index, count, len(data)) + data


def parity(group: int, m: int, index: int, seqs: list[int], shard: bytes) -> bytes:
    return (struct.pack(">BIBBB", 5, group, m, index, len(seqs))
            + struct.pack(f">{len(seqs)}I", *seqs) + struct.pack(">H", len(shard)) + shard)


SEEDS = {
    "messages": record(ACK, message(0, 0, 0, 0, 1, b"hi"))
    + record(ACK, message(3, 1, 0, 1, 2, b"world") + message(3, 1, 0, 0, 2, b"hello")),
    "keepalive-ack": record(ACK, struct.pack(">BII", 3, 1, 60000)),
    "sack-and-floor": record(ACK, struct.pack(">II", 2, 3) + b"\x06\x00\x00\x00\x05", ack=1,
                             sack=1),
    "parity": record(ACK | PSH, message(1, 0, 0, 0, 1, b"a"))
    + record(ACK | FEC, parity(0, 2, 0, [3], b"\x00\x0e" + bytes(14))),
    "path": record(ACK, b"\x07" + bytes(range(8))),
    "fin": record(ACK | FIN, struct.pack(">BHH", 4, 0, 3) + b"bye"),
    "replay": record(ACK | ECE, b"\x02\x00\x00\x00\x07", seq=2)
    + record(ACK | ECE, b"\x02\x00\x00\x00\x07", seq=2),
}

DATAGRAMS = {
    "syn-ack-shape": b"QUNT\x02\x03" + bytes(16) + bytes(8) + struct.pack(">H", 175) + bytes(175),
    "reject": b"QUNT\x02\x08" + bytes(16) + bytes(8) + struct.pack(">H", 9)
    + b"\x0a\x00\x13\x00\x04full",
    "sack": bytes.fromhex("51554e540222ababababababababababababababababfffffffe000000050005"
                          "ffffffff000000020000000700000009020000002a"),
}


def main() -> None:
    here = Path(__file__).resolve().parent
    for name, data in SEEDS.items():
        (here / "seeds-connection" / f"{name}.bin").write_bytes(data)
    for name, data in DATAGRAMS.items():
        (here / "seeds-datagram" / f"{name}.bin").write_bytes(data)


if __name__ == "__main__":
    main()
