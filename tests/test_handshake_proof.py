"""The handshake's rotating secrets keep their promises at every instant of an epoch.

A server cookie (the state the stateless server hands the client between SYN-ACK and ACK) is
valid for `cookie_lifetime` seconds from the moment it was issued, wherever in its key's epoch
that moment falls; a retry cookie for at least one `retry_rotation` period. Once expired or
rotated out, neither opens. A secret that rotated faster than its period (say, every second
period), or forgot its predecessor at a rotation, fails these properties for cookies issued
just before a rotation.

It also holds the edges of the parsers and constructors: a ClientHello's size, offer and padding
bounds, the pinned server key's and fingerprint's accepted forms, the handshakes' argument checks
and initial state, with their exact close codes and messages.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from quantum.crypto import TAG_SIZE
from quantum.errors import CloseCode
from quantum.handshake import (
    _FINISH_PREFIX,
    HELLO_SIZE,
    MAX_CREDENTIAL_MARKS,
    MAX_FINISH_PAYLOAD,
    MAX_HANDSHAKE_PAYLOAD,
    MAX_OFFER,
    MAX_PARAM_MS,
    SERVER_COOKIE_SIZE,
    ClientHandshake,
    Credentials,
    CredentialsRefused,
    HandshakeError,
    ServerHandshake,
    ServerParams,
    _split_finish,
    decode_credentials,
    decode_params,
    encode_credentials,
    encode_hello,
)

CID = bytes(range(16))
ADDR = ("192.0.2.1", 4433)
STATIC = bytes(range(1, 33))
PARAMS = ServerParams(None, 10.0, 60.0)
LIFETIME = 10.0
ROTATION = 60.0

#: an issue time anywhere in an epoch, including its last instants
issue_times = st.floats(1000.0, 1000.0 + 5 * ROTATION, allow_nan=False)


def finish_issued_at(server: ServerHandshake, issued: float) -> bytes:
    client = ClientHandshake(CID, Credentials("alice"))
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, issued))
    return client.client_finish()


def retried_hello_at(server: ServerHandshake, issued: float) -> bytes:
    client = ClientHandshake(CID, Credentials("alice"))
    client.on_retry(server.make_retry(CID, ADDR, issued))
    return client.client_hello()


@given(issued=issue_times, age=st.floats(0.0, 1.0))
@example(issued=1009.999, age=1.0)  # issued just before its key's epoch ends, used at the end
@example(issued=1010.0, age=1.0)  # issued at the first instant of an epoch
def test_a_server_cookie_opens_for_its_whole_lifetime(issued: float, age: float) -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, issued)
    used = issued + age * LIFETIME
    assert server.finish_cookie_valid(CID, finish, ADDR, used)
    _keys, credentials, _ = server.on_client_finish(CID, finish, ADDR, used)
    assert credentials.user_id == "alice"


@given(issued=issue_times, late=st.floats(1e-3, 3 * LIFETIME))
@example(issued=1009.999, late=1e-3)
def test_a_server_cookie_never_opens_after_its_lifetime(issued: float, late: float) -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, issued)
    used = issued + LIFETIME + late
    assert not server.finish_cookie_valid(CID, finish, ADDR, used)
    with pytest.raises(HandshakeError) as info:
        server.on_client_finish(CID, finish, ADDR, used)
    assert info.value.code is CloseCode.HANDSHAKE_TIMEOUT


def test_a_server_cookie_from_the_future_is_refused() -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, 1005.0)
    assert not server.finish_cookie_valid(CID, finish, ADDR, 1004.9)  # the clock went back


@given(issued=issue_times, age=st.floats(0.0, 0.999999))
@example(issued=1019.999, age=0.999999)  # epochs of 60 s: 1019.999 is just before one ends
@example(issued=1020.0, age=0.0)
def test_a_retry_cookie_is_honoured_for_at_least_one_rotation_period(issued: float,
                                                                     age: float) -> None:
    server = ServerHandshake(STATIC, PARAMS, retry_rotation=ROTATION)
    hello = retried_hello_at(server, issued)
    assert not server.needs_retry(hello, CID, ADDR, issued + age * ROTATION)


@given(issued=issue_times, late=st.floats(0.0, 5 * ROTATION))
def test_a_retry_cookie_is_never_honoured_two_periods_on(issued: float, late: float) -> None:
    server = ServerHandshake(STATIC, PARAMS, retry_rotation=ROTATION)
    hello = retried_hello_at(server, issued)
    assert server.needs_retry(hello, CID, ADDR, issued + 2 * ROTATION + late)


def test_a_secret_unused_for_a_whole_epoch_is_forgotten_not_kept_as_previous() -> None:
    """The previous secret is kept only if it belongs to the epoch just before the current one:
    a server quiet for longer does not keep honouring a cookie from two epochs ago."""
    server = ServerHandshake(STATIC, PARAMS, retry_rotation=ROTATION)
    hello = retried_hello_at(server, 1020.0)  # epoch 17
    assert server.needs_retry(hello, CID, ADDR, 1020.0 + 2 * ROTATION)  # epoch 19: gone
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, 1000.0)
    with pytest.raises(HandshakeError, match="rotated out"):
        server.on_client_finish(CID, finish, ADDR, 1025.0)


def test_rotating_secrets_are_fresh_random_bytes_each_epoch() -> None:
    drawn: list[int] = []

    def random(size: int) -> bytes:
        drawn.append(size)
        return bytes([len(drawn)]) * size

    server = ServerHandshake(STATIC, PARAMS, retry_rotation=ROTATION, random=random)
    first = server.make_retry(CID, ADDR, 1000.0)
    assert server.make_retry(CID, ADDR, 1010.0) == first  # same epoch: same secret
    assert drawn == [32]
    second = server.make_retry(CID, ADDR, 1030.0)  # the next epoch (1020 .. 1080)
    assert second != first and drawn == [32, 32]
    with pytest.raises(ValueError, match="positive"):
        ServerHandshake(STATIC, PARAMS, cookie_lifetime=0.0)
    with pytest.raises(ValueError, match="positive"):
        ServerHandshake(STATIC, PARAMS, retry_rotation=-1.0)


# -- the finish's cookie, opened once


def test_an_opened_cookie_finishes_the_handshake_it_came_from_only() -> None:
    """`open_finish_cookie` hands its result to `on_client_finish`, which then does not open
    the cookie again; a cookie opened for another connection's finish does not authenticate
    this one's credentials (they are sealed under that handshake's transcript)."""
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, 1000.0)
    other_cid = bytes(range(1, 17))
    other_client = ClientHandshake(other_cid, Credentials("bob"))
    other_client.on_server_hello(server.on_client_hello(other_cid, other_client.client_hello(),
                                                        ADDR, 1000.0))
    other = server.open_finish_cookie(other_cid, other_client.client_finish(), ADDR, 1000.5)
    opened = server.open_finish_cookie(CID, finish, ADDR, 1000.5)
    assert opened is not None and other is not None
    assert repr(opened) == "OpenedCookie(<secret>)"
    _keys, credentials, _ = server.on_client_finish(CID, finish, ADDR, 1000.5, opened)
    assert credentials.user_id == "alice"
    with pytest.raises(HandshakeError, match="credentials do not authenticate"):
        server.on_client_finish(CID, finish, ADDR, 1000.5, other)


@pytest.mark.parametrize("damage", ["expired", "other address", "short", "other id"])
def test_a_cookie_that_does_not_open_gives_none(damage: str) -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, 1000.0)
    cid, addr, used = CID, ADDR, 1000.5
    if damage == "expired":
        used = 1000.0 + LIFETIME + 0.1
    elif damage == "other address":
        addr = ("192.0.2.2", 4433)
    elif damage == "short":
        finish = finish[:20]
    else:
        cid = bytes(16)
    assert server.open_finish_cookie(cid, finish, addr, used) is None
    assert not server.finish_cookie_valid(cid, finish, addr, used)


def test_the_cookie_cipher_is_built_once_per_key_and_dropped_with_it() -> None:
    """The cookie key's AES-GCM object is kept while its key is current or previous, so a
    handshake does not build one; once the key rotates out, its object goes too (a secret
    that rotated out must be unrecoverable, docs/PROTOCOL.md 4.4)."""
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    keys = server._cookie_keys
    _, first = keys.current(1000.0)
    assert keys.cipher(first) is keys.cipher(first)
    finish_issued_at(server, 1001.0)
    finish_issued_at(server, 1002.0)
    assert len(keys._ciphers) == 1
    _, second = keys.current(1000.0 + LIFETIME)  # the next epoch: the first is previous
    keys.cipher(second)
    assert [key for key, _ in keys._ciphers] == [first, second]
    _, third = keys.current(1000.0 + 2 * LIFETIME)  # the first rotated out
    keys.cipher(third)
    assert [key for key, _ in keys._ciphers] == [second, third]


# -- what the server says of authentic but unacceptable credentials, and what a repr shows


def test_authentic_malformed_credentials_are_refused_with_the_keys_to_say_so() -> None:
    """A finish whose credentials authenticate but do not parse (a user id of length 0) is
    `CredentialsRefused`: BAD_REQUEST, the field named, and the handshake's keys and the
    server's parameters with it, so the server can answer with a sealed REJECT."""
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    client = ClientHandshake(CID, Credentials("alice"))
    client._credentials_plain = bytearray(b"\x00\x00\x00")  # flags, user id length 0
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, 1000.0))
    with pytest.raises(CredentialsRefused) as info:
        server.on_client_finish(CID, client.client_finish(), ADDR, 1000.5)
    refused = info.value
    assert refused.code is CloseCode.BAD_REQUEST
    assert "user id length 0" in refused.message
    assert refused.params is server.params
    sealed = refused.keys.send.seal(1, b"header", b"rejected")  # the client can open it
    assert client.keys is not None
    assert client.keys.recv.open(1, b"header", sealed) == b"rejected"


