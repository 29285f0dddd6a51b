"""The handshake: test vectors, pinning, cookies, retry, credentials codec, fuzzing."""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.config import QuantumConfiguration
from quantum.connection import Connection
from quantum.crypto import CIPHER_IDS, hkdf_expand, next_secret
from quantum.errors import CloseCode
from quantum.frames import PingFrame, decode_frames
from quantum.handshake import (
    HELLO_SIZE,
    MAX_CREDENTIAL_MARKS,
    MAX_CREDENTIALS,
    MAX_METADATA_ENTRIES,
    RETRY_COOKIE_SIZE,
    SERVER_COOKIE_SIZE,
    SERVER_HELLO_SIZE,
    ClientHandshake,
    Credentials,
    HandshakeError,
    ServerHandshake,
    ServerParams,
    decode_credentials,
    decode_hello,
    encode_credentials,
    encode_hello,
    encode_offer,
    key_schedule,
    transcript_hash,
)
from quantum.keys import fingerprint
from quantum.limits import MAX_FEC_K, MAX_FEC_M
from quantum.packet import ACK, HEADER_SIZE
from tests.profiles import scaled


def _h(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


class _Random:
    """Deterministic `random`: SHA-256("quantum test vector random" || u32 counter) blocks."""

    def __init__(self) -> None:
        self.counter = 0

    def __call__(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            out += hashlib.sha256(b"quantum test vector random"
                                  + struct.pack(">I", self.counter)).digest()
            self.counter += 1
        return out[:size]


CID = bytes(range(16))
ADDR = ("192.0.2.1", 4433)
NOW = 1000.0
PARAMS = ServerParams((10, 3), 10.0, 60.0)
STATIC = _h("quantum test vector server static")
CLIENT_EPHEMERAL = _h("quantum test vector client ephemeral")
SERVER_EPHEMERAL = _h("quantum test vector server ephemeral")
VECTOR_CREDENTIALS = Credentials("alice", "v1.test", metadata={"room": "lobby"})

# --- test vectors (the same hex is in docs/PROTOCOL.md section 5) ---------------------------
V_STATIC_PUBLIC = "f5891566af36149b269a72b62f3cb780dc2c54039950d39da73200b4bdaf0962"
V_FINGERPRINT = "SHA256:ntQ1m6ivgZZoWZ8G5ldXLKUY0bTIpMuNDNNGzIVimj8"
V_CLIENT_PUBLIC = "9510d6fb656e12ecb7fe02c013e546115ab650bcbb291e41da4b91cd4d6fe172"
@dataclass(frozen=True)
class Vector:
    """One handshake's outputs for the inputs above and a client offering `ciphers`."""

    ciphers: tuple[str, ...]
    hello_sha256: str
    syn_ack: str
    ack: str
    transcript: str
    prk: str
    confirm_key: str
    finish_key: str
    client_secret: str
    server_secret: str
    client_key: str
    client_iv: str
    server_key: str
    server_iv: str
    client_secret_1: str  # after one key update
    client_key_1: str
    client_iv_1: str
    sealed_hello: str  # b"hello", pn 1, generation 0, client -> server, under V_HEADER
    sealed_hello_1: str  # b"hello", pn 2, generation 1, under V_HEADER_1
    # a 1280-byte PMTU probe, server -> client, generation 0, pn 1, under V_PROBE_HEADER:
    # its first 32 sealed bytes, its tag and the SHA-256 of the whole datagram
    probe_body: str
    probe_tag: str
    probe_sha256: str


V_AES = Vector(
    ciphers=('aes-256-gcm', 'chacha20-poly1305'),
    hello_sha256="22d59a1aaf9085cddf1d973c457553319a9748d87e043580c14547889d5c0b7f",
    syn_ack=(
        "dfa012388158f9a2c85fa8804125eb0b874c9667e1c62b4fdde54188ecac2c4d"
        "f5891566af36149b269a72b62f3cb780dc2c54039950d39da73200b4bdaf0962"
        "010076643c57d6621d05c2483a3e53475665ec32d549a5760e8c77412aca1939"
        "37e130bb3e710a4f7c08cc7b2903130661297515319c62d14aef15dee8071883"
        "b1716bfe34a10757d47fa3dbf4f2cbeb88fb7cd594318e79c8ed33f0dad4ecef"
        "13878b39aad8bc5248e3437408b02f3dada3fa10eba0dc3f534bd2498aa2d3bf"
        "7846134fa1eeb9f833473ab40a2bde431aafd0"
    ),
    ack=(
        "0076643c57d6621d05c2483a3e53475665ec32d549a5760e8c77412aca193937"
        "e130bb3e710a4f7c08cc7b2903130661297515319c62d14aef15dee8071883b1"
        "716bfe34a10757d47fa3dbf4f2cbeb88fb7cd594318e79c8ed33f0dad4ecef13"
        "878b39aad8bc5248e3437408b02f3dada3fa10eba0dc3f53967353aff7f780fb"
        "7609d31e3836130d934595ece966a95f97cef73669d644853ef6611837f90e71"
        "d6d8e0e47e887cc2"
    ),
    transcript="9013dc2728033ec5f48090bb6c39a2bd76da0590dc7731373d3459bd194330d3",
    prk="8241c90e8b94c84c4f878d84bd67fc26c685a3a073b774ef6239e16bb28506b7",
    confirm_key="0aebd92cb0355d7e4fad50a384fa40bd4eabdff5bac8e1337f62d1ae6dffe2cf",
    finish_key="61f55e25d2cea8e5309b7259333e3ed42ac23d03902b7fde31be81bae4790223",
    client_secret="49ce3a98e828822c6f6c987daf96ff77759b0089a86c06284cca321a88c41661",
    server_secret="8fb594061ca414558ee1f599ed71b72f3168fb17a12d3369b1c3602fcdc5bc8d",
    client_key="32401014d98f6ca1516836064879455e40cdfe9d1a9058dbb4d27e704cd0aa75",
    client_iv="60f4d72d7158966f2da5e769",
    server_key="2e2f92e40237bf256f235085c6cf796c8dcbaf74f0dc27a18751462ec0f7191e",
    server_iv="a721cd2d2e5108c5769a89b5",
    client_secret_1="85ba620fb34ab7edb9d5aadd28a515a17fa7a567929bf11d3f8aff5b643b0f37",
    client_key_1="be5def1a7f95c9f321020daf0e674219932b3cfcf101d8ff14ae5cea9ec64eba",
    client_iv_1="74604284c16707a89033dc5c",
    sealed_hello="6ff20b37186f024d6a480014a91b876854bad39c44",
    sealed_hello_1="0a07df8644225eb44c954e3ef1a6b69c1ec6c0295f",
    probe_body="0c2777dfec7a2b8629f147061a5abc1de1f2bbddd2941ef816a1c3c6fcea781a",
    probe_tag="9ec07bc5be44263ae4565f8d0f2176fa",
    probe_sha256="8fdc4ef914c5872b7fb87ccfcc362645f20d11d0597ba39cdc3ef459f92ede00",
)

V_CHACHA = Vector(
    ciphers=('chacha20-poly1305', 'aes-256-gcm'),
    hello_sha256="5379e205c444202e64244e83a11a43555daf9c44c7174bd4e8a381e72f36d394",
    syn_ack=(
        "dfa012388158f9a2c85fa8804125eb0b874c9667e1c62b4fdde54188ecac2c4d"
        "f5891566af36149b269a72b62f3cb780dc2c54039950d39da73200b4bdaf0962"
        "020076643c57d6621d05c2483a3e53470d3adc72de0e9e4d4cd8b324e0fcf423"
        "2b76c49e3018a97f215e708d828982e18b2220a31785e1a25bfc9a47b2e3c57a"
        "629c11d2051dc313d9e88087b5ddfa9c8bfb7cd594318e79c8ed33f0dad4ecef"
        "13878b39aad8bc524808f08014b32707e1c720259cdef51ac423390a9e41d54b"
        "8650beca165153de1cb0cc5818d7db3b11120a"
    ),
    ack=(
        "0076643c57d6621d05c2483a3e53470d3adc72de0e9e4d4cd8b324e0fcf4232b"
        "76c49e3018a97f215e708d828982e18b2220a31785e1a25bfc9a47b2e3c57a62"
        "9c11d2051dc313d9e88087b5ddfa9c8bfb7cd594318e79c8ed33f0dad4ecef13"
        "878b39aad8bc524808f08014b32707e1c720259cdef51ac47f1665cf7899b0ae"
        "15aeb131eb3d6985a781ac1c8a3f6d01619fee5723b5a796f62a7fa531b3dc55"
        "988b74830e20a622"
    ),
    transcript="7a1889910e1abdb6e5931f2236dd7f44a5377fbcedcbf57330a37ae1586c01a4",
    prk="d91ef94e80d3f3770dd349e17751113cda1257857dded7df3f6f5d9d190f9750",
    confirm_key="5b99dd87f8ab2adc98a9dff9574cb6a042cb4db938736b7248c92b0919307880",
    finish_key="3e07af850361bb4ce3bb63f5c7a75c20029ac3a9b2ded36723a2e6514db9110d",
    client_secret="41479bf37a175b0765140d878493731781d9e9ce2ea40cf70952b8b56554553a",
    server_secret="31b974c90e751c102a2972b302adaa5b17675b54af8e8338c47c944aef2b825b",
    client_key="8104ddbd5974b84fca589515378e169dafc0914ebc236fa74c4a036934bae166",
    client_iv="2612e31c55a2d52076957291",
    server_key="edab914f21a7ce0ddb07192d20c6b8ecb20ef8a6cd50a25eeb1be77def3789e7",
    server_iv="ad5c8d457167ec9247ec4d81",
    client_secret_1="8add572497da1e301ef772f9929fa63504df3c4fdbb0c80fab136ec2474ccea5",
    client_key_1="f7bdec93b7659424520fa4a58a41a05e24e629428e364119b739cdec14284530",
    client_iv_1="b6d9c0e31e0edf2d27e3398c",
    sealed_hello="33eadb6029925bfda3622b6356df4e91c392ffef2e",
    sealed_hello_1="f12d66c23388a825330617e99cb6a946e6dd2942e4",
    probe_body="6108b9aef850bcb366d940bcfd4890eb3a049f31c9a53417a6b57c120b73ba87",
    probe_tag="9df2dc8ad5f1dbdd0b39c67f1465eacd",
    probe_sha256="f52d1b3f1eada0e7bceabe471a4385188de6b9d81bb7a29baab3573e5015f12f",
)
V_HEADER = "51554e540302000102030405060708090a0b0c0d0e0f00000001000000000005"
V_HEADER_1 = "51554e540382000102030405060708090a0b0c0d0e0f00000002000000000005"  # KEY_PHASE set
# flags ACK, sequence 1, ack 1 (the ClientFinish, sequence 0, was received), payload 1232
V_PROBE_HEADER = "51554e540302000102030405060708090a0b0c0d0e0f000000010000000104d0"
V_RETRY = "00000010d47afb1fbd6cabb21b7ffdcc1ae9d90b042a3d6415336d8aad38ce4aa87159e0"


def _vector_server() -> ServerHandshake:
    return ServerHandshake(STATIC, PARAMS, random=_Random())


@pytest.mark.parametrize("v", [V_AES, V_CHACHA], ids=["aes-first", "chacha-first"])
def test_vectors(v: Vector) -> None:
    server = _vector_server()
    assert server.static_public.hex() == V_STATIC_PUBLIC
    assert server.fingerprint == V_FINGERPRINT == fingerprint(server.static_public)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, server_key=V_FINGERPRINT,
                             ephemeral_private=CLIENT_EPHEMERAL, ciphers=v.ciphers)
    hello = client.client_hello()
    offer = bytes((len(v.ciphers),)) + bytes(CIPHER_IDS[c] for c in v.ciphers)  # type: ignore[index]
    assert len(hello) == HELLO_SIZE == 1168
    assert hello[:32].hex() == V_CLIENT_PUBLIC
    assert hello[32:] == offer + bytes(HELLO_SIZE - 32 - len(offer))
    assert hashlib.sha256(hello).hexdigest() == v.hello_sha256
    syn_ack = server.on_client_hello(CID, hello, ADDR, NOW, ephemeral_private=SERVER_EPHEMERAL)
    assert syn_ack.hex() == v.syn_ack and len(syn_ack) == SERVER_HELLO_SIZE
    assert syn_ack[64] == CIPHER_IDS[v.ciphers[0]]  # type: ignore[index]
    assert client.on_server_hello(syn_ack) == PARAMS
    assert client.cipher == v.ciphers[0]
    assert client.client_finish().hex() == v.ack
    keys, credentials, params = server.on_client_finish(CID, client.client_finish(), ADDR,
                                                         NOW + 0.5)
    assert credentials == VECTOR_CREDENTIALS and params == PARAMS

    ephemeral = X25519PrivateKey.from_private_bytes(CLIENT_EPHEMERAL)
    ee = ephemeral.exchange(X25519PublicKey.from_public_bytes(syn_ack[:32]))
    es = ephemeral.exchange(X25519PublicKey.from_public_bytes(server.static_public))
    h = transcript_hash(CID, client.client_public, offer, syn_ack[:32], server.static_public,
                        syn_ack[64])
    schedule = key_schedule(h, syn_ack[64], ee, es)
    assert h.hex() == v.transcript and schedule.prk.hex() == v.prk
    assert schedule.confirm_key.hex() == v.confirm_key
    assert schedule.finish_key.hex() == v.finish_key
    client_secret = hkdf_expand(schedule.prk, b"client traffic", 32)
    server_secret = hkdf_expand(schedule.prk, b"server traffic", 32)
    assert (client_secret.hex(), server_secret.hex()) == (v.client_secret, v.server_secret)
    for secret, key, iv in ((client_secret, v.client_key, v.client_iv),
                            (server_secret, v.server_key, v.server_iv),
                            (next_secret(client_secret), v.client_key_1, v.client_iv_1)):
        assert (hkdf_expand(secret, b"key", 32).hex(), hkdf_expand(secret, b"iv", 12).hex()) \
            == (key, iv)
    assert next_secret(client_secret).hex() == v.client_secret_1

    header, header_1 = bytes.fromhex(V_HEADER), bytes.fromhex(V_HEADER_1)
    assert client.keys is not None
    sealed = client.keys.send.seal(1, header, b"hello")
    assert sealed.hex() == v.sealed_hello
    assert keys.recv.open(1, header, sealed) == b"hello"
    sealed_1 = client.keys.send.next().seal(2, header_1, b"hello")
    assert sealed_1.hex() == v.sealed_hello_1
    assert keys.recv.next().open(2, header_1, sealed_1) == b"hello"
    assert server.make_retry(CID, ADDR, NOW).hex() == V_RETRY


@pytest.mark.parametrize("v", [V_AES, V_CHACHA], ids=["aes-first", "chacha-first"])
def test_pmtu_probe_vector(v: Vector) -> None:
    """docs/PROTOCOL.md 5.7's PMTU probe: a server connection made from the vector handshake
    pads a PING to 1280 bytes with its own probe code (the one path MTU discovery uses) and
    seals it with server_key_0; the client's keys open it to PING and 1231 zero bytes."""
    server = _vector_server()
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, server_key=V_FINGERPRINT,
                             ephemeral_private=CLIENT_EPHEMERAL, ciphers=v.ciphers)
    syn_ack = server.on_client_hello(CID, client.client_hello(), ADDR, NOW,
                                     ephemeral_private=SERVER_EPHEMERAL)
    client.on_server_hello(syn_ack)
    keys, credentials, params = server.on_client_finish(CID, client.client_finish(), ADDR,
                                                         NOW + 0.5)
    conn = Connection.server(CID, ADDR, keys, credentials, params, NOW + 0.5)
    conn._send_protected([PingFrame()], NOW + 0.5, flags=ACK, pad_to=1280)
    (probe, to), = conn.datagrams_to_send(NOW + 0.5)
    assert to == ADDR and len(probe) == 1280
    assert probe[:HEADER_SIZE].hex() == V_PROBE_HEADER
    assert probe[HEADER_SIZE:HEADER_SIZE + 32].hex() == v.probe_body
    assert probe[-16:].hex() == v.probe_tag
    assert hashlib.sha256(probe).hexdigest() == v.probe_sha256
    assert client.keys is not None
    plaintext = client.keys.recv.open(1, probe[:HEADER_SIZE], probe[HEADER_SIZE:])
    assert plaintext == bytes.fromhex("0b") + bytes(1231)
    assert decode_frames(plaintext) == [PingFrame()]


