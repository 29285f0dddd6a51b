"""The Quantum handshake, sans-I/O: SYN / SYN-ACK / ACK with X25519 (Noise-NK-like).

The exact byte layouts and the construction are specified in docs/PROTOCOL.md section 5; the
short version:

* SYN (ClientHello): the client's ephemeral key e_c and the ciphers it offers, padded to a
  1200-byte datagram so the server never answers with more bytes than it received.
* RETRY (flags SYN|URG): under load the server answers a SYN without a valid retry cookie with
  a stateless HMAC cookie binding the client address, the connection id and a time slot, and
  does no Diffie-Hellman until the client echoes it.
* SYN-ACK (ServerHello): e_s, the static key S, the chosen cipher, a server cookie (AEAD-sealed
  under a rotating server-only key: the handshake's pseudorandom key and transcript hash, the
  time, the client address; bound to the connection id) and a confirmation sealed with keys only
  the holder of S's private key can derive. The server keeps no per-connection state until the
  client echoes the cookie, and does no Diffie-Hellman when it does.
* ACK (ClientFinish): the echoed cookie and the client's sealed credentials.

Keys: ee = X25519(e_c, e_s), es = X25519(e_c, S); h = SHA-256(label || cid || e_c || offer ||
e_s || S || cipher) binds the offer and the choice (a downgrade fails the confirmation);
prk = HKDF-Extract(h, ee || es) -> confirmation key, finish key, and a traffic secret per
direction (crypto.py derives each key generation's key and iv from it).

Every parser rejects malformed input with HandshakeError carrying a CloseCode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from quantum.addresses import packed_ip
from quantum.crypto import (
    CIPHER_IDS,
    CIPHERS,
    DEFAULT_CIPHERS,
    SECRET_SIZE,
    TAG_SIZE,
    Algorithm,
    PacketProtection,
    aead,
    hkdf_expand,
    hkdf_extract,
)
from quantum.errors import CloseCode, QuantumError
from quantum.fec import check_shape
from quantum.keys import fingerprint
from quantum.limits import (
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    MAX_TICKET_BYTES,
    MAX_TOKEN_BYTES,
    MAX_USER_ID_BYTES,
    SESSION_ID_SIZE,
)
from quantum.packet import CONNECTION_ID_SIZE, HEADER_SIZE, MAX_PAYLOAD

PROTOCOL_LABEL: Final = b"Quantum 1.0 handshake: X25519, HKDF-SHA256"
RETRY_LABEL: Final = b"Quantum 1.0 retry cookie"
COOKIE_LABEL: Final = b"Quantum 1.0 server cookie"

PUBLIC_KEY_SIZE: Final = 32
MIN_INITIAL_DATAGRAM: Final = 1200
#: a ClientHello payload is padded to this, making the SYN datagram MIN_INITIAL_DATAGRAM bytes
HELLO_SIZE: Final = MIN_INITIAL_DATAGRAM - HEADER_SIZE
#: a hello longer than this is malformed (what one packet can carry)
MAX_HANDSHAKE_PAYLOAD: Final = MAX_PAYLOAD
#: the ClientFinish goes out before any path MTU is known. With the usual credentials it is far
#: below the 1200 bytes every path carries (168 bytes for a user id, a ticket and one metadata
#: entry); metadata near its bounds can make it larger, up to one full packet, which a path
#: with a smaller MTU may not carry (docs/PROTOCOL.md 5.2.5: keep handshake metadata small)
MAX_FINISH_PAYLOAD: Final = MAX_HANDSHAKE_PAYLOAD
#: at most this many cipher ids in a ClientHello's offer
MAX_OFFER: Final = 8

RETRY_COOKIE_SIZE: Final = 4 + 32  # slot u32 || HMAC-SHA256
_TRANSCRIPT_SIZE: Final = 32
# prk || h || cipher u8 || issued-at f64 || address tag
_COOKIE_PLAIN_SIZE: Final = SECRET_SIZE + _TRANSCRIPT_SIZE + 1 + 8 + 16
SERVER_COOKIE_SIZE: Final = 1 + 12 + _COOKIE_PLAIN_SIZE + TAG_SIZE  # key id || nonce || sealed
PARAMS_SIZE: Final = 10
#: the server's keepalive interval and idle timeout travel as u32 milliseconds, each >= 1
MAX_PARAM_MS: Final = 0xFFFFFFFF
# e_s || S || cipher u8 || cookie length u16 || cookie || confirmation
SERVER_HELLO_SIZE: Final = (2 * PUBLIC_KEY_SIZE + 1 + 2 + SERVER_COOKIE_SIZE + PARAMS_SIZE
                            + TAG_SIZE)
_FINISH_PREFIX: Final = 2 + SERVER_COOKIE_SIZE  # cookie length u16 || cookie
#: the largest encoded credentials a ClientFinish can carry
MAX_CREDENTIALS: Final = MAX_FINISH_PAYLOAD - _FINISH_PREFIX - TAG_SIZE

_F_TICKET: Final = 0x01
_F_RESUME: Final = 0x02
_F_FALLBACK: Final = 0x04
_F_FEC: Final = 0x08
_F_KEEP: Final = 0x10
_F_CONTINUE: Final = 0x20
_F_KNOWN: Final = _F_TICKET | _F_RESUME | _F_FALLBACK | _F_FEC | _F_KEEP | _F_CONTINUE
#: the most delivery marks credentials carry (PROTOCOL.md 5.2.5, 12.4); a client with more
#: reliable streams leaves the rest out (the server then resends all it owes on those)
MAX_CREDENTIAL_MARKS: Final = 64
_MARK = struct.Struct(">BBI")

_ZERO_NONCE: Final = bytes(12)
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_PARAMS = struct.Struct(">BBII")


class HandshakeError(QuantumError):
    """The handshake cannot go on; `code` is the reason to report or send."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class CredentialsRefused(HandshakeError):
    """A ClientFinish that authenticated, but whose credentials are malformed or out of bounds
    (`quantum.limits`): code BAD_REQUEST, the message names the field. It carries the keys, so
    that the server can tell the client so in a sealed REJECT instead of dropping the finish
    (the client proved its address and its keys: it is not an attacker's spoofed packet)."""

    def __init__(self, message: str, keys: SessionKeys, params: ServerParams) -> None:
        super().__init__(CloseCode.BAD_REQUEST, message)
        self.keys = keys
        self.params = params


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client proves and asks for, sealed in its ACK."""

    user_id: str
    ticket: str | None = None
    resume: tuple[bytes, str] | None = None  # (session_id 16 bytes, token)
    resume_fallback: bool = False  # a new session if the resume is refused
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: None: ask for no FEC. Otherwise ask for it, with these (k, m); `Connection.client` puts
    #: its configuration's (k, m) here (and None when the configuration has FEC off), and the
    #: server answers with its own (k, m) or none (5.2.6)
    fec: tuple[int, int] | None = (10, 3)
    #: with a resume: continue the lost connection's streams (PROTOCOL.md 12.4), telling
    #: the server how far each reliable stream was delivered here, as (channel, mode,
    #: mark); None: do not continue them (streams start again at id 0)
    delivered: tuple[tuple[int, int, int], ...] | None = None
    #: ask the server to keep what this connection owes, should it be lost, for the resume
    carry: bool = False

    def __repr__(self) -> str:
        # the ticket and the resume token are secrets: a repr ends up in logs and tracebacks
        ticket = None if self.ticket is None else "<hidden>"
        resume = None if self.resume is None else (self.resume[0].hex(), "<hidden>")
        return (f"Credentials(user_id={self.user_id!r}, ticket={ticket}, resume={resume}, "
                f"resume_fallback={self.resume_fallback}, metadata={dict(self.metadata)!r}, "
                f"fec={self.fec}, delivered={self.delivered}, carry={self.carry})")


@dataclass(frozen=True, slots=True)
class ServerParams:
    """The server's connection parameters (durations in seconds, sent as milliseconds)."""

    fec: tuple[int, int] | None
    keepalive_interval: float
    idle_timeout: float

    def __post_init__(self) -> None:
        if self.fec is not None:
            check_shape(*self.fec)
        for name in ("keepalive_interval", "idle_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 1 <= round(value * 1000) <= MAX_PARAM_MS):
                raise ValueError(f"{name} must be between 1 ms and {MAX_PARAM_MS} ms, "
                                 f"got {value}")

    def negotiate(self, requested: tuple[int, int] | None) -> ServerParams:
        """FEC is on only if both sides want it, and then with the server's (k, m)."""
        if requested is None and self.fec is not None:
            return ServerParams(None, self.keepalive_interval, self.idle_timeout)
        return self


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """Packet protection for one endpoint: `send` seals what it sends, `recv` opens the rest."""

    send: PacketProtection
    recv: PacketProtection


# ---------------------------------------------------------------------- codecs


class _Reader:
    """Bounds-checked reads; any shortfall is a HandshakeError with the given code."""

    __slots__ = ("_code", "_data", "_pos", "_what")

    def __init__(self, data: bytes, code: CloseCode, what: str) -> None:
        self._data, self._pos, self._code, self._what = data, 0, code, what

    def fail(self, message: str) -> HandshakeError:
        return HandshakeError(self._code, f"{self._what}: {message}")

    def take(self, n: int, field_name: str) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise self.fail(f"truncated in {field_name}")
        chunk = self._data[self._pos:end]
        self._pos = end
        return chunk

    def u8(self, field_name: str) -> int:
        return self.take(1, field_name)[0]

    def u16(self, field_name: str) -> int:
        value: int = _U16.unpack(self.take(2, field_name))[0]
        return value

    def text(self, n: int, field_name: str) -> str:
        try:
            return self.take(n, field_name).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{field_name} is not valid UTF-8") from None

    def end(self) -> None:
        if self._pos != len(self._data):
            raise self.fail(f"{len(self._data) - self._pos} unexpected trailing bytes")


def _utf8(value: object, field_name: str, low: int, high: int) -> bytes:
    if not isinstance(value, str):
        raise HandshakeError(CloseCode.BAD_REQUEST, f"{field_name} must be a string")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise HandshakeError(CloseCode.BAD_REQUEST,
                             f"{field_name} is not valid UTF-8 text (a lone surrogate)") from None
    if not low <= len(data) <= high:
        raise HandshakeError(CloseCode.BAD_REQUEST,
                             f"{field_name} is {len(data)} bytes of UTF-8, allowed {low}..{high}")
    return data


def _check_fec(fec: tuple[int, int], code: CloseCode, what: str) -> None:
    try:
        check_shape(*fec)
    except ValueError as exc:
        raise HandshakeError(code, f"{what}: {exc}") from None


def encode_credentials(credentials: Credentials) -> bytes:
    """The credentials' plaintext encoding; HandshakeError(BAD_REQUEST) if out of bounds."""
    c = credentials
    flags = 0
    parts: list[bytes] = []
    user = _utf8(c.user_id, "user id", 1, MAX_USER_ID_BYTES)
    parts += [_U16.pack(len(user)), user]
    if c.ticket is not None:
        flags |= _F_TICKET
        ticket = _utf8(c.ticket, "ticket", 0, MAX_TICKET_BYTES)
        parts += [_U16.pack(len(ticket)), ticket]
    if c.resume is not None:
        flags |= _F_RESUME
        session_id, token = c.resume
        if not isinstance(session_id, bytes) or len(session_id) != SESSION_ID_SIZE:
            raise HandshakeError(CloseCode.BAD_REQUEST,
                                 f"resume session id must be {SESSION_ID_SIZE} bytes")
        token_bytes = _utf8(token, "resume token", 1, MAX_TOKEN_BYTES)
        parts += [session_id, bytes((len(token_bytes),)), token_bytes]
    if c.resume_fallback:
        flags |= _F_FALLBACK
    if c.fec is not None:
        flags |= _F_FEC
        _check_fec(c.fec, CloseCode.BAD_REQUEST, "credentials")
        parts.append(bytes(c.fec))
    if c.carry:
        flags |= _F_KEEP
    if c.delivered is not None:
        flags |= _F_CONTINUE
        parts.append(_encode_marks(c.delivered))
    if len(c.metadata) > MAX_METADATA_ENTRIES:
        raise HandshakeError(CloseCode.BAD_REQUEST, f"{len(c.metadata)} metadata entries, "
                                                    f"at most {MAX_METADATA_ENTRIES}")
    parts.append(bytes((len(c.metadata),)))
    for key, value in c.metadata.items():
        key_bytes = _utf8(key, "metadata key", 1, MAX_METADATA_KEY_BYTES)
        value_bytes = _utf8(value, f"metadata value of {key!r}", 0, MAX_METADATA_VALUE_BYTES)
        parts += [bytes((len(key_bytes),)), key_bytes, _U16.pack(len(value_bytes)), value_bytes]
    body = bytes((flags,)) + b"".join(parts)
    limit = MAX_CREDENTIALS
    if len(body) > limit:
        raise HandshakeError(CloseCode.BAD_REQUEST,
                             f"credentials encode to {len(body)} bytes; at most {limit} fit "
                             "in the handshake packet (shorten the metadata)")
    return body


def decode_credentials(data: bytes) -> Credentials:
    """Inverse of encode_credentials; HandshakeError(BAD_REQUEST) on any malformation."""
    r = _Reader(data, CloseCode.BAD_REQUEST, "credentials")
    flags = r.u8("flags")
    if flags & ~_F_KNOWN:
        raise r.fail(f"unknown flag bits 0x{flags & ~_F_KNOWN:02x}")
    n = r.u16("user id length")
    if not 1 <= n <= MAX_USER_ID_BYTES:
        raise r.fail(f"user id length {n} outside 1..{MAX_USER_ID_BYTES}")
    user_id = r.text(n, "user id")
    ticket = None
    if flags & _F_TICKET:
        n = r.u16("ticket length")
        if n > MAX_TICKET_BYTES:
            raise r.fail(f"ticket length {n} above {MAX_TICKET_BYTES}")
        ticket = r.text(n, "ticket")
    resume = None
    if flags & _F_RESUME:
        session_id = r.take(SESSION_ID_SIZE, "resume session id")
        n = r.u8("resume token length")
        if not 1 <= n <= MAX_TOKEN_BYTES:
            raise r.fail(f"resume token length {n} outside 1..{MAX_TOKEN_BYTES}")
        resume = (session_id, r.text(n, "resume token"))
    fec = None
    if flags & _F_FEC:
        fec = (r.u8("fec k"), r.u8("fec m"))
        _check_fec(fec, CloseCode.BAD_REQUEST, "credentials")
    delivered = None
    if flags & _F_CONTINUE:
        count = r.u8("delivery mark count")
        if count > MAX_CREDENTIAL_MARKS:
            raise r.fail(f"{count} delivery marks, at most {MAX_CREDENTIAL_MARKS}")
        marks: list[tuple[int, int, int]] = []
        for _ in range(count):
            channel, mode, mark = _MARK.unpack(r.take(6, "delivery mark"))
            if mode > 1:
                raise r.fail(f"delivery mark for mode {mode}: only reliable modes (0, 1)")
            marks.append((channel, mode, mark))
        delivered = tuple(marks)
    count = r.u8("metadata count")
    if count > MAX_METADATA_ENTRIES:
        raise r.fail(f"{count} metadata entries, at most {MAX_METADATA_ENTRIES}")
    metadata: dict[str, str] = {}
    for _ in range(count):
        n = r.u8("metadata key length")
        if not 1 <= n <= MAX_METADATA_KEY_BYTES:
            raise r.fail(f"metadata key length {n} outside 1..{MAX_METADATA_KEY_BYTES}")
        key = r.text(n, "metadata key")
        n = r.u16("metadata value length")
        if n > MAX_METADATA_VALUE_BYTES:
            raise r.fail(f"metadata value length {n} above {MAX_METADATA_VALUE_BYTES}")
        if key in metadata:
            raise r.fail(f"metadata key {key!r} appears twice")
        metadata[key] = r.text(n, "metadata value")
    r.end()
    return Credentials(user_id, ticket, resume, bool(flags & _F_FALLBACK), metadata, fec,
                       delivered, bool(flags & _F_KEEP))


def _encode_marks(marks: tuple[tuple[int, int, int], ...]) -> bytes:
    if len(marks) > MAX_CREDENTIAL_MARKS:
        raise HandshakeError(CloseCode.BAD_REQUEST, f"{len(marks)} delivery marks, at most "
                                                    f"{MAX_CREDENTIAL_MARKS}")
    parts = [bytes((len(marks),))]
    for channel, mode, mark in marks:
        if not (0 <= channel <= 255 and mode in (0, 1) and 0 <= mark <= 0xFFFFFFFF):
            raise HandshakeError(CloseCode.BAD_REQUEST,
                                 f"delivery mark ({channel}, {mode}, {mark}) out of range")
        parts.append(_MARK.pack(channel, mode, mark))
    return b"".join(parts)


def encode_params(params: ServerParams) -> bytes:
    k, m = params.fec if params.fec is not None else (0, 0)
    return _PARAMS.pack(k, m, round(params.keepalive_interval * 1000),
                        round(params.idle_timeout * 1000))


def decode_params(data: bytes) -> ServerParams:
    if len(data) != PARAMS_SIZE:
        raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                             f"server parameters are {len(data)} bytes, expected {PARAMS_SIZE}")
    k, m, keepalive_ms, idle_ms = _PARAMS.unpack(data)
    try:
        return ServerParams(None if (k, m) == (0, 0) else (k, m), keepalive_ms / 1000,
                            idle_ms / 1000)
    except ValueError as exc:
        raise HandshakeError(CloseCode.PROTOCOL_VIOLATION, f"server parameters: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Hello:
    client_public: bytes
    #: the cipher ids offered, in the client's order, as sent (count u8 || ids)
    offer: bytes
    retry_cookie: bytes | None

    def choose(self, enabled: tuple[int, ...]) -> int | None:
        """The first id of the offer that is in `enabled`, or None."""
        for cipher in self.offer[1:]:
            if cipher in enabled:
                return cipher
        return None


def encode_offer(ciphers: tuple[str, ...]) -> bytes:
    """A ClientHello's cipher offer: count u8, then the ids in order of preference."""
    if not 1 <= len(ciphers) <= MAX_OFFER:
        raise ValueError(f"offer 1..{MAX_OFFER} ciphers, got {len(ciphers)}")
    try:
        ids = bytes(CIPHER_IDS[c] for c in ciphers)  # type: ignore[index]
    except KeyError as exc:
        raise ValueError(f"unknown cipher {exc.args[0]!r}") from None
    return bytes((len(ids),)) + ids


def encode_hello(client_public: bytes, retry_cookie: bytes | None,
                 offer: bytes = b"\x02\x01\x02") -> bytes:
    cookie = retry_cookie or b""
    body = client_public + offer + bytes((len(cookie),)) + cookie
    return body + bytes(HELLO_SIZE - len(body))


def decode_hello(payload: bytes) -> _Hello:
    r = _Reader(payload, CloseCode.PROTOCOL_VIOLATION, "client hello")
    if len(payload) < HELLO_SIZE:
        raise r.fail(f"{len(payload)} bytes; it must be padded to at least {HELLO_SIZE} "
                     "(anti-amplification)")
    if len(payload) > MAX_HANDSHAKE_PAYLOAD:
        raise r.fail(f"{len(payload)} bytes, above {MAX_HANDSHAKE_PAYLOAD}")
    client_public = r.take(PUBLIC_KEY_SIZE, "client ephemeral key")
    count = r.u8("cipher count")
    if not 1 <= count <= MAX_OFFER:
        raise r.fail(f"{count} ciphers offered, expected 1..{MAX_OFFER}")
    offer = bytes((count,)) + r.take(count, "cipher ids")
    n = r.u8("retry cookie length")
    if n not in (0, RETRY_COOKIE_SIZE):
        raise r.fail(f"retry cookie length {n}, expected 0 or {RETRY_COOKIE_SIZE}")
    cookie = r.take(n, "retry cookie") if n else None
    padding = payload[PUBLIC_KEY_SIZE + 1 + count + 1 + n:]
    if padding.count(0) != len(padding):
        raise r.fail("padding is not all zero")
    return _Hello(client_public, offer, cookie)


# ---------------------------------------------------------------------- key schedule


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_key(data: bytes | None, what: str) -> X25519PrivateKey:
    if data is None:
        return X25519PrivateKey.generate()
    if len(data) != 32:
        raise HandshakeError(CloseCode.INTERNAL_ERROR, f"{what} must be 32 bytes, got {len(data)}")
    return X25519PrivateKey.from_private_bytes(data)


def _dh(private: X25519PrivateKey, public: bytes, code: CloseCode, what: str) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # all-zero output: a low-order point, which contributes nothing
        raise HandshakeError(code, f"{what} is a low-order point") from None


def transcript_hash(connection_id: bytes, client_public: bytes, offer: bytes,
                    server_ephemeral: bytes, server_static: bytes, cipher: int) -> bytes:
    """h: binds the connection id, the three public keys, the offer and the choice."""
    return hashlib.sha256(PROTOCOL_LABEL + connection_id + client_public + offer
                          + server_ephemeral + server_static + bytes((cipher,))).digest()


@dataclass(frozen=True, slots=True)
class _Schedule:
    transcript: bytes
    algorithm: Algorithm
    prk: bytes

    @property
    def confirm_key(self) -> bytes:
        return hkdf_expand(self.prk, b"confirm", 32)

    @property
    def finish_key(self) -> bytes:
        return hkdf_expand(self.prk, b"finish", 32)

    def _traffic(self) -> tuple[PacketProtection, PacketProtection]:
        client = PacketProtection(hkdf_expand(self.prk, b"client traffic", SECRET_SIZE),
                                  self.algorithm)
        server = PacketProtection(hkdf_expand(self.prk, b"server traffic", SECRET_SIZE),
                                  self.algorithm)
        return client, server

    def client_keys(self) -> SessionKeys:
        client, server = self._traffic()
        return SessionKeys(client, server)

    def server_keys(self) -> SessionKeys:
        client, server = self._traffic()
        return SessionKeys(server, client)


def key_schedule(transcript: bytes, cipher: int, ee: bytes, es: bytes) -> _Schedule:
    """Every key the handshake derives from the two Diffie-Hellman results."""
    return _Schedule(transcript, CIPHERS[cipher], hkdf_extract(transcript, ee + es))


def _check_cid(connection_id: bytes) -> None:
    if len(connection_id) != CONNECTION_ID_SIZE:
        raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                             f"connection id must be {CONNECTION_ID_SIZE} bytes, "
                             f"got {len(connection_id)}")


