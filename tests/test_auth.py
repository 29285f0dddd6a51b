"""Tickets and authenticators: valid, forged, expired, wrong-user and malformed tickets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantum.auth import (
    AnonymousAuthenticator,
    Authenticator,
    AuthError,
    TicketAuthenticator,
    issue_ticket,
    validate_user_id,
)
from quantum.errors import CloseCode

SECRET = bytes(range(32))
NOW = 1_700_000_000.0


def _refused(auth: Authenticator, user: str, ticket: str | None, now: float = NOW) -> AuthError:
    with pytest.raises(AuthError) as info:
        auth.authenticate(user, ticket, now)
    return info.value


def test_ticket_format_and_acceptance() -> None:
    ticket = issue_ticket(SECRET, "alice", 3600, NOW)
    version, user, expiry, sig = ticket.split(".")
    assert (version, user, int(expiry)) == ("v1", "YWxpY2U", int(NOW) + 3600)
    assert len(sig) == 43 and ticket.isprintable() and "=" not in ticket
    assert TicketAuthenticator(SECRET).authenticate("alice", ticket, NOW + 10) == "alice"


def test_unicode_user_round_trip() -> None:
    ticket = issue_ticket(SECRET, "zoë 李", 60, NOW)
    assert TicketAuthenticator(SECRET).authenticate("zoë 李", ticket, NOW) == "zoë 李"


def test_expired_ticket() -> None:
    ticket = issue_ticket(SECRET, "alice", 60, NOW)
    error = _refused(TicketAuthenticator(SECRET), "alice", ticket, NOW + 61)
    assert error.code is CloseCode.EXPIRED_TICKET and "expired" in error.message


def test_ticket_for_another_user() -> None:
    ticket = issue_ticket(SECRET, "bob", 60, NOW)
    error = _refused(TicketAuthenticator(SECRET), "alice", ticket)
    assert error.code is CloseCode.BAD_TICKET and "another user" in error.message


def test_forged_signature_and_other_secret() -> None:
    ticket = issue_ticket(SECRET, "alice", 60, NOW)
    other = issue_ticket(b"x" * 32, "alice", 60, NOW)
    auth = TicketAuthenticator(SECRET)
    assert "does not verify" in _refused(auth, "alice", other).message
    head, _, sig = ticket.rpartition(".")
    forged = head + "." + ("A" if sig[0] != "A" else "B") + sig[1:]
    assert _refused(auth, "alice", forged).code is CloseCode.BAD_TICKET


def test_extended_expiry_is_rejected() -> None:
    ticket = issue_ticket(SECRET, "alice", 60, NOW)
    version, user, expiry, sig = ticket.split(".")
    tampered = ".".join([version, user, str(int(expiry) + 100_000), sig])
    error = _refused(TicketAuthenticator(SECRET), "alice", tampered)
    assert error.code is CloseCode.BAD_TICKET and "does not verify" in error.message


@pytest.mark.parametrize(
    ("ticket", "reason"),
    [
        (None, "required"),
        ("", "required"),
        ("v1.abc", "expected v1"),
        ("v2.YWxpY2U.1.AAAA", "unsupported ticket version"),
        ("v1.YWxpY2U.1.@@@@", "malformed ticket signature"),
        ("v1.YWxpY2U.1.AA==", "malformed ticket signature"),
        ("v1." + "A" * 2000 + ".1.AAAA", "malformed ticket"),
        ("v1.YWxpY2U.1.sig\u00e9", "malformed ticket"),
    ],
)
def test_malformed_tickets(ticket: str | None, reason: str) -> None:
    error = _refused(TicketAuthenticator(SECRET), "alice", ticket)
    assert error.code is CloseCode.BAD_TICKET
    assert reason in error.message


def test_signed_but_malformed_fields() -> None:
    """Fields are parsed only after the signature verified, and strictly even then."""
    import base64
    import hashlib
    import hmac

    signed = "v1.YWxpY2U.+12"
    sig = base64.urlsafe_b64encode(hmac.new(SECRET, signed.encode(), hashlib.sha256).digest())
    ticket = signed + "." + sig.decode().rstrip("=")
    assert "malformed ticket fields" in _refused(TicketAuthenticator(SECRET), "alice",
                                                 ticket).message


@pytest.mark.parametrize(
    ("user", "reason"), [("", "non-empty"), ("x" * 257, "at most 256"), ("a\nb", "control")]
)
def test_user_id_validation(user: str, reason: str) -> None:
    for auth in (TicketAuthenticator(SECRET), AnonymousAuthenticator()):
        error = _refused(auth, user, None)
        assert error.code is CloseCode.BAD_REQUEST and reason in error.message
    with pytest.raises(ValueError, match=reason):
        issue_ticket(SECRET, user, 60, NOW)


def test_anonymous_accepts_any_valid_user() -> None:
    assert AnonymousAuthenticator().authenticate("x" * 256, None, NOW) == "x" * 256
    assert AnonymousAuthenticator().authenticate("bob", "garbage", NOW) == "bob"
    assert validate_user_id("alice") == "alice"


def test_issue_ticket_arguments() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        issue_ticket(b"short", "alice", 60, NOW)
    with pytest.raises(ValueError, match="positive"):
        issue_ticket(SECRET, "alice", 0, NOW)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        TicketAuthenticator(b"short")


def test_secret_hidden_from_repr() -> None:
    assert SECRET.hex() not in repr(TicketAuthenticator(SECRET))


@given(user=st.text(min_size=1, max_size=40), ticket=st.text(max_size=200))
def test_arbitrary_tickets_only_raise_auth_error(user: str, ticket: str) -> None:
    try:
        TicketAuthenticator(SECRET).authenticate(user, ticket, NOW)
    except AuthError as exc:
        assert exc.code in (CloseCode.BAD_TICKET, CloseCode.BAD_REQUEST)
    else:  # pragma: no cover - would mean a forged ticket was accepted
        pytest.fail(f"forged ticket accepted: {ticket!r}")


def test_a_ticket_cannot_outlive_a_year_or_take_a_nonsense_ttl() -> None:
    from quantum.auth import MAX_TICKET_TTL

    secret = bytes(32)
    issue_ticket(secret, "alice", MAX_TICKET_TTL, 0.0)  # the longest is fine
    for ttl in (MAX_TICKET_TTL + 1, 1e308, float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="ticket ttl"):
            issue_ticket(secret, "alice", ttl, 0.0)