# --- a working handshake ----------------------------------------------------------------------


def _handshake(
    credentials: Credentials = VECTOR_CREDENTIALS,
    params: ServerParams = PARAMS,
    server_key: bytes | str | None = None,
) -> tuple[ClientHandshake, ServerHandshake, bytes]:
    server = ServerHandshake(STATIC, params)
    client = ClientHandshake(CID, credentials, server_key=server_key)
    syn_ack = server.on_client_hello(CID, client.client_hello(), ADDR, NOW)
    return client, server, syn_ack


def test_keys_work_in_both_directions() -> None:
    client, server, syn_ack = _handshake()
    client.on_server_hello(syn_ack)
    keys, _, _ = server.on_client_finish(CID, client.client_finish(), ADDR, NOW + 1)
    assert client.keys is not None
    header = bytes(32)
    assert keys.recv.open(9, header, client.keys.send.seal(9, header, b"up")) == b"up"
    assert client.keys.recv.open(9, header, keys.send.seal(9, header, b"down")) == b"down"
    # the two directions use different keys
    assert client.keys.send.seal(1, header, b"x") != keys.send.seal(1, header, b"x")


def test_ephemerals_are_fresh_per_hello() -> None:
    client, server, syn_ack = _handshake()
    again = server.on_client_hello(CID, client.client_hello(), ADDR, NOW)
    assert syn_ack[:32] != again[:32] and syn_ack[32:64] == again[32:64]
    assert len(syn_ack) == SERVER_HELLO_SIZE


