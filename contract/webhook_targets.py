"""Which webhook URLs the service POSTs to: public addresses only, unless the operator says so.

A webhook URL comes from any API client, and the worker that POSTs it sits inside the operator's
network: without a check, ``http://169.254.169.254/...`` (a cloud metadata service), ``http://
redis:6379`` or ``http://127.0.0.1:9101/metrics`` would be requests the service makes on a
client's behalf (server-side request forgery). So a target must be a globally routable address.
Operators whose receivers live on their own network set ``UNCLIP_WEBHOOK_ALLOW_PRIVATE=true``.

Two checks, one per side: the API refuses a URL whose host is an address literal (or
``localhost``) that is not public, so the client hears about it at submit; the worker resolves
the host right before each delivery and refuses it if any address it resolves to is not public
(a name can point anywhere, and can change after the submit). The worker's HTTP client resolves
the name once more to connect, so a name whose DNS answer changes between the two lookups (DNS
rebinding) is not covered; operators who need that guarantee route webhooks through an egress
proxy.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local, shared, reserved or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_global and not address.is_multicast


def _host(url: str) -> str:
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"webhook URL has no host: {url!r}")
    return host


def refusal_without_dns(url: str) -> str | None:
    """Why ``url`` may not be a webhook target, judged from the URL alone; None when it may
    (a host name is judged later, at delivery, by :func:`refusal_after_dns`)."""
    host = _host(url)
    if host.rstrip(".").lower() in _LOCAL_NAMES:
        return f"webhook host {host!r} is this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if not is_public(address):
        return f"webhook address {host} is not a public address"
    return None


def refusal_after_dns(url: str) -> str | None:
    """Why ``url`` may not be a webhook target once its host is resolved; None when it may."""
    refusal = refusal_without_dns(url)
    if refusal is not None:
        return refusal
    host = _host(url)
    try:
        infos = socket.getaddrinfo(host, urlsplit(url).port or 443, type=socket.SOCK_STREAM)
    except OSError:
        return None  # no answer now: the POST fails to connect too, and is retried like any failure
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])  # drop an IPv6 zone id
        if not is_public(address):
            return f"webhook host {host!r} resolves to {address}, which is not a public address"
    return None
