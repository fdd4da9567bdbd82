"""Who sent a request: the one rule for the failed-authentication limit and METRICS_ACCESS=loopback.

With NUM_PROXIES = 0 (the default) the client is REMOTE_ADDR and X-Forwarded-For is ignored: anyone can send
one. With N > 0 reverse proxies in front, each appending the address it saw, REMOTE_ADDR is the last proxy
(127.0.0.1 for one on the same host) and the client is the N-th address from the right of X-Forwarded-For;
whatever stands left of it came from the client and is not believed. A request carrying fewer addresses did not
pass through the proxies: its client is unknown (None).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from django.conf import settings


def client_address(meta: Mapping[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    proxies = int(getattr(settings, "NUM_PROXIES", 0))
    if proxies <= 0:
        return parse_address(str(meta.get("REMOTE_ADDR", "")))
    forwarded = [a.strip() for a in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",")]
    if len(forwarded) < proxies or not forwarded[-proxies]:
        return None
    return parse_address(forwarded[-proxies])


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as servers and proxies write it ("::1", "fe80::1%eth0", "[::1]:443", "10.0.0.1:5000"), IPv4
    in IPv6 ("::ffff:127.0.0.1") as IPv4; None when it is none of these."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def rate_limit_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One counter per IPv4 address, per IPv6 /64 (one host may hold a whole /64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    return str(ip)
