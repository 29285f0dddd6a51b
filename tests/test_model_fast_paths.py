"""The session model's fast paths for the usual case (canonical UUID text, a dotted-quad IPv4
address) give exactly what the general parse gives, for any input: the same text, or the
same refusal (session/model.py)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from session.errors import InvalidSession
from session.model import normalize_client_ip, normalize_connection_id


def reference_ip(client_ip: str) -> str | None:
    """What normalize_client_ip gave before its fast path (None: refused)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def reference_uuid(text: str) -> str | None:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def outcome(function: object, text: str) -> str | None:
    try:
        return function(text)  # type: ignore[operator, no-any-return]
    except InvalidSession:
        return None


ipv4_like = st.builds(lambda parts, sep: sep.join(parts),
                      st.lists(st.sampled_from(["0", "1", "01", "255", "256", "10", "007",
                                                "99", "", " 1", "1 "]), min_size=1, max_size=5),
                      st.sampled_from([".", ",", ". "]))


@given(st.one_of(ipv4_like, st.text(max_size=20),
                 st.ip_addresses().map(str)))
@example("1.2.3.4")
@example("01.2.3.4")  # leading zeros: refused by ipaddress
@example("1.2.3.4\x00")
@example("::ffff:192.0.2.1")  # IPv4-mapped: its IPv4 address
@example("1.2.3")
@example("٤.٣.٢.١")  # digits that are not ASCII
def test_the_ipv4_fast_path_agrees_with_ipaddress(text: str) -> None:
    assert outcome(normalize_client_ip, text) == reference_ip(text)


@given(st.one_of(st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()),
                 st.uuids().map(lambda u: u.hex), st.uuids().map(lambda u: f"{{{u}}}"),
                 st.text(alphabet="0123456789abcdefABCDEF-{}", max_size=40)))
@example("urn:uuid:12345678-1234-5678-1234-567812345678")
@example("12345678-1234-5678-1234-56781234567g")
def test_the_canonical_uuid_fast_path_agrees_with_uuid(text: str) -> None:
    assert outcome(normalize_connection_id, text) == reference_uuid(text)


def test_a_canonical_address_is_returned_as_given() -> None:
    text = "192.0.2.1"
    assert normalize_client_ip(text) is text
    cid = str(uuid.uuid4())
    assert normalize_connection_id(cid) is cid


@pytest.mark.parametrize("bad", ["", "not an ip", "1.2.3.4.5", "999.1.1.1"])
def test_what_is_not_an_address_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(InvalidSession, match="client_ip is not an IP address"):
        normalize_client_ip(bad)