def test_finish_is_stable_and_needs_hello() -> None:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    with pytest.raises(HandshakeError) as info:
        client.client_finish()
    assert info.value.code is CloseCode.INTERNAL_ERROR
    client, _, syn_ack = _handshake()
    client.on_server_hello(syn_ack)
    assert client.client_finish() == client.client_finish()
    with pytest.raises(HandshakeError, match="second server hello"):
        client.on_server_hello(syn_ack)


@pytest.mark.parametrize(
    ("client_fec", "server_fec", "expected"),
    [((10, 3), (8, 2), (8, 2)), (None, (10, 3), None), ((10, 3), None, None), (None, None, None)],
)
def test_fec_negotiation(client_fec: tuple[int, int] | None, server_fec: tuple[int, int] | None,
                         expected: tuple[int, int] | None) -> None:
    params = ServerParams(server_fec, 5.0, 30.0)
    client, server, syn_ack = _handshake(Credentials("bob", fec=client_fec), params)
    client_params = client.on_server_hello(syn_ack)
    _, _, server_params = server.on_client_finish(CID, client.client_finish(), ADDR, NOW)
    assert client_params == server_params == ServerParams(expected, 5.0, 30.0)


# --- server authentication ---------------------------------------------------------------------


def _public(private: bytes) -> bytes:
    return ServerHandshake(private, PARAMS).static_public


