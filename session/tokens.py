"""Resume tokens: the credential a client presents to get its session back after a reconnect.

A token is 32 random bytes as unpadded URL-safe base64 (43 characters), as in the seed. Only
its SHA-256 digest is stored: the token has 256 bits of entropy, so a fast hash is enough to make
a leaked store useless for resuming, and no slow KDF is needed. Verification compares digests
with `hmac.compare_digest`, so its timing says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from quantum.limits import MAX_TOKEN_BYTES

__all__ = ["MAX_TOKEN_BYTES", "TOKEN_BYTES", "hash_token", "new_token", "preview", "verify"]

#: random bytes per token (43 characters of base64url, within `MAX_TOKEN_BYTES`, the longest
#: token the protocol carries; anything longer cannot be one of ours)
TOKEN_BYTES = 32


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> tuple[str, bytes]:
    """A fresh token and the digest to store in its place."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_token(token)


def verify(token: object, token_hash: bytes) -> bool:
    """Whether `token` hashes to `token_hash`, in time independent of where they differ."""
    # refused before hashing (a bound on the work a guess costs): not a string, or outside
    # 1..MAX_TOKEN_BYTES bytes of UTF-8 (the characters are counted first: never fewer)
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
        return False
    raw = token.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_TOKEN_BYTES:
        return False
    if not token_hash:
        return False  # a session stored without a token can never be resumed
    return hmac.compare_digest(hashlib.sha256(raw).digest(), token_hash)


def preview(token: str) -> str:
    """The first 8 characters, for demos and support tickets: too short to be a credential."""
    return token[:8] + "..."