def _parse_pin(server_key: bytes | str | None) -> tuple[bytes | None, str | None]:
    """(raw public key, fingerprint) to compare against; at most one is set."""
    if server_key is None:
        return None, None
    if isinstance(server_key, bytes):
        if len(server_key) != PUBLIC_KEY_SIZE:
            raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                                 f"pinned server key must be {PUBLIC_KEY_SIZE} bytes, "
                                 f"got {len(server_key)}")
        return server_key, None
    text = server_key.strip()
    if text.startswith("SHA256:"):
        digest = text[len("SHA256:"):].rstrip("=")
        if len(digest) != 43:
            raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                                 "pinned fingerprint must be SHA256:<43 base64 characters>")
        return None, "SHA256:" + digest
    try:
        text = text.replace("-", "+").replace("_", "/").rstrip("=")
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                             "pinned server key is neither base64 nor SHA256:<fingerprint>"
                             ) from None
    if len(raw) != PUBLIC_KEY_SIZE:
        raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                             f"pinned server key decodes to {len(raw)} bytes, "
                             f"expected {PUBLIC_KEY_SIZE}")
    return raw, None


# ---------------------------------------------------------------------- client


class ClientHandshake:
    """The client's side: hello, retry, server hello check, finish."""

    def __init__(self, connection_id: bytes, credentials: Credentials,
                 server_key: bytes | str | None = None,
                 ephemeral_private: bytes | None = None,
                 ciphers: tuple[str, ...] = DEFAULT_CIPHERS) -> None:
        _check_cid(connection_id)
        self.connection_id = connection_id
        try:
            self._offer = encode_offer(ciphers)
        except ValueError as exc:
            raise HandshakeError(CloseCode.BAD_REQUEST, f"ciphers: {exc}") from None
        #: the cipher the server chose (an `Algorithm` name), once its hello was accepted
        self.cipher: Algorithm | None = None
        self._fec = credentials.fec
        # encoded now, to fail early at connect(); a bytearray, so that it can be wiped
        self._credentials_plain: bytearray | None = bytearray(encode_credentials(credentials))
        self._pin_key, self._pin_fingerprint = _parse_pin(server_key)
        self._ephemeral: X25519PrivateKey | None = _private_key(
            ephemeral_private, "client ephemeral private key")
        self.client_public = _public_bytes(self._ephemeral)
        self._retry_cookie: bytes | None = None
        self._finish: bytes | None = None
        self.keys: SessionKeys | None = None
        self.server_public_key: bytes | None = None

    def client_hello(self) -> bytes:
        """The SYN payload (with the retry cookie once the server asked for one)."""
        return encode_hello(self.client_public, self._retry_cookie, self._offer)

    def on_retry(self, payload: bytes) -> None:
        """The server wants its retry cookie echoed: remember it for the next hello."""
        if len(payload) != RETRY_COOKIE_SIZE:
            raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                                 f"retry cookie is {len(payload)} bytes, "
                                 f"expected {RETRY_COOKIE_SIZE}")
        self._retry_cookie = bytes(payload)

    def on_server_hello(self, payload: bytes) -> ServerParams:
        """Check the server's key and proof, derive the keys; the negotiated parameters."""
        if self.keys is not None or self._ephemeral is None or self._credentials_plain is None:
            raise HandshakeError(CloseCode.PROTOCOL_VIOLATION, "second server hello")
        r = _Reader(payload, CloseCode.PROTOCOL_VIOLATION, "server hello")
        server_ephemeral = r.take(PUBLIC_KEY_SIZE, "server ephemeral key")
        server_static = r.take(PUBLIC_KEY_SIZE, "server static key")
        cipher = r.u8("cipher")
        cookie = r.take(r.u16("cookie length"), "cookie")
        confirmation = r.take(PARAMS_SIZE + TAG_SIZE, "confirmation")
        r.end()
        if cipher not in self._offer[1:] or cipher not in CIPHERS:
            raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                                 f"server chose cipher 0x{cipher:02x}, which was not offered")
        seen = fingerprint(server_static)
        if self._pin_key is not None and not hmac.compare_digest(server_static, self._pin_key):
            raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                                 f"server key {seen} does not match the pinned key "
                                 f"{fingerprint(self._pin_key)}")
        if self._pin_fingerprint is not None and seen != self._pin_fingerprint:
            raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                                 f"server key {seen} does not match the pinned fingerprint "
                                 f"{self._pin_fingerprint}")
        ee = _dh(self._ephemeral, server_ephemeral, CloseCode.PROTOCOL_VIOLATION,
                 "server ephemeral key")
        es = _dh(self._ephemeral, server_static, CloseCode.BAD_SERVER_KEY, "server static key")
        h = transcript_hash(self.connection_id, self.client_public, self._offer,
                            server_ephemeral, server_static, cipher)
        schedule = key_schedule(h, cipher, ee, es)
        try:
            params_bytes = aead(schedule.algorithm, schedule.confirm_key).decrypt(
                _ZERO_NONCE, confirmation, h)
        except InvalidTag:
            # a wrong key, or a hello whose offer or choice was changed on the way (h differs)
            raise HandshakeError(CloseCode.BAD_SERVER_KEY,
                                 f"server did not prove it holds the private key of {seen} "
                                 "(or the cipher negotiation was tampered with)") from None
        params = decode_params(params_bytes)
        sealed = aead(schedule.algorithm, schedule.finish_key).encrypt(
            _ZERO_NONCE, bytes(self._credentials_plain), h)
        self._finish = _U16.pack(len(cookie)) + cookie + sealed
        self.cipher = schedule.algorithm
        self.server_public_key = server_static
        self.keys = schedule.client_keys()
        # the ephemeral key and the plaintext credentials have done their work
        self._wipe_secrets()
        return params.negotiate(self._fec)

    def _wipe_secrets(self) -> None:
        plain = self._credentials_plain
        if plain is not None:
            plain[:] = bytes(len(plain))
            self._credentials_plain = None
        self._ephemeral = None

    def clear(self) -> None:
        """Forget everything secret or sensitive this handshake still holds (the connection
        calls it once established or closed). The derived packet keys live on in `keys`'
        owner; Python cannot scrub the immutable copies the crypto library returned, but no
        reference to them is kept here."""
        self._wipe_secrets()
        self._finish = None
        self._retry_cookie = None
        self.keys = None

    def client_finish(self) -> bytes:
        """The ACK payload; the same bytes on every retransmission."""
        if self._finish is None:
            raise HandshakeError(CloseCode.INTERNAL_ERROR,
                                 "client_finish() before a server hello was accepted")
        return self._finish