def test_a_credentials_repr_names_every_field_and_hides_the_secrets() -> None:
    credentials = Credentials("alice", "ticket-secret", (bytes(range(16)), "token-secret"),
                              True, {"room": "lobby"}, (10, 3), ((0, 0, 7),), True)
    assert repr(credentials) == (
        "Credentials(user_id='alice', ticket=<hidden>, resume=('000102030405060708090a0b0c0d0e0f',"
        " '<hidden>'), resume_fallback=True, metadata={'room': 'lobby'}, fec=(10, 3), "
        "delivered=((0, 0, 7),), carry=True)")
    assert repr(Credentials("bob")) == (
        "Credentials(user_id='bob', ticket=None, resume=None, resume_fallback=False, "
        "metadata={}, fec=(10, 3), delivered=None, carry=False)")  # FEC asked for by default


def test_clear_forgets_the_keys_the_finish_and_every_secret() -> None:
    """Once established the connection clears its handshake: nothing secret is left to
    leak, and a finish cannot be produced again from it."""
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    client = ClientHandshake(CID, Credentials("alice", "ticket-secret"))
    client.on_retry(server.make_retry(CID, ADDR, 1000.0))
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, 1000.0))
    assert client.keys is not None and client.client_finish()
    client.clear()
    assert client.keys is None
    assert client._ephemeral is None and client._credentials_plain is None
    assert client._retry_cookie is None
    with pytest.raises(HandshakeError) as info:
        client.client_finish()
    assert info.value.code is CloseCode.INTERNAL_ERROR
    assert info.value.message == "client_finish() before a server hello was accepted"


