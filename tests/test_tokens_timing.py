"""Secrets compare in constant time: pinned by spying on the comparison itself.

A timing test cannot tell `==` from `hmac.compare_digest` reliably on a shared machine, so these
tests replace the constant-time primitive with a spy for the duration of a call and check that
the verdict is the spy's: the resume token (`session.tokens.verify`), the API's bearer token
(`ApiGuard`), the retry cookie's MAC and the server cookie's address tag
(`quantum.handshake.ServerHandshake`). Should any of them come to compare with `==` (or any other
early-exit comparison), the spy is never asked and the test fails.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from quantum.handshake import ClientHandshake, Credentials, ServerHandshake, ServerParams
from session import tokens
from session.api.auth import ApiGuard


@dataclass
class Spy:
    """Stands in for `compare_digest`: records its arguments, answers `verdict(a, b)`."""

    real: Callable[[bytes, bytes], bool]
    calls: list[tuple[bytes, bytes]] = field(default_factory=list)
    flip: bool = False  # answer the opposite of the truth: proves the caller uses the answer

    def __call__(self, a: bytes, b: bytes) -> bool:
        self.calls.append((bytes(a), bytes(b)))
        verdict = self.real(a, b)
        return not verdict if self.flip else verdict


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    spy = Spy(hmac.compare_digest)
    # `secrets.compare_digest` is `hmac.compare_digest`: either spelling reaches the spy
    monkeypatch.setattr(hmac, "compare_digest", spy)
    monkeypatch.setattr(secrets, "compare_digest", spy)
    yield spy


# ------------------------------------------------------------------ resume tokens


def test_a_resume_token_is_checked_by_a_constant_time_comparison_of_digests(spy: Spy) -> None:
    token, digest = tokens.new_token()
    assert tokens.verify(token, digest)
    assert spy.calls == [(tokens.hash_token(token), digest)]  # digests, never the token
    assert not tokens.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), digest)
    assert len(spy.calls) == 2


def test_the_token_verdict_is_the_constant_time_comparisons_verdict(spy: Spy) -> None:
    token, digest = tokens.new_token()
    spy.flip = True
    assert not tokens.verify(token, digest)  # the spy said "different": so it is
    assert tokens.verify("someone else's token", digest)  # and "equal": so it is


def test_tokens_that_cannot_be_ours_are_refused_before_any_comparison(spy: Spy) -> None:
    _, digest = tokens.new_token()
    for bad in ("", "x" * (tokens.MAX_TOKEN_BYTES + 1), None, 42, b"bytes"):
        assert not tokens.verify(bad, digest)
    assert not tokens.verify("a" * tokens.MAX_TOKEN_BYTES, b"")  # no token was stored
    assert spy.calls == []
    # the longest acceptable token is compared
    assert not tokens.verify("a" * tokens.MAX_TOKEN_BYTES, digest)
    assert len(spy.calls) == 1


def test_new_tokens_are_32_random_bytes_and_only_their_digest_is_kept() -> None:
    token, digest = tokens.new_token()
    assert len(token) == 43  # 32 bytes, unpadded URL-safe base64
    assert token.isascii() and "=" not in token
    assert digest == tokens.hash_token(token) and len(digest) == 32 and token.encode() != digest
    assert len({tokens.new_token()[0] for _ in range(64)}) == 64
    assert tokens.hash_token("é") == hashlib.sha256("é".encode()).digest()  # UTF-8
    assert tokens.hash_token("\udcff")  # a lone surrogate hashes rather than raising


# ------------------------------------------------------------------ the API's bearer token


@dataclass
class Context:
    metadata: tuple[tuple[str, str | bytes], ...]

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata


def test_the_api_bearer_token_is_compared_in_constant_time(spy: Spy) -> None:
    guard = ApiGuard("s3cret-token")
    assert guard._refusal(Context((("authorization", "Bearer s3cret-token"),))) is None
    assert spy.calls == [(b"s3cret-token", b"s3cret-token")]
    assert guard._refusal(Context((("authorization", "Bearer s3cret-tokeX"),))) == (
        "invalid API token")
    assert len(spy.calls) == 2
    spy.flip = True
    assert guard._refusal(Context((("authorization", "Bearer s3cret-token"),))) == (
        "invalid API token")
    assert guard._refusal(Context((("authorization", "bearer  wrong "),))) is None


def test_api_requests_without_a_bearer_token_are_refused_before_any_comparison(
        spy: Spy) -> None:
    guard = ApiGuard("s3cret-token")
    assert "missing credentials" in (guard._refusal(Context(())) or "")
    assert "missing credentials" in (guard._refusal(
        Context((("authorization", b"Bearer s3cret-token"),))) or "")
    assert guard._refusal(Context((("authorization", "Basic s3cret-token"),))) == (
        "the authorization metadata must be 'Bearer <token>'")
    assert spy.calls == []
    with pytest.raises(ValueError, match="must not be empty"):
        ApiGuard("")
    assert "s3cret" not in repr(guard)


# ------------------------------------------------------------------ handshake cookies

CID = bytes(range(16))
ADDR = ("192.0.2.1", 4433)


def test_the_retry_cookie_mac_is_compared_in_constant_time(spy: Spy) -> None:
    server = ServerHandshake(bytes(range(1, 33)), ServerParams(None, 10.0, 60.0))
    client = ClientHandshake(CID, Credentials("alice"))
    client.on_retry(server.make_retry(CID, ADDR, 100.0))
    hello = client.client_hello()
    assert not server.needs_retry(hello, CID, ADDR, 100.0)
    assert len(spy.calls) == 1
    spy.flip = True
    assert server.needs_retry(hello, CID, ADDR, 100.0)


def test_the_server_cookies_address_tag_is_compared_in_constant_time(spy: Spy) -> None:
    server = ServerHandshake(bytes(range(1, 33)), ServerParams(None, 10.0, 60.0))
    client = ClientHandshake(CID, Credentials("alice"))
    client.on_server_hello(server.on_client_hello(CID, client.client_hello(), ADDR, 100.0))
    finish = client.client_finish()
    assert server.finish_cookie_valid(CID, finish, ADDR, 100.5)
    assert len(spy.calls) == 1
    spy.flip = True
    assert not server.finish_cookie_valid(CID, finish, ADDR, 100.5)