@pytest.mark.parametrize(
    "pin",
    [
        _public(STATIC),
        base64.b64encode(_public(STATIC)).decode(),
        base64.urlsafe_b64encode(_public(STATIC)).decode().rstrip("="),
        fingerprint(_public(STATIC)),
    ],
)
def test_correct_pins_are_accepted(pin: bytes | str) -> None:
    client, _, syn_ack = _handshake(server_key=pin)
    client.on_server_hello(syn_ack)
    assert client.server_public_key == _public(STATIC)


@pytest.mark.parametrize(
    "pin", [_public(_h("other")), fingerprint(_public(_h("other"))),
            base64.b64encode(_public(_h("other"))).decode()]
)
def test_wrong_pin_fails_with_bad_server_key(pin: bytes | str) -> None:
    client, _, syn_ack = _handshake(server_key=pin)
    with pytest.raises(HandshakeError) as info:
        client.on_server_hello(syn_ack)
    assert info.value.code is CloseCode.BAD_SERVER_KEY
    assert "does not match the pinned" in info.value.message
    assert client.keys is None


def test_unpinned_client_learns_the_key() -> None:
    client, _, syn_ack = _handshake()
    client.on_server_hello(syn_ack)
    assert client.server_public_key == _public(STATIC)


def test_impostor_claiming_the_real_key_cannot_confirm() -> None:
    """A server without the static private key cannot produce the confirmation."""
    real = _public(STATIC)
    impostor = ServerHandshake(_h("impostor"), PARAMS)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, server_key=real)
    syn_ack = impostor.on_client_hello(CID, client.client_hello(), ADDR, NOW)
    forged = syn_ack[:32] + real + syn_ack[64:]
    with pytest.raises(HandshakeError) as info:
        client.on_server_hello(forged)
    assert info.value.code is CloseCode.BAD_SERVER_KEY
    assert "did not prove" in info.value.message


@pytest.mark.parametrize("pin", [b"short", "SHA256:abc", "not base64!", "AAAA"])
def test_malformed_pins(pin: bytes | str) -> None:
    with pytest.raises(HandshakeError) as info:
        ClientHandshake(CID, VECTOR_CREDENTIALS, server_key=pin)
    assert info.value.code is CloseCode.BAD_SERVER_KEY


# --- the server cookie ----------------------------------------------------------------------------


def _finish_payload() -> tuple[ServerHandshake, bytes]:
    client, server, syn_ack = _handshake()
    client.on_server_hello(syn_ack)
    return server, client.client_finish()


def _finish_error(server: ServerHandshake, payload: bytes, cid: bytes = CID,
                  addr: tuple[str, int] = ADDR, now: float = NOW + 1) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        server.on_client_finish(cid, payload, addr, now)
    return info.value


def test_cookie_from_another_address() -> None:
    server, payload = _finish_payload()
    assert "another address" in _finish_error(server, payload, addr=("192.0.2.2", 4433)).message
    assert "another address" in _finish_error(server, payload, addr=("192.0.2.1", 4434)).message


def test_expired_cookie() -> None:
    server, payload = _finish_payload()
    server.on_client_finish(CID, payload, ADDR, NOW + 10.0)  # exactly at the lifetime: fine
    error = _finish_error(server, payload, now=NOW + 10.5)
    assert error.code is CloseCode.HANDSHAKE_TIMEOUT and "expired" in error.message
    error = _finish_error(server, payload, now=NOW + 30)  # the cookie key itself is gone
    assert error.code is CloseCode.HANDSHAKE_TIMEOUT and "rotated out" in error.message


def test_cookie_bound_to_connection_id_and_handshake() -> None:
    server, payload = _finish_payload()
    error = _finish_error(server, payload, cid=bytes(16))
    assert error.code is CloseCode.PROTOCOL_VIOLATION and "does not authenticate" in error.message
    # a cookie of another client's handshake (same server, same connection id): it carries
    # that handshake's keys and transcript, so our sealed credentials do not open under them
    other = ClientHandshake(CID, VECTOR_CREDENTIALS)
    other.on_server_hello(server.on_client_hello(CID, other.client_hello(), ADDR, NOW))
    cookie_end = 2 + SERVER_COOKIE_SIZE
    spliced = other.client_finish()[:cookie_end] + payload[cookie_end:]
    error = _finish_error(server, spliced)
    assert error.code is CloseCode.PROTOCOL_VIOLATION
    assert error.message == "client credentials do not authenticate"


@given(st.data())
@settings(max_examples=scaled(60))
def test_any_bit_flip_in_the_finish_is_rejected(data: st.DataObject) -> None:
    server, payload = _finish_payload()
    bit = data.draw(st.integers(0, len(payload) * 8 - 1))
    flipped = bytearray(payload)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(HandshakeError):
        server.on_client_finish(CID, bytes(flipped), ADDR, NOW + 1)


def test_cookie_from_another_server_instance() -> None:
    _, payload = _finish_payload()
    restarted = ServerHandshake(STATIC, PARAMS)  # same static key, fresh cookie keys
    assert _finish_error(restarted, payload).code is CloseCode.PROTOCOL_VIOLATION


# --- retry cookies -----------------------------------------------------------------------------


def _hello_with_retry(server: ServerHandshake, now: float, cid: bytes = CID,
                      addr: tuple[str, int] = ADDR) -> bytes:
    client = ClientHandshake(cid, VECTOR_CREDENTIALS)
    assert server.needs_retry(client.client_hello(), cid, addr, now)
    retry = server.make_retry(cid, addr, now)
    assert len(retry) == RETRY_COOKIE_SIZE
    client.on_retry(retry)
    hello = client.client_hello()
    assert len(hello) == HELLO_SIZE and decode_hello(hello).retry_cookie == retry
    return hello


def test_retry_cookie_accepted_for_same_address_and_id() -> None:
    server = ServerHandshake(STATIC, PARAMS, retry_rotation=60.0)
    hello = _hello_with_retry(server, NOW)
    assert not server.needs_retry(hello, CID, ADDR, NOW + 1)
    # the SYN-ACK for a retried hello completes as usual
    assert len(server.on_client_hello(CID, hello, ADDR, NOW + 1)) == SERVER_HELLO_SIZE