def test_delivery_marks_encode_at_their_bounds_and_not_past_them() -> None:
    """At most MAX_CREDENTIAL_MARKS marks, channels 0..255, marks 0..2^32-1 (PROTOCOL.md
    4.3): the last valid value of each encodes and decodes, the first invalid one is refused
    before anything is sent."""
    full = tuple((channel, channel % 2, 0xFFFFFFFF) for channel in range(MAX_CREDENTIAL_MARKS))
    full = ((255, 1, 0xFFFFFFFF), *full[1:])
    decoded = decode_credentials(encode_credentials(Credentials("alice", delivered=full)))
    assert decoded.delivered == full
    for bad in ((*full, (7, 0, 1)),  # one mark too many
                ((256, 0, 1),),  # no channel 256
                ((0, 2, 1),),  # only the reliable modes
                ((0, 0, 0x100000000),)):  # a mark is 32 bits
        with pytest.raises(HandshakeError) as info:
            encode_credentials(Credentials("alice", delivered=bad))
        assert info.value.code is CloseCode.BAD_REQUEST


# -- what each refusal says (the reason reaches logs and, for the client, its error)


def _finish_for(server: ServerHandshake, cid: bytes = CID) -> bytes:
    client = ClientHandshake(cid, Credentials("alice"))
    client.on_server_hello(server.on_client_hello(cid, client.client_hello(), ADDR, 1000.0))
    return client.client_finish()


