"""Resume tokens: format, hashing, verification."""

from __future__ import annotations

import base64
import hashlib

import pytest

from session import tokens


def test_new_token_is_32_random_bytes_in_urlsafe_base64() -> None:
    token, digest = tokens.new_token()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert digest == hashlib.sha256(token.encode()).digest()
    assert len({tokens.new_token()[0] for _ in range(100)}) == 100


def test_verify_accepts_only_the_token() -> None:
    token, digest = tokens.new_token()
    assert tokens.verify(token, digest)
    assert not tokens.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), digest)
    assert not tokens.verify(digest.hex(), digest)  # knowing the stored hash is not enough


@pytest.mark.parametrize("bad", ["", None, 42, b"bytes", "x" * 129, "\udcff"])
def test_verify_rejects_malformed_tokens(bad: object) -> None:
    _, digest = tokens.new_token()
    assert not tokens.verify(bad, digest)


def test_a_session_without_a_hash_never_verifies() -> None:
    assert not tokens.verify("anything", b"")


def test_preview_is_too_short_to_be_a_credential() -> None:
    token, _ = tokens.new_token()
    shown = tokens.preview(token)
    assert shown == token[:8] + "..."
    assert token not in shown


@pytest.mark.parametrize("char", ["é", "\U0001f600"])
def test_a_token_past_the_byte_bound_is_refused_even_if_its_hash_matches(char: str) -> None:
    """The bound is on UTF-8 bytes: few enough characters, too many bytes, is refused before
    hashing, whatever the stored hash says."""
    token = char * (tokens.MAX_TOKEN_BYTES // len(char.encode()) + 1)
    assert len(token) <= tokens.MAX_TOKEN_BYTES < len(token.encode())
    assert not tokens.verify(token, hashlib.sha256(token.encode()).digest())
    at_the_bound = char * (tokens.MAX_TOKEN_BYTES // len(char.encode()))
    assert tokens.verify(at_the_bound, hashlib.sha256(at_the_bound.encode()).digest())
