"""User authentication: HMAC-signed tickets and the authenticators that check them.

A ticket is printable text the operator (or an application backend holding the ticket secret)
hands to a user::

    v1.<base64url(user id, UTF-8)>.<expiry, integer unix seconds>.<base64url(HMAC-SHA256)>

The signature covers everything before its own dot, so the user id and the expiry cannot be
changed. Base64url is unpadded, so a ticket contains only [A-Za-z0-9_.-]. Signatures are
compared with `hmac.compare_digest` (constant time). A ticket issued to another user than the
one claimed is BAD_TICKET (not UNKNOWN_USER: the server has no user list; the claim and the
ticket simply disagree), with a message saying so.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from typing import Final, Protocol

from quantum.errors import CloseCode, QuantumError
from quantum.limits import MAX_TICKET_BYTES, MAX_USER_ID_BYTES

TICKET_VERSION: Final = "v1"
_SIG_SIZE: Final = 32


class AuthError(QuantumError):
    """Authentication refused; `code` is the reason sent to the client."""

    def __init__(self, code: CloseCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class Authenticator(Protocol):
    """Decides who a connecting client is. `now` is wall-clock unix seconds."""

    def authenticate(self, user_id: str, ticket: str | None, now: float) -> str:
        """The authenticated user id, or AuthError."""
        ...


def validate_user_id(user_id: str) -> str:
    """A user id is 1..MAX_USER_ID_BYTES bytes of UTF-8, all printable; AuthError(BAD_REQUEST)
    otherwise."""
    if not isinstance(user_id, str) or not user_id:
        raise AuthError(CloseCode.BAD_REQUEST, "user id must be a non-empty string")
    try:
        size = len(user_id.encode("utf-8"))
    except UnicodeEncodeError:
        raise AuthError(CloseCode.BAD_REQUEST, "user id is not valid UTF-8 text") from None
    if size > MAX_USER_ID_BYTES:
        raise AuthError(CloseCode.BAD_REQUEST,
                        f"user id is {size} bytes of UTF-8, at most {MAX_USER_ID_BYTES}")
    if not user_id.isprintable():
        raise AuthError(CloseCode.BAD_REQUEST, "user id contains control characters")
    return user_id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or "=" in text:
        raise ValueError("empty or padded")
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _sign(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


#: the longest a ticket may be valid, in seconds
MAX_TICKET_TTL: Final = 365 * 24 * 3600.0


def issue_ticket(secret: bytes, user_id: str, ttl: float, now: float) -> str:
    """A ticket for `user_id` valid until `now + ttl` (unix seconds, rounded up); `ttl` is at
    most `MAX_TICKET_TTL` (a year): a ticket that never expires cannot be taken back."""
    if len(secret) < 16:
        raise ValueError(f"ticket secret must be at least 16 bytes, got {len(secret)}")
    if not (0 < ttl <= MAX_TICKET_TTL):  # False for nan as well
        raise ValueError(f"ticket ttl must be a positive number of seconds up to "
                         f"{MAX_TICKET_TTL:.0f} (a year), got {ttl}")
    try:
        validate_user_id(user_id)
    except AuthError as exc:
        raise ValueError(exc.message) from None
    expiry = math.ceil(now + ttl)
    signed_part = f"{TICKET_VERSION}.{_b64(user_id.encode('utf-8'))}.{expiry}"
    return f"{signed_part}.{_b64(_sign(secret, signed_part))}"


class TicketAuthenticator:
    """Accepts a user whose ticket is signed with `secret`, unexpired and issued to them."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError(f"ticket secret must be at least 16 bytes, got {len(secret)}")
        self._secret = secret

    def __repr__(self) -> str:
        return "TicketAuthenticator(secret=<hidden>)"

    def authenticate(self, user_id: str, ticket: str | None, now: float) -> str:
        validate_user_id(user_id)
        if ticket is None or not ticket:
            raise AuthError(CloseCode.BAD_TICKET, "a ticket is required")
        if not ticket.isascii() or len(ticket) > MAX_TICKET_BYTES:
            raise AuthError(CloseCode.BAD_TICKET, "malformed ticket")
        parts = ticket.split(".")
        if len(parts) != 4:
            raise AuthError(CloseCode.BAD_TICKET,
                            "malformed ticket: expected v1.<user>.<expiry>.<signature>")
        version, user_b64, expiry_text, sig_b64 = parts
        if version != TICKET_VERSION:
            raise AuthError(CloseCode.BAD_TICKET, f"unsupported ticket version {version!r}")
        try:
            signature = _unb64(sig_b64)
        except (binascii.Error, ValueError):
            raise AuthError(CloseCode.BAD_TICKET, "malformed ticket signature") from None
        expected = _sign(self._secret, f"{version}.{user_b64}.{expiry_text}")
        # check the signature before trusting any other field
        if not hmac.compare_digest(signature, expected):
            raise AuthError(CloseCode.BAD_TICKET, "ticket signature does not verify")
        try:
            ticket_user = _unb64(user_b64).decode("utf-8")
            if not expiry_text.isdigit():
                raise ValueError("expiry is not a decimal integer")
            expiry = int(expiry_text)
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            raise AuthError(CloseCode.BAD_TICKET, "malformed ticket fields") from None
        if not hmac.compare_digest(ticket_user.encode("utf-8"), user_id.encode("utf-8")):
            raise AuthError(CloseCode.BAD_TICKET,
                            f"ticket was issued to another user, not {user_id!r}")
        if now >= expiry:
            raise AuthError(CloseCode.EXPIRED_TICKET,
                            f"ticket expired {int(now - expiry)} s ago")
        return user_id


class AnonymousAuthenticator:
    """Development switch: anyone is who they claim to be; tickets are ignored."""

    __slots__ = ()

    def authenticate(self, user_id: str, ticket: str | None, now: float) -> str:
        return validate_user_id(user_id)