@pytest.mark.parametrize(("case", "code", "message"), [
    ("rotated out", CloseCode.HANDSHAKE_TIMEOUT,
     "server cookie expired (its key has rotated out)"),
    ("too old", CloseCode.HANDSHAKE_TIMEOUT,
     "server cookie expired (10.5 s old, lifetime 10.0 s)"),
    ("tampered", CloseCode.PROTOCOL_VIOLATION,
     "server cookie does not authenticate (tampered, or issued for another connection id)"),
    ("another address", CloseCode.PROTOCOL_VIOLATION,
     "server cookie was issued to another address"),
])
def test_a_cookie_that_does_not_open_says_exactly_why(case: str, code: CloseCode,
                                                        message: str) -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish, addr, used = _finish_for(server), ADDR, 1000.5
    if case == "rotated out":
        used = 1000.0 + 3 * LIFETIME
    elif case == "too old":
        used = 1010.5  # the key (epoch 1000-1010) is still the previous one: the age decides
    elif case == "tampered":
        damaged = bytearray(finish)
        damaged[40] ^= 1  # inside the sealed cookie
        finish = bytes(damaged)
    else:
        addr = ("192.0.2.99", 4433)
    with pytest.raises(HandshakeError) as info:
        server.on_client_finish(CID, finish, addr, used)
    assert (info.value.code, info.value.message) == (code, message)


@pytest.mark.parametrize(("params", "message"), [
    (bytes(9), "server parameters are 9 bytes, expected 10"),
    (bytes(11), "server parameters are 11 bytes, expected 10"),
])
def test_server_parameters_of_the_wrong_size_are_a_protocol_violation(
        params: bytes, message: str) -> None:
    with pytest.raises(HandshakeError) as info:
        decode_params(params)
    assert (info.value.code, info.value.message) == (CloseCode.PROTOCOL_VIOLATION, message)


def test_server_parameters_out_of_bounds_are_a_protocol_violation_naming_them() -> None:
    keepalive_of_zero = bytes((10, 3)) + (0).to_bytes(4, "big") + (60_000).to_bytes(4, "big")
    with pytest.raises(HandshakeError) as info:
        decode_params(keepalive_of_zero)
    assert info.value.code is CloseCode.PROTOCOL_VIOLATION
    assert info.value.message.startswith("server parameters: ")
    assert len(info.value.message) > len("server parameters: ")


