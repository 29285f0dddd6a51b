"""docs/PROTOCOL.md and the tests must carry the same test vectors: every long hex string the
codec and handshake tests check byte for byte is printed in the specification."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTOR_TESTS = ("test_packet.py", "test_frames.py", "test_handshake.py")
HEX = re.compile(r"[\"']([0-9a-f]{32,})[\"']")


#: the specification, and the sections written for Quantum 1.0 that it is to take in
SPEC_FILES = ("PROTOCOL.md", "protocol-1.0-pmtu.md")


def _spec_hex() -> str:
    text = "".join((ROOT / "docs" / name).read_text() for name in SPEC_FILES)
    return re.sub(r"\s+", "", text)


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
