"""ServerConfig refuses values the server could not run with, naming the field."""

from __future__ import annotations

import pytest

from server import ServerConfig


def test_defaults_are_valid() -> None:
    config = ServerConfig()
    assert (config.port, config.hibernate_after, config.max_connections) == (9090, 2.0, 10_000)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("host", "", "host must be a non-empty string"),
    ("port", 70000, "port must be an integer in 0..65535"),
    ("port", "9090", "port must be an integer"),
    ("max_connections", 0, "max_connections must be a positive integer"),
    ("keepalive_interval", 0, "keepalive_interval must be a positive number"),
    ("idle_timeout", -1.0, "idle_timeout must be a positive number"),
    ("stats_interval", float("nan"), "stats_interval must be a positive number"),
    ("report_interval", float("inf"), "report_interval must be a positive number"),
    ("hibernate_after", "2", "hibernate_after must be a positive number"),
    ("stall_probe_interval", -0.001, "stall_probe_interval must be 0 \\(off\\) or a positive"),
    ("stall_probe_interval", float("inf"), "stall_probe_interval must be 0"),
    ("stall_probe_interval", True, "stall_probe_interval must be 0"),
])
def test_bad_values_are_refused_with_the_field_named(field: str, value: object,
                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{field: value})  # type: ignore[arg-type]


def test_limit_defaults() -> None:
    config = ServerConfig()
    assert (config.max_connections_per_user, config.max_connections_per_address) == (8, 64)
    assert (config.handshake_rate, config.handshake_burst, config.retry_above_rate) == (
        20.0, 40.0, 500.0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("max_connections_per_user", 0, "max_connections_per_user must be a positive integer"),
    ("max_connections_per_address", 2.5, "max_connections_per_address must be a positive"),
    ("handshake_rate", 0.0, "handshake_rate must be a positive number per second"),
    ("handshake_rate", float("nan"), "handshake_rate must be a positive number"),
    ("retry_above_rate", float("inf"), "retry_above_rate must be a positive number"),
    ("handshake_burst", 0.5, "handshake_burst must be a number of at least 1"),
    ("handshake_burst", True, "handshake_burst must be a number"),
])
def test_bad_limits_are_refused_with_the_field_named(field: str, value: object,
                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{field: value})  # type: ignore[arg-type]