# ---------------------------------------------------------------------- server


class _RotatingSecret:
    """A random secret per epoch of `period` seconds; the current and previous are kept.

    Secrets are fresh random bytes, not derived from a master, so once a secret has rotated out
    nothing can recompute it: cookies sealed under it (which hold ephemeral private keys) become
    unreadable, which bounds how long a server compromise exposes past handshakes.
    """

    __slots__ = ("_ciphers", "_current", "_epoch", "_period", "_previous", "_random")

    def __init__(self, period: float, random: Callable[[int], bytes]) -> None:
        self._period, self._random = period, random
        self._epoch: int | None = None
        self._current = b""
        self._previous: bytes | None = None
        #: (secret, its AES-GCM object) for the current and previous secrets only
        self._ciphers: list[tuple[bytes, AESGCM]] = []

    def current(self, now: float) -> tuple[int, bytes]:
        epoch = math.floor(now / self._period)
        if self._epoch is None or epoch > self._epoch:
            self._previous = self._current if self._epoch == epoch - 1 else None
            self._current = self._random(32)
            self._epoch = epoch
        assert self._epoch is not None
        return self._epoch, self._current

    def cipher(self, secret: bytes) -> AESGCM:
        """The AES-GCM object keyed by `secret` (one `current` or `lookup` returned), built
        once per secret rather than once per cookie. Only the current and previous secrets'
        objects are kept: one that rotated out goes with the next secret's first use."""
        for key, cipher in self._ciphers:
            if key is secret:
                return cipher
        cipher = AESGCM(secret)
        self._ciphers = [(key, kept) for key, kept in self._ciphers
                         if key is self._current or key is self._previous] + [(secret, cipher)]
        return cipher

    def lookup(self, epoch_bits: int, mask: int, now: float) -> bytes | None:
        """The secret whose epoch's low bits are `epoch_bits`, if it is current or previous."""
        epoch, secret = self.current(now)
        if epoch_bits == epoch & mask:
            return secret
        if epoch_bits == (epoch - 1) & mask:
            return self._previous
        return None


