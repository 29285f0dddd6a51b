"""One source for every limit (`quantum.limits`).

For each bound on what a client sends, the handshake refuses a value past it with a sealed
REJECT (BAD_REQUEST, the field named) before any session work, exactly when the session
service (or, for tickets, the authenticator) would refuse it too; a value at the bound passes
both. The credentials are sealed by a "foreign" client that encodes them without checking any
bound (our own client refuses them before sending, also checked here). Also: the FEC bounds
agree everywhere, "remaining ms" means one thing per value, and the layers import what
docs/ARCHITECTURE.md says they do.
"""

from __future__ import annotations

import ast
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from quantum.auth import AuthError, TicketAuthenticator, issue_ticket
from quantum.config import QuantumConfiguration
from quantum.connection import Connection
from quantum.errors import CloseCode
from quantum.events import AuthenticationRequested, HandshakeCompleted, KeepaliveAcknowledged
from quantum.fec import FecEncoder
from quantum.frames import (
    MAX_REMAINING_MS,
    ParityFrame,
    RejectFrame,
    decode_frames,
)
from quantum.handshake import (
    ClientHandshake,
    Credentials,
    HandshakeError,
    ServerHandshake,
    ServerParams,
    encode_credentials,
)
from quantum.limits import (
    MAX_FEC_K,
    MAX_FEC_M,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_BYTES,
    MAX_METADATA_VALUE_BYTES,
    MAX_TICKET_BYTES,
    MAX_TOKEN_BYTES,
    MAX_USER_ID_BYTES,
)
from quantum.listener import Listener
from quantum.packet import (
    ACK,
    HEADER_SIZE,
    RST,
    SYN,
    Packet,
    PacketError,
    decode_header,
    decode_packet,
    encode_packet,
    split_body,
)
from quantum.simulation import (
    CLIENT_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)
from session.errors import InvalidSession
from session.model import validate_metadata, validate_user_id
from session.tokens import hash_token, new_token, verify

CLIENT = ("198.51.100.7", 40000)
PARAMS = ServerParams(fec=None, keepalive_interval=10.0, idle_timeout=60.0)
SECRET = bytes(range(32))
NOW = 1_000_000.0
SID = bytes(range(16))


def raw_credentials(c: Credentials) -> bytes:
    """`c` encoded as docs/PROTOCOL.md 5.2.5 says, checking no bound: a foreign client."""
    def u16(n: int) -> bytes:
        return struct.pack(">H", n)

    flags = ((0x01 if c.ticket is not None else 0) | (0x02 if c.resume is not None else 0)
             | (0x04 if c.resume_fallback else 0) | (0x08 if c.fec is not None else 0))
    user = c.user_id.encode()
    out = [bytes((flags,)), u16(len(user)), user]
    if c.ticket is not None:
        out += [u16(len(c.ticket)), c.ticket.encode()]
    if c.resume is not None:
        token = c.resume[1].encode()
        out += [c.resume[0], bytes((len(token),)), token]
    if c.fec is not None:
        out.append(bytes(c.fec))
    out.append(bytes((len(c.metadata),)))
    for key, value in c.metadata.items():
        k, v = key.encode(), value.encode()
        out += [bytes((len(k),)), k, u16(len(v)), v]
    return b"".join(out)


class Door:
    """A real listener, and a client that seals whatever credential bytes it is given."""

    def __init__(self) -> None:
        self.listener = Listener(ServerHandshake(bytes(range(1, 33)), PARAMS),
                                 QuantumConfiguration(keepalive_interval=None, fec=None))

    def handshake(self, credentials: bytes) -> RejectFrame | Connection:
        """The sealed REJECT the server answered the finish with, or the connection it made."""
        cid = os.urandom(16)
        client = ClientHandshake(cid, Credentials("anyone", fec=None))
        # what a foreign client's encoder sealed: enforcing the bounds is the server's job
        client._credentials_plain = bytearray(credentials)
        syn = encode_packet(Packet(SYN, cid, 0, 0, (), client.client_hello()))
        replies, conn = self.listener.receive_datagram(syn, CLIENT, NOW, 0)
        assert conn is None and len(replies) == 1
        client.on_server_hello(decode_packet(replies[0][0]).payload)
        finish = encode_packet(Packet(ACK, cid, 0, 0, (), client.client_finish()))
        replies, conn = self.listener.receive_datagram(finish, CLIENT, NOW, 0)
        if conn is not None:
            assert replies == []
            return conn
        assert len(replies) == 1, f"the finish was dropped: {self.listener.stats.drops}"
        reply = replies[0][0]
        assert len(reply) <= len(finish)  # never more than the client sent
        _, flags, reply_cid, seq, _, payload_len = decode_header(reply)
        assert (flags, reply_cid) == (ACK | RST, cid)
        assert client.keys is not None
        body = client.keys.recv.open(seq, reply[:HEADER_SIZE], reply[HEADER_SIZE:])
        (frame,) = decode_frames(split_body(body, payload_len)[1])
        assert isinstance(frame, RejectFrame)
        return frame


