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
])
def test_bad_values_are_refused_with_the_field_named(field: str, value: object,
                                                      message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**{field: value})  # type: ignore[arg-type]