@pytest.mark.parametrize(("seconds", "ok"), [
    (0.001, True),  # 1 ms, the least
    (0.0004, False),  # rounds to 0 ms
    (MAX_PARAM_MS / 1000, True),  # the most a u32 of milliseconds holds
    ((MAX_PARAM_MS + 1) / 1000, False),
])
def test_server_parameters_hold_1_ms_to_a_u32_of_milliseconds(seconds: float, ok: bool) -> None:
    if ok:
        assert ServerParams(None, seconds, seconds).keepalive_interval == seconds
        return
    with pytest.raises(ValueError) as info:
        ServerParams(None, seconds, 60.0)
    assert str(info.value) == (f"keepalive_interval must be between 1 ms and {MAX_PARAM_MS} ms, "
                               f"got {seconds}")


def test_a_finish_of_every_size_the_bounds_allow_splits_and_no_other() -> None:
    """The ClientFinish payload: cookie length, cookie, sealed credentials of at least a
    tag; at most MAX_FINISH_PAYLOAD bytes."""
    head = SERVER_COOKIE_SIZE.to_bytes(2, "big") + bytes(SERVER_COOKIE_SIZE)
    least, most = _FINISH_PREFIX + TAG_SIZE, MAX_FINISH_PAYLOAD
    for size in (least, most):
        cookie, sealed = _split_finish(head + bytes(size - len(head)))
        assert len(cookie) == SERVER_COOKIE_SIZE and len(sealed) == size - _FINISH_PREFIX
    for size in (least - 1, most + 1):
        with pytest.raises(HandshakeError) as info:
            _split_finish(head + bytes(size - len(head)))
        assert (info.value.code, info.value.message) == (
            CloseCode.PROTOCOL_VIOLATION,
            f"client finish is {size} bytes, expected {least}..{most}")
    wrong = (SERVER_COOKIE_SIZE - 1).to_bytes(2, "big") + bytes(least)
    with pytest.raises(HandshakeError) as info:
        _split_finish(wrong)
    assert info.value.message == (f"client finish echoes a {SERVER_COOKIE_SIZE - 1}-byte "
                                  f"cookie, expected {SERVER_COOKIE_SIZE}")


def test_a_second_server_hello_and_a_short_one_say_what_they_are() -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    client = ClientHandshake(CID, Credentials("alice"))
    hello = server.on_client_hello(CID, client.client_hello(), ADDR, 1000.0)
    short = ClientHandshake(CID, Credentials("alice"))
    with pytest.raises(HandshakeError) as info:
        short.on_server_hello(hello[:20])
    assert (info.value.code, info.value.message) == (
        CloseCode.PROTOCOL_VIOLATION, "server hello: truncated in server ephemeral key")
    client.on_server_hello(hello)
    with pytest.raises(HandshakeError) as info:
        client.on_server_hello(hello)
    assert (info.value.code, info.value.message) == (CloseCode.PROTOCOL_VIOLATION,
                                                     "second server hello")


def _server_hello() -> tuple[ServerHandshake, bytes]:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    client = ClientHandshake(CID, Credentials("alice"))
    return server, server.on_client_hello(CID, client.client_hello(), ADDR, 1000.0)


@pytest.mark.parametrize(("cut", "field"), [
    (20, "server ephemeral key"), (40, "server static key"), (64, "cipher"),
    (66, "cookie length"), (67 + 5, "cookie"), (67 + SERVER_COOKIE_SIZE + 3, "confirmation"),
])
def test_a_truncated_server_hello_names_the_field_it_ends_in(cut: int, field: str) -> None:
    _, hello = _server_hello()
    with pytest.raises(HandshakeError) as info:
        ClientHandshake(CID, Credentials("alice")).on_server_hello(hello[:cut])
    assert (info.value.code, info.value.message) == (CloseCode.PROTOCOL_VIOLATION,
                                                     f"server hello: truncated in {field}")


@pytest.mark.parametrize(("at", "code", "message"), [
    (0, CloseCode.PROTOCOL_VIOLATION, "server ephemeral key is a low-order point"),
    (32, CloseCode.BAD_SERVER_KEY, "server static key is a low-order point"),
])
def test_a_low_order_key_in_the_server_hello_is_refused_naming_it(
        at: int, code: CloseCode, message: str) -> None:
    _, hello = _server_hello()
    damaged = hello[:at] + bytes(32) + hello[at + 32:]  # the all-zero point
    with pytest.raises(HandshakeError) as info:
        ClientHandshake(CID, Credentials("alice")).on_server_hello(damaged)
    assert (info.value.code, info.value.message) == (code, message)