def test_retry_cookie_rejected_elsewhere() -> None:
    server = ServerHandshake(STATIC, PARAMS, retry_rotation=60.0)
    hello = _hello_with_retry(server, NOW)
    assert server.needs_retry(hello, CID, ("192.0.2.9", 4433), NOW)
    assert server.needs_retry(hello, CID, ("192.0.2.1", 1), NOW)
    assert server.needs_retry(hello, bytes(16), ADDR, NOW)
    tampered = bytearray(hello)
    tampered[40] ^= 1
    assert server.needs_retry(bytes(tampered), CID, ADDR, NOW)


def test_retry_secret_rotation() -> None:
    server = ServerHandshake(STATIC, PARAMS, retry_rotation=60.0)
    start = 600.0  # the start of an epoch
    hello = _hello_with_retry(server, start)
    assert not server.needs_retry(hello, CID, ADDR, start + 100)  # previous secret still good
    assert server.needs_retry(hello, CID, ADDR, start + 120)  # two rotations: gone


@pytest.mark.parametrize("size", [0, 35, 37])
def test_malformed_retry_payload(size: int) -> None:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    with pytest.raises(HandshakeError, match="retry cookie is"):
        client.on_retry(bytes(size))


# --- client hello ---------------------------------------------------------------------------


def test_hello_must_be_padded_with_zeros() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    hello = ClientHandshake(CID, VECTOR_CREDENTIALS).client_hello()
    with pytest.raises(HandshakeError, match="padded to at least 1168"):
        server.on_client_hello(CID, hello[:-1], ADDR, NOW)
    with pytest.raises(HandshakeError, match="padding is not all zero"):
        server.on_client_hello(CID, hello[:-1] + b"\x01", ADDR, NOW)
    # e_c (32) || count 2 || two ids || the retry cookie length at offset 35
    bad_length = hello[:35] + b"\x05" + hello[36:]
    with pytest.raises(HandshakeError, match="retry cookie length 5"):
        server.needs_retry(bad_length, CID, ADDR, NOW)
    for count in (0, 9):
        with pytest.raises(HandshakeError, match=f"{count} ciphers offered"):
            server.on_client_hello(CID, hello[:32] + bytes((count,)) + hello[33:], ADDR, NOW)


def test_low_order_client_key_is_refused() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    with pytest.raises(HandshakeError, match="low-order"):
        server.on_client_hello(CID, encode_hello(bytes(32), None), ADDR, NOW)


def test_connection_id_size_is_checked() -> None:
    with pytest.raises(HandshakeError, match="connection id must be 16 bytes"):
        ClientHandshake(b"short", VECTOR_CREDENTIALS)
    with pytest.raises(HandshakeError, match="connection id must be 16 bytes"):
        ServerHandshake(STATIC, PARAMS).make_retry(b"", ADDR, NOW)


# --- credentials codec --------------------------------------------------------------------------

_text = st.text(max_size=20)
credentials_strategy = st.builds(
    Credentials,
    user_id=st.text(min_size=1, max_size=30),
    ticket=st.none() | _text,
    resume=st.none() | st.tuples(st.binary(min_size=16, max_size=16),
                                 st.text(min_size=1, max_size=16)),
    resume_fallback=st.booleans(),
    metadata=st.dictionaries(st.text(min_size=1, max_size=10), _text, max_size=8),
    fec=st.none() | st.tuples(st.integers(1, MAX_FEC_K), st.integers(1, MAX_FEC_M)),
    delivered=st.none() | st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 1), st.integers(0, 0xFFFFFFFF)),
        max_size=MAX_CREDENTIAL_MARKS).map(tuple),
    carry=st.booleans(),
)


def test_the_carry_over_credentials_vector() -> None:
    """PROTOCOL.md 5.2.5: flag 0x10 and the delivery marks, after the resume credential."""
    credentials = Credentials("alice", resume=(bytes(range(16)), "tok"), fec=None,
                              delivered=((0, 0, 7), (3, 1, 0xFFFFFFFE)), carry=True)
    vector = ("320005616c696365000102030405060708090a0b0c0d0e0f03746f6b"
              "020000000000070301fffffffe00")
    assert encode_credentials(credentials).hex() == vector
    assert decode_credentials(bytes.fromhex(vector)) == credentials


@given(credentials_strategy)
def test_credentials_round_trip(credentials: Credentials) -> None:
    assert decode_credentials(encode_credentials(credentials)) == credentials


@pytest.mark.parametrize(
    ("credentials", "reason"),
    [
        (Credentials(""), "user id is 0 bytes"),
        (Credentials("a", resume=(b"short", "t")), "session id must be 16 bytes"),
        (Credentials("a", fec=(0, 3)), "FEC k must be between 1 and 16"),
        (Credentials("a", fec=(17, 3)), "FEC k must be between 1 and 16"),
        (Credentials("a", fec=(3, 17)), "FEC m must be between 1 and 16"),
        (Credentials("a", metadata={str(i): "" for i in range(MAX_METADATA_ENTRIES + 1)}),
         "at most 64"),
        (Credentials("a", metadata={"": "x"}), "metadata key is 0 bytes"),
        (Credentials("a", metadata={"k": "v" * 1025}), "metadata value"),
        (Credentials("a", metadata={f"k{i}": "v" * 500 for i in range(3)}), "fit"),
        (Credentials("a", metadata={"k": 5}), "must be a string"),  # type: ignore[dict-item]
        (Credentials("a", delivered=((0, 2, 0),)), "out of range"),
        (Credentials("a", delivered=((0, 0, 1),) * (MAX_CREDENTIAL_MARKS + 1)), "at most 64"),
    ],
)
def test_credentials_out_of_bounds(credentials: Credentials, reason: str) -> None:
    with pytest.raises(HandshakeError, match=reason) as info:
        ClientHandshake(CID, credentials)
    assert info.value.code is CloseCode.BAD_REQUEST