def _address_bytes(addr: tuple[str, int]) -> bytes:
    """What retry cookies and server cookies bind to: port (u16) || the packed IP (4 bytes
    for IPv4 and IPv4-mapped IPv6, 16 for IPv6; docs/PROTOCOL.md 2.4), so one client
    is one address whichever text form or socket family reports it."""
    return _U16.pack(addr[1] & 0xFFFF) + packed_ip(addr[0])


class ServerHandshake:
    """The server's side, one per server: stateless per connection."""

    def __init__(self, static_private: bytes, params: ServerParams, cookie_lifetime: float = 10.0,
                 retry_rotation: float = 60.0,
                 random: Callable[[int], bytes] = os.urandom,
                 ciphers: tuple[str, ...] = DEFAULT_CIPHERS) -> None:
        if not (cookie_lifetime > 0 and retry_rotation > 0):
            raise ValueError("cookie_lifetime and retry_rotation must be positive")
        #: the cipher ids this server accepts (its choice follows the client's order)
        self.ciphers: tuple[int, ...] = tuple(encode_offer(ciphers)[1:])
        self._static = _private_key(static_private, "server static private key")
        self.static_public = _public_bytes(self._static)
        self.fingerprint = fingerprint(self.static_public)
        self.params = params
        self.cookie_lifetime = cookie_lifetime
        self.retry_rotation = retry_rotation
        self._random = random
        self._cookie_keys = _RotatingSecret(cookie_lifetime, random)
        self._retry_secrets = _RotatingSecret(retry_rotation, random)

    def __repr__(self) -> str:
        return f"ServerHandshake(fingerprint={self.fingerprint!r})"

    # -- retry

    def _retry_mac(self, secret: bytes, slot: int, connection_id: bytes,
                   addr: tuple[str, int]) -> bytes:
        message = RETRY_LABEL + connection_id + _U32.pack(slot) + _address_bytes(addr)
        return hmac.digest(secret, message, "sha256")

    def make_retry(self, connection_id: bytes, addr: tuple[str, int], now: float) -> bytes:
        """The RETRY payload: a cookie the client must echo in its next hello."""
        _check_cid(connection_id)
        epoch, secret = self._retry_secrets.current(now)
        slot = epoch & 0xFFFFFFFF
        return _U32.pack(slot) + self._retry_mac(secret, slot, connection_id, addr)

    def needs_retry(self, hello_payload: bytes, connection_id: bytes, addr: tuple[str, int],
                    now: float) -> bool:
        """True unless the hello carries a valid retry cookie for this address and id."""
        _check_cid(connection_id)
        cookie = decode_hello(hello_payload).retry_cookie
        if cookie is None:
            return True
        slot = _U32.unpack_from(cookie)[0]
        secret = self._retry_secrets.lookup(slot, 0xFFFFFFFF, now)
        if secret is None:
            return True
        expected = self._retry_mac(secret, slot, connection_id, addr)
        return not hmac.compare_digest(cookie[4:], expected)

    # -- hello

    def on_client_hello(self, connection_id: bytes, payload: bytes, addr: tuple[str, int],
                        now: float, ephemeral_private: bytes | None = None) -> bytes:
        """The SYN-ACK payload. Nothing is remembered: it all goes into the cookie.

        Raises `HandshakeError(CIPHER_NOT_SUPPORTED)` when the offer holds no cipher of ours
        (the listener answers with a plaintext REJECT)."""
        _check_cid(connection_id)
        hello = decode_hello(payload)
        cipher = hello.choose(self.ciphers)
        if cipher is None:
            raise HandshakeError(CloseCode.CIPHER_NOT_SUPPORTED,
                                 "none of the offered ciphers is enabled on this server")
        ephemeral_bytes = ephemeral_private if ephemeral_private is not None else self._random(32)
        ephemeral = _private_key(ephemeral_bytes, "server ephemeral private key")
        server_ephemeral = _public_bytes(ephemeral)
        client_public = hello.client_public
        ee = _dh(ephemeral, client_public, CloseCode.PROTOCOL_VIOLATION, "client ephemeral key")
        es = _dh(self._static, client_public, CloseCode.PROTOCOL_VIOLATION,
                 "client ephemeral key")
        h = transcript_hash(connection_id, client_public, hello.offer, server_ephemeral,
                            self.static_public, cipher)
        schedule = key_schedule(h, cipher, ee, es)
        confirmation = aead(schedule.algorithm, schedule.confirm_key).encrypt(
            _ZERO_NONCE, encode_params(self.params), h)
        epoch, key = self._cookie_keys.current(now)
        key_id = epoch & 0xFF
        nonce = self._random(12)
        plain = (schedule.prk + h + bytes((cipher,)) + _F64.pack(now) + _address_tag(addr))
        sealed = self._cookie_keys.cipher(key).encrypt(nonce, plain,
                                                       _cookie_ad(key_id, connection_id))
        cookie = bytes((key_id,)) + nonce + sealed
        return (server_ephemeral + self.static_public + bytes((cipher,))
                + _U16.pack(len(cookie)) + cookie + confirmation)

    # -- finish

    def on_client_finish(self, connection_id: bytes, payload: bytes, addr: tuple[str, int],
                         now: float, opened: OpenedCookie | None = None,
                         ) -> tuple[SessionKeys, Credentials, ServerParams]:
        """Verify the echoed cookie and the sealed credentials; keys, credentials, params.
        No Diffie-Hellman: the cookie carries the handshake's pseudorandom key. `opened` is
        what `open_finish_cookie` returned for this payload, if the caller opened it first
        (the cookie is then not opened twice).

        Raises `CredentialsRefused` (with the keys) for authentic credentials out of bounds,
        `HandshakeError` for anything else."""
        _check_cid(connection_id)
        cookie, sealed_credentials = _split_finish(payload)
        schedule = (opened.schedule if opened is not None
                    else self._open_cookie(connection_id, cookie, addr, now))
        try:
            plain = aead(schedule.algorithm, schedule.finish_key).decrypt(
                _ZERO_NONCE, sealed_credentials, schedule.transcript)
        except InvalidTag:
            raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                                 "client credentials do not authenticate") from None
        keys = schedule.server_keys()
        try:
            credentials = decode_credentials(plain)
        except HandshakeError as exc:
            raise CredentialsRefused(exc.message, keys, self.params) from None
        return keys, credentials, self.params.negotiate(credentials.fec)

    def open_finish_cookie(self, connection_id: bytes, payload: bytes, addr: tuple[str, int],
                           now: float) -> OpenedCookie | None:
        """A ClientFinish payload's server cookie, opened, if it opens fresh for this address
        and connection id (else None): one AES-GCM open and no Diffie-Hellman, so a front door
        can check it before it spends anything else on the finish, then hand it to
        `on_client_finish`."""
        try:
            _check_cid(connection_id)
            cookie, _ = _split_finish(payload)
            return OpenedCookie(self._open_cookie(connection_id, cookie, addr, now))
        except HandshakeError:
            return None

    def finish_cookie_valid(self, connection_id: bytes, payload: bytes, addr: tuple[str, int],
                            now: float) -> bool:
        """Whether a ClientFinish payload's server cookie opens, fresh, for this address and
        connection id (`open_finish_cookie`, its result dropped)."""
        return self.open_finish_cookie(connection_id, payload, addr, now) is not None

    def _open_cookie(self, connection_id: bytes, cookie: bytes, addr: tuple[str, int],
                     now: float) -> _Schedule:
        key_id = cookie[0]
        key = self._cookie_keys.lookup(key_id, 0xFF, now)
        if key is None:
            raise HandshakeError(CloseCode.HANDSHAKE_TIMEOUT,
                                 "server cookie expired (its key has rotated out)")
        try:
            plain = self._cookie_keys.cipher(key).decrypt(cookie[1:13], cookie[13:],
                                                          _cookie_ad(key_id, connection_id))
        except InvalidTag:
            raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                                 "server cookie does not authenticate (tampered, or issued "
                                 "for another connection id)") from None
        prk, h = plain[:SECRET_SIZE], plain[SECRET_SIZE:SECRET_SIZE + _TRANSCRIPT_SIZE]
        at = SECRET_SIZE + _TRANSCRIPT_SIZE
        cipher = plain[at]
        issued = _F64.unpack_from(plain, at + 1)[0]
        if not issued <= now <= issued + self.cookie_lifetime:
            raise HandshakeError(CloseCode.HANDSHAKE_TIMEOUT,
                                 f"server cookie expired ({now - issued:.1f} s old, "
                                 f"lifetime {self.cookie_lifetime} s)")
        if not hmac.compare_digest(plain[at + 9:], _address_tag(addr)):
            raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                                 "server cookie was issued to another address")
        return _Schedule(h, CIPHERS[cipher], prk)


