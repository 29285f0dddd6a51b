"""Quantum 1.0 test vectors for libquantum's unit tests, computed from the formulas of the 1.0
wire design (handshake section 5, key update section 6, frames section 4) with Python's
hashlib / hmac and the `cryptography` package: an implementation independent of the C code.

    python clients/c/tests/make_vectors.py > clients/c/tests/vectors-1.0.md

The output has the layout of docs/PROTOCOL.md's vector sections (5.7 and 11), so the C tests
read it with the same parser; once PROTOCOL.md prints the 1.0 vectors, `make check` reads them
there again (SPEC in the Makefile) and this file goes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PROTOCOL_LABEL = b"Quantum 1.0 handshake: X25519, HKDF-SHA256"
COOKIE_LABEL = b"Quantum 1.0 server cookie"
RETRY_LABEL = b"Quantum 1.0 retry cookie"
LABEL_PREFIX = b"quantum 1.0 "
AES, CHACHA = 1, 2
CID = bytes(range(16))
ADDR = ("192.0.2.1", 4433)


def label_key(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class Random:
    """server random(n): successive SHA-256("quantum test vector random" || u32 counter)."""

    def __init__(self) -> None:
        self.counter = 0

    def take(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"quantum test vector random"
                                  + struct.pack(">I", self.counter)).digest()
            self.counter += 1
        return out[:n]


def public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(
        Encoding.Raw, PublicFormat.Raw)


def dh(private: bytes, peer: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(
        X25519PublicKey.from_public_bytes(peer))


def expand(secret: bytes, label: bytes, length: int) -> bytes:
    return hmac.new(secret, LABEL_PREFIX + label + b"\x01", hashlib.sha256).digest()[:length]


def aead(cipher: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return AESGCM(key) if cipher == AES else ChaCha20Poly1305(key)


def nonce(iv: bytes, pn: int) -> bytes:
    return (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")


def header(flags: int, cid: bytes, seq: int, ack: int, length: int) -> bytes:
    return b"QUNT" + bytes((3, flags)) + cid + struct.pack(">IIH", seq, ack, length)


def credentials() -> bytes:
    # flags: ticket | fec; user "alice"; ticket "v1.test"; fec (10, 3); metadata room=lobby
    return (bytes((0x01 | 0x08,)) + struct.pack(">H", 5) + b"alice" + struct.pack(">H", 7)
            + b"v1.test" + bytes((10, 3)) + bytes((1,)) + bytes((4,)) + b"room"
            + struct.pack(">H", 5) + b"lobby")


def block(name: str, data: bytes) -> list[str]:
    lines = [f"{name} ({len(data)} bytes)"]
    lines += ["  " + data[i:i + 32].hex() for i in range(0, len(data), 32)]
    return [*lines, ""]


def handshake() -> list[str]:
    s_priv = label_key("quantum test vector server static")
    e_c_priv = label_key("quantum test vector client ephemeral")
    e_s_priv = label_key("quantum test vector server ephemeral")
    s_pub, e_c, e_s = public(s_priv), public(e_c_priv), public(e_s_priv)
    fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(s_pub).digest()).decode().rstrip("=")
    offer = bytes((2, AES, CHACHA))
    hello = e_c + offer + b"\x00"
    hello += bytes(1168 - len(hello))
    cipher = AES
    h = hashlib.sha256(PROTOCOL_LABEL + CID + e_c + offer + e_s + s_pub
                       + bytes((cipher,))).digest()
    prk = hmac.new(h, dh(e_c_priv, e_s) + dh(e_c_priv, s_pub), hashlib.sha256).digest()
    confirm_key = expand(prk, b"confirm", 32)
    finish_key = expand(prk, b"finish", 32)
    client0 = expand(prk, b"client traffic", 32)
    server0 = expand(prk, b"server traffic", 32)
    rnd = Random()
    cookie_key, cookie_nonce = rnd.take(32), rnd.take(12)
    addr_tag = hashlib.sha256(struct.pack(">H", ADDR[1]) + ADDR[0].encode()).digest()[:16]
    plain = prk + h + bytes((cipher,)) + struct.pack(">d", 1000.0) + addr_tag
    key_id = 100  # the cookie key's epoch, floor(1000.0 / 10 s), low byte
    cookie = bytes((key_id,)) + cookie_nonce + AESGCM(cookie_key).encrypt(
        cookie_nonce, plain, COOKIE_LABEL + bytes((key_id,)) + CID)
    params = struct.pack(">BBII", 10, 3, 10000, 60000)
    confirmation = aead(cipher, confirm_key).encrypt(bytes(12), params, h)
    server_hello = (e_s + s_pub + bytes((cipher,)) + struct.pack(">H", len(cookie)) + cookie
                    + confirmation)
    finish = (struct.pack(">H", len(cookie)) + cookie
              + aead(cipher, finish_key).encrypt(bytes(12), credentials(), h))
    client1 = expand(client0, b"key update", 32)
    key0, iv0 = expand(client0, b"key", 32), expand(client0, b"iv", 12)
    key1, iv1 = expand(client1, b"key", 32), expand(client1, b"iv", 12)
    hdr0 = header(0x02, CID, 1, 0, 5)
    hdr1 = header(0x82, CID, 2, 0, 5)
    sealed0 = aead(cipher, key0).encrypt(nonce(iv0, 1), b"hello", hdr0)
    sealed1 = aead(cipher, key1).encrypt(nonce(iv1, 2), b"hello", hdr1)
    sealed_chacha = ChaCha20Poly1305(key0).encrypt(nonce(iv0, 1), b"hello", hdr0)
    retry_secret = rnd.take(32)
    slot = 16
    retry = struct.pack(">I", slot) + hmac.new(
        retry_secret, RETRY_LABEL + CID + struct.pack(">I", slot) + struct.pack(">H", ADDR[1])
        + ADDR[0].encode(), hashlib.sha256).digest()
    out = [
        "### 5.7 Test vectors",
        "",
        "Inputs as docs/PROTOCOL.md 5.7 (wire version 2) lists them; the offer is AES-256-GCM",
        "then ChaCha20-Poly1305 (02 01 02), the server chooses AES-256-GCM (01). The server",
        "cookie (opaque to a client): key id 100 (epoch of 10 s), address tag SHA-256(port u16",
        "|| ip text)[:16]. The same values as tests/test_handshake.py's V_AES.",
        "",
        "```",
        f"S (server static public)  {s_pub.hex()}",
        f"fingerprint               {fingerprint}",
        f"e_c (client public)       {e_c.hex()}",
        f"SHA-256(ClientHello)      {hashlib.sha256(hello).hexdigest()}",
        "",
    ]
    out += block("ServerHello", server_hello)
    out += block("ClientFinish", finish)
    out += [
        f"h (transcript)   {h.hex()}",
        f"prk              {prk.hex()}",
        f"confirm_key      {confirm_key.hex()}",
        f"finish_key       {finish_key.hex()}",
        f"client_secret0   {client0.hex()}",
        f"server_secret0   {server0.hex()}",
        f"client_secret1   {client1.hex()}",
        f"client_key0      {key0.hex()}",
        f"client_iv0       {iv0.hex()}",
        f"client_key1      {key1.hex()}",
        f"client_iv1       {iv1.hex()}",
        "",
        "protected packets, client -> server, body \"hello\": generation 0 pn 1, generation 1",
        "(KEY_PHASE) pn 2, and generation 0 pn 1 under ChaCha20-Poly1305 with the same key:",
        f"  header0 {hdr0.hex()}",
        f"  sealed0 {sealed0.hex()}",
        f"  header1 {hdr1.hex()}",
        f"  sealed1 {sealed1.hex()}",
        f"  sealedc {sealed_chacha.hex()}",
        "",
        "Retry at now = 1000.0, rotation 60 s (slot 16), the third random draw its secret:",
        f"  retry {retry.hex()}",
        "```",
        "",
    ]
    return out


def frames() -> list[str]:
    def message(channel: int, mode: int, mid: int, data: bytes) -> bytes:
        return bytes((1, channel, mode)) + struct.pack(">IH", mid, len(data)) + data

    def fragment(channel: int, mode: int, mid: int, offset: int, total: int,
                 data: bytes) -> bytes:
        return (bytes((1, channel, mode | 0x80)) + struct.pack(">IIIH", mid, offset, total,
                                                               len(data)) + data)

    rows = [
        ("MESSAGE(channel 3, RELIABLE_UNORDERED, id 258, \"hi\")", message(3, 1, 258, b"hi")),
        ("MESSAGE(channel 3, RELIABLE_ORDERED, id 7, offset 1300, total 5000, \"hi\")",
         fragment(3, 0, 7, 1300, 5000, b"hi")),
        ("MESSAGE(channel 0, UNRELIABLE_SEQUENCED, id 1, empty)", message(0, 3, 1, b"")),
        ("PING", b"\x0b"),
        ("PING then 3 bytes of PADDING (decodes to PING alone)", b"\x0b\x00\x00\x00"),
        ("KEEPALIVE(42)", b"\x02" + struct.pack(">I", 42)),
        ("KEEPALIVE_ACK(42, 1800000 ms)", b"\x03" + struct.pack(">II", 42, 1800000)),
        ("CLOSE(4, \"bye\")", b"\x04" + struct.pack(">HH", 4, 3) + b"bye"),
        ("REJECT(30, \"cipher\")", b"\x0a" + struct.pack(">HH", 30, 6) + b"cipher"),
    ]
    out = ["## 11. Wire test vectors", "",
           "1. SYN, cid 00..0f, seq 0, ack 0, no SACK, payload \"hello\"",
           "   " + (header(0x01, CID, 0, 0, 5) + b"hello").hex(),
           "2. ACK|KEY_PHASE, cid ab x 16, seq 7, ack 3, SACK (5..6), no payload",
           "   " + (header(0x82, b"\xab" * 16, 7, 3, 0) + struct.pack(">II", 5, 6)).hex(),
           "", "| frame | bytes |", "|---|---|"]
    out += [f"| {desc} | `{data.hex()}` |" for desc, data in rows]
    return [*out, ""]


def main() -> None:
    print("# Quantum 1.0 test vectors (generated by make_vectors.py; do not edit)\n")
    print("\n".join(handshake() + frames()))


if __name__ == "__main__":
    main()
