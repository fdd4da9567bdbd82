"""The client-address rule (config.client_address): pure logic over a request's META."""

from __future__ import annotations

from typing import Any

import pytest

from config.client_address import client_address, parse_address, rate_limit_key


@pytest.mark.parametrize(
    ("proxies", "meta", "expected"),
    [
        (0, {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_FORWARDED_FOR": "127.0.0.1"}, "203.0.113.9"),  # XFF ignored
        (1, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, "203.0.113.9"),
        (1, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "127.0.0.1, 203.0.113.9"}, "203.0.113.9"),
        (2, {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.2.3.4, 203.0.113.9, 10.0.0.1"}, "203.0.113.9"),
        (1, {"REMOTE_ADDR": "127.0.0.1"}, None),  # did not come through the proxy
        (2, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}, None),
        (1, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "unknown"}, None),
        (1, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "[2001:db8::1]:443"}, "2001:db8::1"),
        (1, {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9:5000"}, "203.0.113.9"),
        (0, {"REMOTE_ADDR": "::ffff:127.0.0.1"}, "127.0.0.1"),
        (0, {"REMOTE_ADDR": "fe80::1%eth0"}, "fe80::1"),
        (0, {}, None),
    ],
)
def test_client_address(settings: Any, proxies: int, meta: dict[str, str], expected: str | None) -> None:
    settings.NUM_PROXIES = proxies
    found = client_address(meta)
    assert (None if found is None else str(found)) == expected


def test_failures_are_counted_per_ipv4_address_and_per_ipv6_slash_64() -> None:
    assert rate_limit_key(parse_address("203.0.113.9")) == "203.0.113.9"  # type: ignore[arg-type]
    a, b = parse_address("2001:db8:1:2::1"), parse_address("2001:db8:1:2:ffff::9")
    assert a is not None and b is not None
    assert rate_limit_key(a) == rate_limit_key(b) == "2001:db8:1:2::/64"
