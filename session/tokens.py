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

__all__ = ["MAX_TOKEN_LENGTH", "TOKEN_BYTES", "hash_token", "new_token", "preview", "verify"]

TOKEN_BYTES = 32
#: Anything longer cannot be one of ours; refusing it early bounds the hashing work.
MAX_TOKEN_LENGTH = 128


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def new_token() -> tuple[str, bytes]:
    """A fresh token and the digest to store in its place."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_token(token)


def verify(token: object, token_hash: bytes) -> bool:
    """Whether `token` hashes to `token_hash`, in time independent of where they differ."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return False
    if not token_hash:
        return False  # a session stored without a token can never be resumed
    return hmac.compare_digest(hash_token(token), token_hash)


def preview(token: str) -> str:
    """The first 8 characters, for demos and support tickets: too short to be a credential."""
    return token[:8] + "..."