def test_a_server_hello_whose_proof_fails_names_the_key_it_claimed() -> None:
    server, hello = _server_hello()
    damaged = hello[:-1] + bytes((hello[-1] ^ 1,))  # the confirmation's tag
    with pytest.raises(HandshakeError) as info:
        ClientHandshake(CID, Credentials("alice")).on_server_hello(damaged)
    assert (info.value.code, info.value.message) == (
        CloseCode.BAD_SERVER_KEY,
        f"server did not prove it holds the private key of {server.fingerprint} "
        "(or the cipher negotiation was tampered with)")


def test_a_server_given_its_randomness_answers_a_hello_deterministically() -> None:
    """The ephemeral key comes from the server's `random` (as the cookie's nonce does), so a
    server built with a fixed source answers the same hello with the same bytes: what the
    spec's vectors rely on."""
    def fixed(n: int) -> bytes:
        return bytes(range(n))

    hello = ClientHandshake(CID, Credentials("alice"), ephemeral_private=bytes(range(1, 33))
                            ).client_hello()
    answers = {ServerHandshake(STATIC, PARAMS, random=fixed).on_client_hello(
        CID, hello, ADDR, 1000.0) for _ in range(2)}
    assert len(answers) == 1


def test_an_offer_with_no_cipher_of_ours_is_refused_saying_so() -> None:
    server = ServerHandshake(STATIC, PARAMS, ciphers=("aes-256-gcm",))
    hello = ClientHandshake(CID, Credentials("alice"), ciphers=("chacha20-poly1305",)
                            ).client_hello()
    with pytest.raises(HandshakeError) as info:
        server.on_client_hello(CID, hello, ADDR, 1000.0)
    assert (info.value.code, info.value.message) == (
        CloseCode.CIPHER_NOT_SUPPORTED, "none of the offered ciphers is enabled on this server")


def test_an_ephemeral_key_of_the_wrong_size_is_refused_naming_it() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    hello = ClientHandshake(CID, Credentials("alice")).client_hello()
    with pytest.raises(HandshakeError) as info:
        server.on_client_hello(CID, hello, ADDR, 1000.0, ephemeral_private=bytes(31))
    assert (info.value.code, info.value.message) == (
        CloseCode.INTERNAL_ERROR, "server ephemeral private key must be 32 bytes, got 31")


# ------------------------------------------------------------ parser and constructor edges
#
# The exact bounds, close codes and messages of the ClientHello parser, the pinned server key
# parser and the two handshakes' constructors.

#: a static private key whose public key's base64 holds both "+" and "/" (so its URL-safe form
#: holds "-" and "_"); the test that uses it checks that it still does
PIN_STATIC = bytes([4]) * 32


def refusal(call: Callable[[], object]) -> tuple[CloseCode, str]:
    with pytest.raises(HandshakeError) as info:
        call()
    return info.value.code, info.value.message


def pin_refusal(pin: bytes | str) -> tuple[CloseCode, str]:
    return refusal(lambda: ClientHandshake(CID, Credentials("alice"), server_key=pin))


def hello_of(size: int, offer: bytes = b"\x02\x01\x02") -> bytes:
    """A hello from a real client key with this offer, zero-padded (or cut) to `size` bytes."""
    public = ClientHandshake(CID, Credentials("alice")).client_public
    hello = encode_hello(public, None, offer)
    return (hello + bytes(max(0, size - len(hello))))[:size]


def handshake_with_pin(server: ServerHandshake, pin: bytes | str) -> ClientHandshake:
    client = ClientHandshake(CID, Credentials("alice"), server_key=pin)
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, 1000.0))
    return client