def test_malformed_credentials_encodings() -> None:
    good = encode_credentials(Credentials("alice", "t", metadata={"k": "v"}))
    for bad, reason in [
        (b"", "truncated in flags"),
        (b"\x80" + good[1:], "unknown flag bits"),
        (good + b"\x00", "trailing"),
        (good[:-1], "truncated"),
        (b"\x00\x00\x00", "user id length 0"),
        (b"\x00\x00\x01\xff\x00", "not valid UTF-8"),
        (b"\x20\x00\x01a\x41" + bytes(65 * 6) + b"\x00", "65 delivery marks, at most 64"),
        (b"\x20\x00\x01a\x01\x00\x02\x00\x00\x00\x00\x00", "only reliable modes"),
        (b"\x40" + good[1:], "unknown flag bits"),
    ]:
        with pytest.raises(HandshakeError, match=reason) as info:
            decode_credentials(bad)
        assert info.value.code is CloseCode.BAD_REQUEST
    duplicate = b"\x00\x00\x01a\x02" + (b"\x01k\x00\x00" * 2)
    with pytest.raises(HandshakeError, match="appears twice"):
        decode_credentials(duplicate)


def test_server_params_validation() -> None:
    for bad in [((0, 3), 1.0, 1.0), ((10, 3), 0.0, 1.0), (None, 1.0, float("inf")),
                (None, 1.0, 0.0001)]:
        with pytest.raises(ValueError):
            ServerParams(*bad)


# --- fuzzing: arbitrary bytes only ever raise HandshakeError ------------------------------


@given(st.binary(max_size=1500))
@settings(max_examples=scaled(150))
def test_fuzz_server_inputs(data: bytes) -> None:
    server = ServerHandshake(STATIC, PARAMS)
    try:
        assert len(server.on_client_hello(CID, data, ADDR, NOW)) == SERVER_HELLO_SIZE
    except HandshakeError as error:
        assert error.message
    try:
        assert isinstance(server.needs_retry(data, CID, ADDR, NOW), bool)
    except HandshakeError as error:
        assert error.message
    # a finish must carry a cookie this server sealed for this address: no random one does
    with pytest.raises(HandshakeError) as refused:
        server.on_client_finish(CID, data, ADDR, NOW)
    assert refused.value.message
    try:
        credentials = decode_credentials(data)
    except HandshakeError as error:
        assert error.code in (CloseCode.BAD_REQUEST, CloseCode.PROTOCOL_VIOLATION)
    else:
        assert decode_credentials(encode_credentials(credentials)) == credentials


@given(st.binary(max_size=400))
@settings(max_examples=scaled(150))
def test_fuzz_client_inputs(data: bytes) -> None:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    # a server hello must prove the server's key: no random one does
    with pytest.raises(HandshakeError) as refused:
        client.on_server_hello(data)
    assert refused.value.message
    if len(data) == RETRY_COOKIE_SIZE:
        client.on_retry(data)  # any cookie of the right size is echoed: only the server reads it
    else:
        with pytest.raises(HandshakeError, match="retry cookie is"):
            client.on_retry(data)


@given(st.binary(min_size=SERVER_HELLO_SIZE, max_size=SERVER_HELLO_SIZE))
@settings(max_examples=scaled(100))
def test_fuzz_client_full_size_server_hello(data: bytes) -> None:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    with pytest.raises(HandshakeError):
        client.on_server_hello(data)


@given(st.binary(min_size=35, max_size=80))
@settings(max_examples=scaled(100))
def test_fuzz_hello_structure(prefix: bytes) -> None:
    """Well-padded hellos with arbitrary fields: a SYN-ACK or a HandshakeError, nothing else."""
    hello = prefix + bytes(HELLO_SIZE - len(prefix))
    server = ServerHandshake(STATIC, PARAMS)
    try:
        answered = server.on_client_hello(CID, hello, ADDR, NOW)
    except HandshakeError as error:
        assert error.message
        # what a malformed hello is, or one offering no cipher this server has
        assert error.code in (CloseCode.PROTOCOL_VIOLATION, CloseCode.CIPHER_NOT_SUPPORTED), error
    else:
        assert len(answered) == SERVER_HELLO_SIZE
        assert server.needs_retry(hello, CID, ADDR, NOW) in (True, False)


# --- cipher negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(("offer", "enabled", "chosen"), [
    (("aes-256-gcm", "chacha20-poly1305"), ("aes-256-gcm", "chacha20-poly1305"), "aes-256-gcm"),
    (("chacha20-poly1305", "aes-256-gcm"), ("aes-256-gcm", "chacha20-poly1305"),
     "chacha20-poly1305"),  # the client's order decides
    (("aes-256-gcm", "chacha20-poly1305"), ("chacha20-poly1305",), "chacha20-poly1305"),
    (("chacha20-poly1305",), ("chacha20-poly1305", "aes-256-gcm"), "chacha20-poly1305"),
])
def test_the_server_picks_the_first_offered_cipher_it_has(
        offer: tuple[str, ...], enabled: tuple[str, ...], chosen: str) -> None:
    server = ServerHandshake(STATIC, PARAMS, ciphers=enabled)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, ciphers=offer)
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, NOW))
    keys, _, _ = server.on_client_finish(CID, client.client_finish(), ADDR, NOW + 1)
    assert client.cipher == chosen and client.keys is not None
    assert client.keys.send.algorithm == keys.recv.algorithm == chosen
    header = bytes(32)
    assert keys.recv.open(3, header, client.keys.send.seal(3, header, b"up")) == b"up"


def test_unknown_cipher_ids_are_ignored() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    hello = client.client_hello()
    # an offer of a future cipher 0x7f, then ChaCha20: the server passes over 0x7f
    future = hello[:32] + b"\x02\x7f\x02" + hello[35:]
    syn_ack = server.on_client_hello(CID, future, ADDR, NOW)
    assert syn_ack[64] == CIPHER_IDS["chacha20-poly1305"]


def test_no_common_cipher_is_cipher_not_supported() -> None:
    server = ServerHandshake(STATIC, PARAMS, ciphers=("aes-256-gcm",))
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, ciphers=("chacha20-poly1305",))
    with pytest.raises(HandshakeError) as info:
        server.on_client_hello(CID, client.client_hello(), ADDR, NOW)
    assert info.value.code is CloseCode.CIPHER_NOT_SUPPORTED == 30


