"""The handshake: test vectors, pinning, cookies, retry, credentials codec, fuzzing."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum.errors import CloseCode
from quantum.handshake import (
    HELLO_SIZE,
    MAX_METADATA_ENTRIES,
    RETRY_COOKIE_SIZE,
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
    key_schedule,
)
from quantum.keys import fingerprint
from quantum.limits import MAX_FEC_K, MAX_FEC_M


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
V_HELLO_SHA256 = "62a7cd12ce9b6a11614ef487a8de45323c915671b7ab845c9b1d838569b84c8c"
V_SYN_ACK = (
    "dfa012388158f9a2c85fa8804125eb0b874c9667e1c62b4fdde54188ecac2c4d"
    "f5891566af36149b269a72b62f3cb780dc2c54039950d39da73200b4bdaf0962"
    "643c57d6621d05c2483a3e53475a21b63b670b0b5d01e712fef22934092363da"
    "63d8c17117f62d54023cb385b5b1b5e932199f5c143de91265383bce61a52796"
    "16d3c78d52f290beca86980331c28f94333bea208262f01aa5a3a0b875fc5848"
    "737970e28930b5c868da78e22457bb"
)
V_ACK = (
    "9510d6fb656e12ecb7fe02c013e546115ab650bcbb291e41da4b91cd4d6fe172"
    "643c57d6621d05c2483a3e53475a21b63b670b0b5d01e712fef22934092363da"
    "63d8c17117f62d54023cb385b5b1b5e932199f5c143de91265383bce61a52796"
    "16d3c78d52f290beca86980331c28f94333bea2082345e22a4a66a747bfcaea3"
    "234bc8edb23ad8398f9865d9e26c0fbf4f37512684cea2800c2a51e167d8dbff"
    "7af6673965"
)
V_TRANSCRIPT = "98992bebe7fe9d176b1548cf4068f1e68a8ac14051a1b6565b1dc9e1d3c3fd11"
V_CONFIRM_KEY = "e5d1057d854d581fa37898a5a3967a830f3eeafd41a1df77bbb562a8113e3d17"
V_FINISH_KEY = "b5899b5bca6c608abb8ea2a5b19b7047ca706100d806f8137990d9252750c146"
V_CLIENT_KEY = "9de24ccfc7b6da36b3e2a1cfd7e15a7d85f71fc263b701ee74e907105a9568ed"
V_CLIENT_IV = "3ea75af903fcd7fa57b879cf"
V_SERVER_KEY = "55c1f44c33fede84d159a541b7090c96fc2a6da96883a2d50700a49e6ebf1c15"
V_SERVER_IV = "62211deb2cb2bef228d34afa"
V_HEADER = "51554e540202000102030405060708090a0b0c0d0e0f00000001000000000005"
V_SEALED_HELLO = "638e95ae680c5e4415a1e954046587f73c2be8dcb6"  # b"hello", pn 1, client -> server
V_RETRY = "000000106b9878a5a78a70d5f8b03e1781bac42aad7ed65ae367d11f2da8f12b3aa9c781"


def _vector_server() -> ServerHandshake:
    return ServerHandshake(STATIC, PARAMS, random=_Random())


def test_vectors() -> None:
    server = _vector_server()
    assert server.static_public.hex() == V_STATIC_PUBLIC
    assert server.fingerprint == V_FINGERPRINT == fingerprint(server.static_public)
    client = ClientHandshake(CID, VECTOR_CREDENTIALS, server_key=V_FINGERPRINT,
                             ephemeral_private=CLIENT_EPHEMERAL)
    hello = client.client_hello()
    assert len(hello) == HELLO_SIZE == 1168
    assert hello[:32].hex() == V_CLIENT_PUBLIC and hello[32:] == bytes(HELLO_SIZE - 32)
    assert hashlib.sha256(hello).hexdigest() == V_HELLO_SHA256
    syn_ack = server.on_client_hello(CID, hello, ADDR, NOW, ephemeral_private=SERVER_EPHEMERAL)
    assert syn_ack.hex() == V_SYN_ACK
    assert client.on_server_hello(syn_ack) == PARAMS
    assert client.client_finish().hex() == V_ACK
    keys, credentials, params = server.on_client_finish(CID, client.client_finish(), ADDR,
                                                         NOW + 0.5)
    assert credentials == VECTOR_CREDENTIALS and params == PARAMS

    ephemeral = X25519PrivateKey.from_private_bytes(CLIENT_EPHEMERAL)
    ee = ephemeral.exchange(X25519PublicKey.from_public_bytes(syn_ack[:32]))
    es = ephemeral.exchange(X25519PublicKey.from_public_bytes(server.static_public))
    schedule = key_schedule(CID, client.client_public, syn_ack[:32], server.static_public,
                            ee, es)
    assert schedule.transcript.hex() == V_TRANSCRIPT
    assert schedule.confirm_key.hex() == V_CONFIRM_KEY
    assert schedule.finish_key.hex() == V_FINISH_KEY
    assert (schedule.client_key.hex(), schedule.client_iv.hex()) == (V_CLIENT_KEY, V_CLIENT_IV)
    assert (schedule.server_key.hex(), schedule.server_iv.hex()) == (V_SERVER_KEY, V_SERVER_IV)

    header = bytes.fromhex(V_HEADER)
    assert client.keys is not None
    sealed = client.keys.send.seal(1, header, b"hello")
    assert sealed.hex() == V_SEALED_HELLO
    assert keys.recv.open(1, header, sealed) == b"hello"
    assert server.make_retry(CID, ADDR, NOW).hex() == V_RETRY


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


def test_cookie_bound_to_connection_id_and_client_key() -> None:
    server, payload = _finish_payload()
    other_key = ClientHandshake(CID, VECTOR_CREDENTIALS).client_public
    for error in (_finish_error(server, payload, cid=bytes(16)),
                  _finish_error(server, other_key + payload[32:])):
        assert error.code is CloseCode.PROTOCOL_VIOLATION
        assert "does not authenticate" in error.message


@given(st.data())
@settings(max_examples=60)
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
    bad_length = hello[:34] + b"\x05" + hello[35:]
    with pytest.raises(HandshakeError, match="retry cookie length 5"):
        server.needs_retry(bad_length, CID, ADDR, NOW)


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
)


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
@settings(max_examples=150)
def test_fuzz_server_inputs(data: bytes) -> None:
    server = ServerHandshake(STATIC, PARAMS)
    for call in (
        lambda: server.on_client_hello(CID, data, ADDR, NOW),
        lambda: server.needs_retry(data, CID, ADDR, NOW),
        lambda: server.on_client_finish(CID, data, ADDR, NOW),
        lambda: decode_credentials(data),
    ):
        with contextlib.suppress(HandshakeError):
            call()


@given(st.binary(max_size=400))
@settings(max_examples=150)
def test_fuzz_client_inputs(data: bytes) -> None:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    for call in (lambda: client.on_server_hello(data), lambda: client.on_retry(data)):
        with contextlib.suppress(HandshakeError):
            call()


@given(st.binary(min_size=SERVER_HELLO_SIZE, max_size=SERVER_HELLO_SIZE))
@settings(max_examples=100)
def test_fuzz_client_full_size_server_hello(data: bytes) -> None:
    client = ClientHandshake(CID, VECTOR_CREDENTIALS)
    with pytest.raises(HandshakeError):
        client.on_server_hello(data)


@given(st.binary(min_size=35, max_size=80))
@settings(max_examples=100)
def test_fuzz_hello_structure(prefix: bytes) -> None:
    """Well-padded hellos with arbitrary fields: a SYN-ACK or a HandshakeError, nothing else."""
    hello = prefix + bytes(HELLO_SIZE - len(prefix))
    server = ServerHandshake(STATIC, PARAMS)
    try:
        assert len(server.on_client_hello(CID, hello, ADDR, NOW)) == SERVER_HELLO_SIZE
        server.needs_retry(hello, CID, ADDR, NOW)
    except HandshakeError:
        pass