def _user_refused(c: Credentials) -> None:
    with pytest.raises(InvalidSession, match="user_id"):
        validate_user_id(c.user_id)


def _metadata_refused(c: Credentials) -> None:
    with pytest.raises(InvalidSession, match="metadata"):
        validate_metadata(c.metadata)


def _token_refused(c: Credentials) -> None:
    assert c.resume is not None
    token = c.resume[1]
    assert not verify(token, hash_token(token))  # not even with the right hash


def _ticket_refused(c: Credentials) -> None:
    assert c.ticket is not None
    with pytest.raises(AuthError) as info:
        TicketAuthenticator(SECRET).authenticate(c.user_id, c.ticket, NOW)
    assert info.value.code == CloseCode.BAD_TICKET


def _meta(n: int, key: str = "k", value: str = "") -> dict[str, str]:
    return {f"{key}{i}": value for i in range(n)} if n > 1 else {key: value}


TICKET = issue_ticket(SECRET, "alice", 3600, NOW)

#: (credentials past one bound, words the REJECT's reason must contain, the session service's
#: own refusal of the same value)
PAST_THE_LIMIT: dict[str, tuple[Credentials, str, Callable[[Credentials], None]]] = {
    # 129 characters: within a bound counted in characters, past it in bytes
    "user-id-bytes": (Credentials("é" * 128 + "x"), "user id length 257 outside 1..256",
                      _user_refused),
    "user-id-empty": (Credentials(""), "user id length 0", _user_refused),
    "metadata-entries": (Credentials("a", metadata=_meta(MAX_METADATA_ENTRIES + 1)),
                         "65 metadata entries, at most 64", _metadata_refused),
    "metadata-key-bytes": (Credentials("a", metadata={"ü" * 64 + "k": "v"}),
                           "metadata key length 129 outside 1..128", _metadata_refused),
    "metadata-key-empty": (Credentials("a", metadata={"": "v"}),
                           "metadata key length 0", _metadata_refused),
    "metadata-value-bytes": (Credentials("a", metadata={"k": "é" * 512 + "x"}),
                             "metadata value length 1025 above 1024", _metadata_refused),
    "token-bytes": (Credentials("a", resume=(SID, "t" * (MAX_TOKEN_BYTES + 1))),
                    "resume token length 65 outside 1..64", _token_refused),
    "token-empty": (Credentials("a", resume=(SID, "")), "resume token length 0",
                    _token_refused),
    "ticket-bytes": (Credentials("alice", ticket=TICKET + "x" * (MAX_TICKET_BYTES + 1
                                                               - len(TICKET))),
                     "ticket length 1201 above 1200", _ticket_refused),
}