class OpenedCookie:
    """A ClientFinish's server cookie that opened: what it carried (the handshake's key
    schedule), for `ServerHandshake.on_client_finish`. Opaque, and as secret as the keys."""

    __slots__ = ("schedule",)

    def __init__(self, schedule: _Schedule) -> None:
        self.schedule = schedule

    def __repr__(self) -> str:
        return "OpenedCookie(<secret>)"


def _split_finish(payload: bytes) -> tuple[bytes, bytes]:
    """A ClientFinish's (cookie, sealed credentials); HandshakeError if it cannot be one."""
    if not _FINISH_PREFIX + TAG_SIZE <= len(payload) <= MAX_FINISH_PAYLOAD:
        raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                             f"client finish is {len(payload)} bytes, expected "
                             f"{_FINISH_PREFIX + TAG_SIZE}..{MAX_FINISH_PAYLOAD}")
    n = _U16.unpack_from(payload)[0]
    if n != SERVER_COOKIE_SIZE:
        raise HandshakeError(CloseCode.PROTOCOL_VIOLATION,
                             f"client finish echoes a {n}-byte cookie, expected "
                             f"{SERVER_COOKIE_SIZE}")
    return payload[2:_FINISH_PREFIX], payload[_FINISH_PREFIX:]


def _address_tag(addr: tuple[str, int]) -> bytes:
    return hashlib.sha256(_address_bytes(addr)).digest()[:16]


def _cookie_ad(key_id: int, connection_id: bytes) -> bytes:
    return COOKIE_LABEL + bytes((key_id,)) + connection_id
