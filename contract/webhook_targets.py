"""Which webhook URLs the service POSTs to: public addresses only, unless the operator says so.

A webhook URL comes from any API client, and the worker that POSTs it sits inside the operator's
network: without a check, ``http://169.254.169.254/...`` (a cloud metadata service), ``http://
redis:6379`` or ``http://127.0.0.1:9101/metrics`` would be requests the service makes on a
client's behalf (server-side request forgery). So a target must be a globally routable address.
Operators whose receivers live on their own network set ``UNCLIP_WEBHOOK_ALLOW_PRIVATE=true``.

The same rules on both sides, so a client hears at submit what the sender would do: a host that
is an address literal must be public; a host name must be a fully qualified name outside the
special-use and private domains (``localhost``, ``redis``, ``metadata.google.internal``,
``printer.local`` never are); and every address the name resolves to must be public. The API
resolves the name once at submit, within a short bound (no answer in time: the submit passes and
the sender decides); the worker resolves it again right before each delivery (a name can point
anywhere, and can change after the submit). The worker's HTTP client resolves the name once more
to connect, so a name whose DNS answer changes between the two lookups (DNS rebinding) is not
covered; operators who need that guarantee route webhooks through an egress proxy.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
# Cloud metadata services by name (their addresses, such as 169.254.169.254, are link-local and
# refused as addresses): GCP's, and AWS's EC2 names.
_METADATA_NAMES = {"metadata.google.internal", "instance-data", "instance-data.ec2.internal"}
# Domains that never name a public host: RFC 6761 (localhost, invalid, test), RFC 6762
# (local: mDNS), RFC 8375 (home.arpa), ICANN's private-use internal (2024); localdomain by habit.
_PRIVATE_SUFFIXES = ("localhost", "invalid", "test", "local", "home.arpa", "internal", "localdomain")


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
    (what a host name resolves to is judged by :func:`refusal_after_dns`)."""
    host = _host(url)
    name = host.rstrip(".").lower()
    if name in _LOCAL_NAMES:
        return f"webhook host {host!r} is this machine"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return _name_refusal(host, name)
    if not is_public(address):
        return f"webhook address {host} is not a public address"
    return None


def _name_refusal(host: str, name: str) -> str | None:
    if name in _METADATA_NAMES:
        return f"webhook host {host!r} is a cloud metadata service"
    if "." not in name:
        return f"webhook host {host!r} is not a fully qualified public name (add its domain)"
    suffix = next((s for s in _PRIVATE_SUFFIXES if name == s or name.endswith("." + s)), None)
    if suffix is not None:
        return f"webhook host {host!r} is in the private domain .{suffix}, never a public host"
    return None


def refusal_after_dns(url: str, timeout_s: float | None = None) -> str | None:
    """Why ``url`` may not be a webhook target once its host is resolved; None when it may.

    ``timeout_s`` bounds the lookup (the API's submit check): no answer in time, like no answer
    at all, refuses nothing (the POST would fail to connect too, and is retried)."""
    refusal = refusal_without_dns(url)
    if refusal is not None:
        return refusal
    host = _host(url)
    for address in _resolve(host, urlsplit(url).port or 443, timeout_s):
        if not is_public(address):
            return f"webhook host {host!r} resolves to {address}, which is not a public address"
    return None


def _resolve(host: str, port: int, timeout_s: float | None) -> list[IPAddress]:
    """The addresses ``host`` resolves to now; none when it does not (in ``timeout_s``)."""
    addresses: list[IPAddress] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return
        # str(...) first: drop an IPv6 zone id
        addresses.extend(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos)

    if timeout_s is None:
        lookup()
        return addresses
    # getaddrinfo has no timeout of its own: a daemon thread, left behind if it hangs.
    thread = threading.Thread(target=lookup, name="webhook-dns", daemon=True)
    thread.start()
    thread.join(timeout_s)
    return list(addresses) if not thread.is_alive() else []