def test_a_downgraded_offer_is_detected_by_the_client() -> None:
    # an active attacker strips AES-256-GCM from the offer so the server picks ChaCha20: the
    # server's transcript then holds the altered offer, the client's the original, and the
    # confirmation (sealed under keys derived with the transcript) does not open
    server = ServerHandshake(STATIC, PARAMS)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    hello = client.client_hello()
    stripped = hello[:32] + b"\x01\x02" + hello[35:] + b"\x00"
    syn_ack = server.on_client_hello(CID, stripped, ADDR, NOW)
    assert syn_ack[64] == CIPHER_IDS["chacha20-poly1305"]
    with pytest.raises(HandshakeError) as info:
        client.on_server_hello(syn_ack)
    assert info.value.code is CloseCode.BAD_SERVER_KEY
    assert "tampered" in info.value.message


def test_a_choice_outside_the_offer_is_refused() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, ciphers=("aes-256-gcm",))
    syn_ack = bytearray(server.on_client_hello(CID, client.client_hello(), ADDR, NOW))
    syn_ack[64] = CIPHER_IDS["chacha20-poly1305"]
    with pytest.raises(HandshakeError, match="not offered") as info:
        client.on_server_hello(bytes(syn_ack))
    assert info.value.code is CloseCode.PROTOCOL_VIOLATION