def test_a_hello_one_byte_short_of_the_padding_is_refused_naming_anti_amplification() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    assert refusal(lambda: server.on_client_hello(CID, hello_of(HELLO_SIZE - 1), ADDR, 1.0)) == (
        CloseCode.PROTOCOL_VIOLATION,
        f"client hello: {HELLO_SIZE - 1} bytes; it must be padded to at least {HELLO_SIZE} "
        "(anti-amplification)")


def test_a_hello_of_exactly_one_packet_is_accepted_and_one_byte_more_refused() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    assert server.on_client_hello(CID, hello_of(MAX_HANDSHAKE_PAYLOAD), ADDR, 1.0)
    assert refusal(lambda: server.on_client_hello(
        CID, hello_of(MAX_HANDSHAKE_PAYLOAD + 1), ADDR, 1.0)) == (
        CloseCode.PROTOCOL_VIOLATION,
        f"client hello: {MAX_HANDSHAKE_PAYLOAD + 1} bytes, above {MAX_HANDSHAKE_PAYLOAD}")


def test_an_offer_of_the_most_ciphers_is_accepted_and_one_more_refused() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    client = ClientHandshake(CID, Credentials("alice"), ciphers=("aes-256-gcm",) * MAX_OFFER)
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, 1.0))
    assert client.cipher == "aes-256-gcm"
    too_many = bytes((MAX_OFFER + 1,)) + bytes((1,)) * (MAX_OFFER + 1)
    assert refusal(lambda: server.on_client_hello(
        CID, hello_of(HELLO_SIZE, too_many), ADDR, 1.0)) == (
        CloseCode.PROTOCOL_VIOLATION,
        f"client hello: {MAX_OFFER + 1} ciphers offered, expected 1..{MAX_OFFER}")


def test_a_non_zero_first_padding_byte_is_refused() -> None:
    # key (32) || count (1) || 2 ids || cookie length (1): the padding starts at byte 36
    hello = bytearray(hello_of(HELLO_SIZE))
    hello[32 + 1 + 2 + 1] = 1
    server = ServerHandshake(STATIC, PARAMS)
    assert refusal(lambda: server.on_client_hello(CID, bytes(hello), ADDR, 1.0)) == (
        CloseCode.PROTOCOL_VIOLATION, "client hello: padding is not all zero")


def test_a_low_order_client_key_is_refused_naming_it() -> None:
    hello = encode_hello(bytes(32), None)  # the all-zero point: no shared secret
    server = ServerHandshake(STATIC, PARAMS)
    assert refusal(lambda: server.on_client_hello(CID, hello, ADDR, 1.0)) == (
        CloseCode.PROTOCOL_VIOLATION, "client ephemeral key is a low-order point")


def test_a_pinned_raw_key_of_the_wrong_size_is_refused_saying_so() -> None:
    assert pin_refusal(bytes(31)) == (
        CloseCode.BAD_SERVER_KEY, "pinned server key must be 32 bytes, got 31")


def test_a_pinned_fingerprint_may_carry_base64_padding() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    client = handshake_with_pin(server, server.fingerprint + "=")
    assert client.server_public_key == server.static_public


def test_a_pinned_fingerprint_with_a_stray_character_after_it_is_refused() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    for pin in (server.fingerprint + "X", "SHA256:" + "A" * 42):
        assert pin_refusal(pin) == (
            CloseCode.BAD_SERVER_KEY, "pinned fingerprint must be SHA256:<43 base64 characters>")


def test_a_pinned_key_in_url_safe_base64_matches_the_server() -> None:
    server = ServerHandshake(PIN_STATIC, PARAMS)
    standard = base64.b64encode(server.static_public).decode()
    assert "+" in standard and "/" in standard  # the key exercises both replacements
    for pin in (base64.urlsafe_b64encode(server.static_public).decode(),
                standard, standard + "=", standard.rstrip("=")):
        assert handshake_with_pin(server, pin).server_public_key == server.static_public


