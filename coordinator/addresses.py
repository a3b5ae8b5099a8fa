"""Who is on the other end: the client's address, through trusted proxies only.

Behind nginx (docs/deployment.md) every TCP peer is the proxy; the client's own address
arrives in ``X-Forwarded-For``. That header is believed only when the peer is one of the
coordinator's ``trusted_proxies``: from anybody else it is whatever the sender wrote.
``allowed_networks``, logs and metrics all ask ``client_address`` so they agree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str | None) -> Address | None:
    """An IP address (IPv4-mapped IPv6 as IPv4); None for anything else."""
    try:
        ip = ipaddress.ip_address((text or "").strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def in_networks(address: str | None, networks: Sequence[str]) -> bool:
    """Whether ``address`` is an IP address inside one of ``networks`` (CIDRs)."""
    ip = parse_address(address)
    if ip is None:
        return False
    for text in networks:
        try:
            if ip in ipaddress.ip_network(text, strict=False):
                return True
        except ValueError:
            continue
    return False


def client_address(environ: Mapping[str, Any], trusted_proxies: Sequence[str]) -> str:
    """The address of the client behind the request described by a WSGI ``environ``.

    The TCP peer, unless it is a trusted proxy: then ``X-Forwarded-For`` is read from
    the right (each proxy appends the address it received from), skipping trusted
    proxies; the first other address is the client. A malformed entry stops the walk
    at the last address that could be trusted.
    """
    peer = str(environ.get("REMOTE_ADDR") or "")
    if not trusted_proxies or not in_networks(peer, trusted_proxies):
        return peer
    forwarded = str(environ.get("HTTP_X_FORWARDED_FOR") or "")
    current = peer
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        if parse_address(hop) is None:
            return current
        current = hop
        if not in_networks(hop, trusted_proxies):
            return hop
    return current