AT_THE_LIMIT: dict[str, Credentials] = {
    "user-id": Credentials("é" * (MAX_USER_ID_BYTES // 2), fec=None),
    "metadata-entries": Credentials("a", metadata=_meta(MAX_METADATA_ENTRIES), fec=None),
    "metadata-key-and-value": Credentials("a", fec=None, metadata={
        "ü" * (MAX_METADATA_KEY_BYTES // 2): "é" * (MAX_METADATA_VALUE_BYTES // 2)}),
    "token": Credentials("a", resume=(SID, "t" * MAX_TOKEN_BYTES), fec=None),
    "ticket": Credentials("alice", ticket=TICKET + "x" * (MAX_TICKET_BYTES - len(TICKET)),
                          fec=None),
}


@pytest.mark.parametrize("case", list(PAST_THE_LIMIT))
def test_the_handshake_refuses_what_the_session_service_would(case: str) -> None:
    credentials, reason, session_refuses = PAST_THE_LIMIT[case]
    session_refuses(credentials)
    door = Door()
    answer = door.handshake(raw_credentials(credentials))
    assert isinstance(answer, RejectFrame), "the server took credentials past a limit"
    assert answer.code == CloseCode.BAD_REQUEST
    assert reason in answer.reason
    assert door.listener.stats.rejected == {"bad_request": 1}
    # our own client refuses them before sending anything
    with pytest.raises(HandshakeError) as info:
        encode_credentials(credentials)
    assert info.value.code == CloseCode.BAD_REQUEST


@pytest.mark.parametrize("case", list(AT_THE_LIMIT))
def test_values_at_the_limit_pass_the_handshake_and_the_session_service(case: str) -> None:
    credentials = AT_THE_LIMIT[case]
    assert raw_credentials(credentials) == encode_credentials(credentials)
    conn = Door().handshake(raw_credentials(credentials))
    assert isinstance(conn, Connection)
    event = conn.next_event()
    assert isinstance(event, AuthenticationRequested)
    assert (event.user_id, event.ticket, event.resume, event.metadata) == (
        credentials.user_id, credentials.ticket, credentials.resume, credentials.metadata)
    assert validate_user_id(event.user_id) == event.user_id
    assert validate_metadata(event.metadata) == event.metadata
    if event.resume is not None:
        token = event.resume[1]
        assert verify(token, hash_token(token))
    if event.ticket is not None:  # only its length is at the limit: the signature is not
        with pytest.raises(AuthError) as info:
            TicketAuthenticator(SECRET).authenticate(event.user_id, event.ticket, NOW)
        assert "signature" in info.value.message


def test_malformed_authentic_credentials_get_a_sealed_bad_request() -> None:
    door = Door()
    truncated = raw_credentials(Credentials("alice"))[:-1]
    answer = door.handshake(truncated)
    assert isinstance(answer, RejectFrame)
    assert (answer.code, answer.reason) == (CloseCode.BAD_REQUEST,
                                            "credentials: truncated in metadata count")


def test_tokens_the_session_service_issues_fit_the_wire() -> None:
    token, digest = new_token()
    assert 1 <= len(token.encode()) <= MAX_TOKEN_BYTES
    assert verify(token, digest)


# ------------------------------------------------------------------ FEC's group shape


@pytest.mark.parametrize(("k", "m"), [(MAX_FEC_K + 1, 3), (0, 3), (10, MAX_FEC_M + 1), (10, 0)])
def test_every_layer_refuses_the_same_fec_shapes(k: int, m: int) -> None:
    message = "FEC [km] must be between 1 and 16 "
    with pytest.raises(ValueError, match=message):
        QuantumConfiguration(fec=(k, m))
    with pytest.raises(ValueError, match=message):
        ServerParams(fec=(k, m), keepalive_interval=10.0, idle_timeout=60.0)
    with pytest.raises(ValueError, match=message):
        FecEncoder(k, m)
    with pytest.raises(HandshakeError, match=message):
        encode_credentials(Credentials("a", fec=(k, m)))
    if k > MAX_FEC_K:  # a PARITY frame lists the group's k packets
        with pytest.raises(PacketError, match=r"must be 1\.\.16"):
            ParityFrame(1, 3, 0, tuple(range(k)), b"").encode()


def test_the_largest_fec_shape_is_accepted_everywhere() -> None:
    QuantumConfiguration(fec=(MAX_FEC_K, MAX_FEC_M))
    ServerParams(fec=(MAX_FEC_K, MAX_FEC_M), keepalive_interval=10.0, idle_timeout=60.0)
    FecEncoder(MAX_FEC_K, MAX_FEC_M)
    frame = ParityFrame(1, MAX_FEC_M, 0, tuple(range(MAX_FEC_K)), b"")
    assert decode_frames(frame.encode()) == [frame]


# ------------------------------------------------------------------ "remaining ms"


def test_remaining_ms_means_no_session_only_in_a_keepalive_answer() -> None:
    year = 365 * 86400.0
    server = SimulatedServer.create(QuantumConfiguration(keepalive_interval=None, fec=None))
    server.authorize = lambda conn, request: conn.accept(conn.connection_id, "tok", year)
    sim = Simulation(SimulatedNetwork(LinkProfile()), server)
    client = sim.add_client(Credentials("a", fec=None),
                            configuration=QuantumConfiguration(keepalive_interval=None))
    sim.run(until=1.0)
    events = sim.client_events[CLIENT_ADDR]
    done = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert [e.remaining for e in done] == [MAX_REMAINING_MS / 1000]  # a year: "at least that"
    (conn,) = server.connections.values()
    for remaining in (None, 12.5):
        keepalive_id = client.send_keepalive()
        sim.flush()
        sim.run(until=sim.now + 0.1)
        conn.acknowledge_keepalive(keepalive_id, remaining)
        sim.flush()
        sim.run(until=sim.now + 0.1)
    acks = [e for e in events if isinstance(e, KeepaliveAcknowledged)]
    assert [e.remaining for e in acks] == [None, 12.5]


# ------------------------------------------------------------------ layering

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            names.add(node.module)
    return names


def test_layers_import_only_what_the_architecture_says() -> None:
    # quantum/ knows nothing of the session service; session/ takes only the protocol's
    # bounds from quantum/ (docs/ARCHITECTURE.md, "Layers")
    for path in sorted((ROOT / "quantum").glob("*.py")):
        leaks = {n for n in _imports(path) if n.split(".")[0] == "session"}
        assert not leaks, f"{path.name} imports {leaks}"
    for path in sorted((ROOT / "session").glob("*.py")):
        used = {n for n in _imports(path) if n.split(".")[0] in ("quantum", "server")}
        assert used <= {"quantum.limits"}, f"session/{path.name} imports {used}"
    own = {n for n in _imports(ROOT / "quantum" / "limits.py")
           if n.split(".")[0] in ("quantum", "session", "server")}
    assert not own, "quantum/limits.py must stay a leaf: it imports nothing of the project"
