"""docs/PROTOCOL.md and the code must agree: every long hex string the codec and handshake
tests check byte for byte is printed in the specification, every reason code is in its table
with the code's number, and the handshake's sizes, labels and KDF labels are the ones the
specification states."""

from __future__ import annotations

import re
from pathlib import Path

from quantum import handshake
from quantum.crypto import AES_256_GCM, CHACHA20_POLY1305, LABEL_PREFIX
from quantum.errors import CloseCode
from quantum.packet import HEADER_SIZE, KEY_PHASE, VERSION

ROOT = Path(__file__).resolve().parent.parent
VECTOR_TESTS = ("test_packet.py", "test_frames.py", "test_handshake.py", "test_addresses.py")
HEX = re.compile(r"[\"']([0-9a-f]{32,})[\"']")
SPEC = ROOT / "docs" / "PROTOCOL.md"


def _spec_hex() -> str:
    return re.sub(r"\s+", "", SPEC.read_text())


def _section(heading: str) -> str:
    """The text of the section whose heading line is `heading`, up to the next heading of the
    same or a higher level."""
    text = SPEC.read_text()
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n")
    rest = text[start + len(heading) + 2:]
    below = re.compile(r"^#{1,%d} " % len(level), re.MULTILINE)  # noqa: UP031 (regex braces)
    ends = [m.start() for m in below.finditer(rest)]
    return rest[: ends[0]] if ends else rest


def test_every_test_vector_is_in_the_specification() -> None:
    spec = _spec_hex()
    vectors = {
        match
        for name in VECTOR_TESTS
        for match in HEX.findall((ROOT / "tests" / name).read_text())
    }
    assert len(vectors) >= 10, "the vector tests lost their vectors"
    missing = sorted(v[:40] + "..." for v in vectors if v not in spec)
    assert not missing, f"vectors checked by tests but absent from docs/PROTOCOL.md: {missing}"


def test_the_reason_code_table_is_close_code_exactly() -> None:
    table = _section("### 4.1 Reason codes")
    rows = {int(number): name
            for number, name in re.findall(r"^\| (\d+) \| ([A-Z_]+) \|", table, re.MULTILINE)}
    assert rows == {int(code): code.name for code in CloseCode}


def test_the_title_names_the_wire_version_the_code_speaks() -> None:
    first = SPEC.read_text().splitlines()[0]
    assert first == f"# The Quantum protocol, version 1.0 (wire version {VERSION})"
    header = _section("### 2.1 Header (32 bytes)")
    assert HEADER_SIZE == 32
    assert f"`{VERSION:02x}` (Quantum 1.0)" in header
    assert f"`0x{KEY_PHASE:02x}` | KEY_PHASE" in header


def test_handshake_sizes_are_the_codes() -> None:
    text = SPEC.read_text()
    assert f"#### 5.2.2 Retry (SYN|URG payload, {handshake.RETRY_COOKIE_SIZE} bytes)" in text
    assert f"#### 5.2.3 ServerHello (SYN|ACK payload, {handshake.SERVER_HELLO_SIZE} bytes)" in text
    assert f"#### 5.2.4 Server cookie ({handshake.SERVER_COOKIE_SIZE} bytes)" in text
    overview = _section("### 5.1 Overview")
    finish_overhead = 2 + handshake.SERVER_COOKIE_SIZE + 16
    assert f"| {finish_overhead} + n " in overview
    hello_size, datagram = handshake.SERVER_HELLO_SIZE, HEADER_SIZE + handshake.SERVER_HELLO_SIZE
    assert f"| {hello_size}          | {datagram} |" in overview
    assert f"exactly {handshake.HELLO_SIZE} when sent" in overview
    hello = _section("#### 5.2.1 ClientHello (SYN payload)")
    assert f"1..{handshake.MAX_OFFER}" in hello


def test_labels_and_cipher_ids_are_the_codes() -> None:
    overview = _section("### 5.1 Overview")
    for name in ("PROTOCOL_LABEL", "RETRY_LABEL", "COOKIE_LABEL"):
        value = getattr(handshake, name).decode("ascii")
        assert re.search(rf'^{name} += "{re.escape(value)}"$', overview, re.MULTILINE), name
    assert f'LABEL_PREFIX   = "{LABEL_PREFIX.decode("ascii")}"' in overview
    assert f"`0x{AES_256_GCM:02x}` AES-256-GCM, `0x{CHACHA20_POLY1305:02x}` ChaCha20-Poly1305" \
        in overview
    schedule = _section("### 5.3 Key schedule")
    for label in ("confirm", "finish", "client traffic", "server traffic", "key", "iv",
                  "key update"):
        assert f'"{label}"' in schedule, label