def test_a_pinned_key_with_characters_outside_base64_is_refused() -> None:
    standard = base64.b64encode(ServerHandshake(PIN_STATIC, PARAMS).static_public).decode()
    # junk after the padding; junk inside the key (which a lenient decoder would skip)
    for pin in (standard + "X", standard[:10] + "**" + standard[10:]):
        assert pin_refusal(pin) == (
            CloseCode.BAD_SERVER_KEY,
            "pinned server key is neither base64 nor SHA256:<fingerprint>")


def test_a_pinned_base64_key_of_the_wrong_size_is_refused_saying_so() -> None:
    pin = base64.b64encode(bytes(31)).decode()
    assert pin_refusal(pin) == (
        CloseCode.BAD_SERVER_KEY, "pinned server key decodes to 31 bytes, expected 32")


def test_a_client_refuses_an_empty_offer_and_a_short_ephemeral_key_naming_them() -> None:
    assert refusal(lambda: ClientHandshake(CID, Credentials("alice"), ciphers=())) == (
        CloseCode.BAD_REQUEST, f"ciphers: offer 1..{MAX_OFFER} ciphers, got 0")
    assert refusal(lambda: ClientHandshake(CID, Credentials("alice"),
                                           ephemeral_private=bytes(31))) == (
        CloseCode.INTERNAL_ERROR, "client ephemeral private key must be 32 bytes, got 31")


def test_a_client_knows_no_cipher_and_no_server_key_before_the_server_hello() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    client = ClientHandshake(CID, Credentials("alice"))
    assert (client.cipher, client.server_public_key, client.keys) == (None, None, None)
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, 1.0))
    assert (client.cipher, client.server_public_key) == ("aes-256-gcm", server.static_public)


def test_a_server_refuses_a_static_key_of_the_wrong_size_naming_it() -> None:
    assert refusal(lambda: ServerHandshake(bytes(31), PARAMS)) == (
        CloseCode.INTERNAL_ERROR, "server static private key must be 32 bytes, got 31")


@pytest.mark.parametrize(("lifetime", "rotation"), [(0.0, 60.0), (10.0, 0.0), (-1.0, -1.0)])
def test_a_server_refuses_a_lifetime_or_rotation_that_is_not_positive(
        lifetime: float, rotation: float) -> None:
    with pytest.raises(ValueError) as info:
        ServerHandshake(STATIC, PARAMS, cookie_lifetime=lifetime, retry_rotation=rotation)
    assert str(info.value) == "cookie_lifetime and retry_rotation must be positive"


def test_a_server_accepts_a_lifetime_and_rotation_under_a_second() -> None:
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=0.5, retry_rotation=0.5)
    assert (server.cookie_lifetime, server.retry_rotation) == (0.5, 0.5)


def test_retry_cookies_rotate_every_60_seconds_by_default() -> None:
    server = ServerHandshake(STATIC, PARAMS)
    assert server.retry_rotation == 60.0
    hello = retried_hello_at(server, 0.0)
    assert not server.needs_retry(hello, CID, ADDR, 119.9)  # the previous period's: kept
    assert server.needs_retry(hello, CID, ADDR, 120.0)  # two periods back: rotated out


def test_a_cookie_key_unused_for_257_epochs_is_forgotten_though_its_id_came_round() -> None:
    """The key id is the epoch's low 8 bits: 257 epochs after a cookie was issued, with no
    cookie in between, its id is the previous epoch's. The previous key was never made, so
    the cookie's key is gone: it must not be kept as "previous" across a gap of epochs."""
    server = ServerHandshake(STATIC, PARAMS, cookie_lifetime=LIFETIME)
    finish = finish_issued_at(server, 1000.0)
    late = 1000.0 + 257 * LIFETIME
    assert refusal(lambda: server.on_client_finish(CID, finish, ADDR, late)) == (
        CloseCode.HANDSHAKE_TIMEOUT, "server cookie expired (its key has rotated out)")