@pytest.mark.parametrize("ciphers", [(), ("rot13",), ("aes-256-gcm", "aes-256-gcm")])
def test_a_bad_cipher_list_is_refused_up_front(ciphers: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        QuantumConfiguration(ciphers=ciphers)
    if ciphers != ("aes-256-gcm", "aes-256-gcm"):
        with pytest.raises(HandshakeError) as info:
            ClientHandshake(CID, VECTOR_CREDENTIALS, ciphers=ciphers)
        assert info.value.code is CloseCode.BAD_REQUEST


# --- credentials and offer codecs: exact errors at every field and bound ----------------------
# Each malformed encoding is rejected with BAD_REQUEST and a message naming the very field that
# is short or out of bounds (the server relays it in a sealed REJECT, PROTOCOL.md 5.2.5), and
# every value exactly at its bound in quantum.limits is accepted.

#: credentials with every optional part, and their fields in wire order with their sizes
_FULL_CREDENTIALS = Credentials("alice", "t", resume=(bytes(range(16)), "tok"),
                                resume_fallback=True, metadata={"k": "v"}, fec=(10, 3),
                                delivered=((0, 0, 7),), carry=True)
_FULL_FIELDS = [("flags", 1), ("user id length", 2), ("user id", 5), ("ticket length", 2),
                ("ticket", 1), ("resume session id", 16), ("resume token length", 1),
                ("resume token", 3), ("fec k", 1), ("fec m", 1), ("delivery mark count", 1),
                ("delivery mark", 6), ("metadata count", 1), ("metadata key length", 1),
                ("metadata key", 1), ("metadata value length", 2), ("metadata value", 1)]


def _field_starts() -> list[tuple[str, int]]:
    starts, at = [], 0
    for name, size in _FULL_FIELDS:
        starts.append((name, at))
        at += size
    return starts


def _dict_size(field_name: str) -> int:
    return dict(_FULL_FIELDS)[field_name]


def test_exact_full_credentials_layout_matches_the_field_table() -> None:
    encoded = encode_credentials(_FULL_CREDENTIALS)
    assert len(encoded) == sum(size for _, size in _FULL_FIELDS)
    assert decode_credentials(encoded) == _FULL_CREDENTIALS


@pytest.mark.parametrize(("field_name", "start"), _field_starts(),
                         ids=[name for name, _ in _FULL_FIELDS])
def test_exact_truncation_names_the_field(field_name: str, start: int) -> None:
    encoded = encode_credentials(_FULL_CREDENTIALS)
    for cut in (start, start + _dict_size(field_name) - 1):
        with pytest.raises(HandshakeError) as info:
            decode_credentials(encoded[:cut])
        assert info.value.code is CloseCode.BAD_REQUEST
        assert info.value.message == f"credentials: truncated in {field_name}"


def _creds(flags: int, user: bytes = b"a", *, ticket: bytes | None = None,
           token: bytes | None = None, metadata: list[tuple[bytes, bytes]] | None = None,
           user_len: int | None = None, ticket_len: int | None = None,
           token_len: int | None = None, count: int | None = None,
           key_len: int | None = None, value_len: int | None = None) -> bytes:
    """A credentials encoding built by hand, so that a length can disagree with its bounds
    (encode_credentials refuses to produce such bytes)."""
    out = bytes((flags,)) + struct.pack(">H", len(user) if user_len is None else user_len) + user
    if ticket is not None:
        out += struct.pack(">H", len(ticket) if ticket_len is None else ticket_len) + ticket
    if token is not None:
        out += bytes(16) + bytes((len(token) if token_len is None else token_len,)) + token
    entries = metadata or []
    out += bytes((len(entries) if count is None else count,))
    for key, value in entries:
        out += bytes((len(key) if key_len is None else key_len,)) + key
        out += struct.pack(">H", len(value) if value_len is None else value_len) + value
    return out


_64_ENTRIES = [(b"k%02d" % i, b"") for i in range(64)]

_MALFORMED_EXACT = [
    (b"\x80" + encode_credentials(Credentials("a"))[1:], "unknown flag bits 0x80"),
    (b"\xc8" + encode_credentials(Credentials("a"))[1:], "unknown flag bits 0xc0"),
    (_creds(0, b"", user_len=0), "user id length 0 outside 1..256"),
    (_creds(0, b"u" * 257), "user id length 257 outside 1..256"),
    (_creds(0, b"\xff"), "user id is not valid UTF-8"),
    (_creds(1, ticket=b"t" * 1201), "ticket length 1201 above 1200"),
    (_creds(1, ticket=b"\xc3"), "ticket is not valid UTF-8"),
    (_creds(2, token=b"", token_len=0), "resume token length 0 outside 1..64"),
    (_creds(2, token=b"t" * 65), "resume token length 65 outside 1..64"),
    (_creds(2, token=b"\x80"), "resume token is not valid UTF-8"),
    (_creds(0, metadata=[*_64_ENTRIES, (b"x", b"")]), "65 metadata entries, at most 64"),
    (_creds(0, count=255), "255 metadata entries, at most 64"),
    (_creds(0, metadata=[(b"", b"v")], key_len=0), "metadata key length 0 outside 1..128"),
    (_creds(0, metadata=[(b"k" * 129, b"v")]), "metadata key length 129 outside 1..128"),
    (_creds(0, metadata=[(b"\xfe", b"v")]), "metadata key is not valid UTF-8"),
    (_creds(0, metadata=[(b"k", b"v" * 1025)]), "metadata value length 1025 above 1024"),
    (_creds(0, metadata=[(b"k", b"\xed\xa0\x80")]), "metadata value is not valid UTF-8"),
    (encode_credentials(Credentials("a", fec=None)) + b"\x00", "1 unexpected trailing bytes"),
    (encode_credentials(Credentials("a", fec=None)) + b"\x00\x00\x00",
     "3 unexpected trailing bytes"),
    (b"\x08\x00\x01a\x00\x03\x00", "FEC k must be between 1 and 16 data packets, got 0"),
    (b"\x08\x00\x01a\x0a\x11\x00", "FEC m must be between 1 and 16 parity packets, got 17"),
]


@pytest.mark.parametrize(("data", "message"), _MALFORMED_EXACT,
                         ids=[message for _, message in _MALFORMED_EXACT])
def test_exact_malformed_credentials_message(data: bytes, message: str) -> None:
    with pytest.raises(HandshakeError) as info:
        decode_credentials(data)
    assert info.value.code is CloseCode.BAD_REQUEST
    assert info.value.message == f"credentials: {message}"
    assert str(info.value) == f"BAD_REQUEST: credentials: {message}"


_AT_BOUNDS = [
    (_creds(0, b"u" * 256), Credentials("u" * 256, fec=None)),
    (_creds(1, ticket=b"t" * 1200), Credentials("a", "t" * 1200, fec=None)),
    (_creds(1, ticket=b""), Credentials("a", "", fec=None)),
    (_creds(2, token=b"t" * 64), Credentials("a", resume=(bytes(16), "t" * 64), fec=None)),
    (_creds(2, token=b"t"), Credentials("a", resume=(bytes(16), "t"), fec=None)),
    (_creds(0, metadata=_64_ENTRIES),
     Credentials("a", metadata={k.decode(): "" for k, _ in _64_ENTRIES}, fec=None)),
    (_creds(0, metadata=[(b"k" * 128, b"")]), Credentials("a", metadata={"k" * 128: ""},
                                                            fec=None)),
    (_creds(0, metadata=[(b"k", b"v" * 1024)]), Credentials("a", metadata={"k": "v" * 1024},
                                                              fec=None)),
]


@pytest.mark.parametrize(("data", "credentials"), _AT_BOUNDS,
                         ids=["user-256", "ticket-1200", "ticket-0", "token-64", "token-1",
                              "64-entries", "key-128", "value-1024"])
def test_exact_values_at_each_bound_are_accepted(data: bytes, credentials: Credentials) -> None:
    assert decode_credentials(data) == credentials


@pytest.mark.parametrize(("credentials", "message"), [
    (Credentials("\ud800"), "user id is not valid UTF-8 text (a lone surrogate)"),
    (Credentials("u" * 257), "user id is 257 bytes of UTF-8, allowed 1..256"),
    (Credentials("a", ticket=5), "ticket must be a string"),  # type: ignore[arg-type]
    (Credentials("a", ticket="t" * 1201), "ticket is 1201 bytes of UTF-8, allowed 0..1200"),
    (Credentials("a", resume=(bytes(16), "")), "resume token is 0 bytes of UTF-8, allowed 1..64"),
    (Credentials("a", resume=(bytes(16), "t" * 65)),
     "resume token is 65 bytes of UTF-8, allowed 1..64"),
    (Credentials("a", resume=(bytes(16), "\udfff")),
     "resume token is not valid UTF-8 text (a lone surrogate)"),
    (Credentials("a", fec=(0, 3)), "credentials: FEC k must be between 1 and 16 data packets, "
                                   "got 0"),
])
def test_exact_unencodable_credentials_message(credentials: Credentials, message: str) -> None:
    with pytest.raises(HandshakeError) as info:
        encode_credentials(credentials)
    assert info.value.code is CloseCode.BAD_REQUEST
    assert info.value.message == message


def test_exact_encoder_accepts_each_text_bound() -> None:
    at_bounds = Credentials("u" * 256, ticket="", resume=(bytes(16), "t" * 64),
                            metadata={"k" * 128: ""}, fec=None)
    assert decode_credentials(encode_credentials(at_bounds)) == at_bounds


def test_exact_offer_bounds_and_messages() -> None:
    assert encode_offer(("aes-256-gcm",)) == bytes((1, CIPHER_IDS["aes-256-gcm"]))
    eight = encode_offer(("chacha20-poly1305",) * 8)
    assert eight == bytes((8,)) + bytes((CIPHER_IDS["chacha20-poly1305"],)) * 8
    for ciphers, message in [((), "offer 1..8 ciphers, got 0"),
                             (("aes-256-gcm",) * 9, "offer 1..8 ciphers, got 9"),
                             (("aes-256-gcm", "rot13"), "unknown cipher 'rot13'")]:
        with pytest.raises(ValueError) as info:
            encode_offer(ciphers)
        assert str(info.value) == message


def test_exact_credentials_fill_the_handshake_packet_and_one_byte_more_is_refused() -> None:
    """The encoder takes credentials that encode to exactly MAX_CREDENTIALS bytes (all the
    ClientFinish has room for) and refuses one byte more, saying how many and what to do."""
    def with_padding(m: int) -> Credentials:
        return Credentials("alice", fec=None, metadata={"k": "x" * 1024, "j": "y" * m})
    room = MAX_CREDENTIALS - len(encode_credentials(with_padding(0)))
    assert 0 < room <= 1024
    assert len(encode_credentials(with_padding(room))) == MAX_CREDENTIALS
    with pytest.raises(HandshakeError) as info:
        encode_credentials(with_padding(room + 1))
    assert info.value.code == CloseCode.BAD_REQUEST
    assert info.value.message == (
        f"credentials encode to {MAX_CREDENTIALS + 1} bytes; at most {MAX_CREDENTIALS} fit "
        "in the handshake packet (shorten the metadata)")


def test_exact_encoder_takes_the_most_metadata_entries_and_refuses_one_more() -> None:
    most = {f"k{i}": "" for i in range(MAX_METADATA_ENTRIES)}
    assert decode_credentials(encode_credentials(Credentials("a", metadata=most))).metadata == most
    with pytest.raises(HandshakeError) as info:
        encode_credentials(Credentials("a", metadata={**most, "one-more": ""}))
    assert info.value.code == CloseCode.BAD_REQUEST
    assert info.value.message == (f"{MAX_METADATA_ENTRIES + 1} metadata entries, "
                                  f"at most {MAX_METADATA_ENTRIES}")
