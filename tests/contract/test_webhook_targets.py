"""contract.webhook_targets: which webhook URLs may be POSTed to."""

from __future__ import annotations

import pytest

from contract.webhook_targets import refusal_after_dns, refusal_without_dns


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/h",
        "http://127.8.9.10:8080/h",
        "http://localhost/h",
        "http://LOCALHOST./h",
        "http://10.1.2.3/h",
        "http://172.16.0.1/h",
        "http://192.168.0.10/h",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/h",  # carrier-grade NAT
        "http://0.0.0.0/h",
        "http://224.0.0.1/h",
        "http://[::1]/h",
        "http://[fd00::1]/h",
        "http://[fe80::1]/h",
        "http://[::ffff:10.0.0.1]/h",
    ],
)
def test_non_public_literals_are_refused_without_dns(url: str) -> None:
    assert refusal_without_dns(url) is not None
    assert refusal_after_dns(url) is not None


@pytest.mark.parametrize(
    "url", ["https://93.184.215.14/h", "http://[2606:4700::1111]/h", "https://example.com/h"]
)
def test_public_literals_and_names_pass_the_submit_check(url: str) -> None:
    assert refusal_without_dns(url) is None


def test_names_are_judged_by_what_they_resolve_to(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    answers = {"internal.example.com": "10.0.0.5", "public.example.com": "93.184.215.14"}
    real = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if host in answers:  # what a DNS server would answer for these names
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], 443))]
        if host == "gone.example.com":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    assert refusal_without_dns("https://internal.example.com/h") is None  # the API cannot tell
    assert "10.0.0.5" in (refusal_after_dns("https://internal.example.com/h") or "")
    assert refusal_after_dns("https://public.example.com/h") is None
    # A name that does not resolve now is left to the POST, which fails and is retried.
    assert refusal_after_dns("http://gone.example.com/h") is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://METADATA.google.internal./computeMetadata/v1/", "metadata"),
        ("http://instance-data/latest/meta-data/", "metadata"),
        ("http://redis:6379/", "fully qualified"),
        ("http://api/hook", "fully qualified"),
        ("http://db.internal/h", ".internal"),
        ("http://printer.local/h", ".local"),
        ("http://kubernetes.default.svc.cluster.local/h", ".local"),
        ("http://router.home.arpa/h", ".home.arpa"),
        ("http://app.localhost/h", ".localhost"),
        ("http://hooks.example.test/h", ".test"),
    ],
)
def test_private_and_metadata_names_are_refused_without_dns(url: str, reason: str) -> None:
    refusal = refusal_without_dns(url)
    assert refusal is not None and reason in refusal
    assert refusal_after_dns(url) == refusal  # the sender refuses them for the same reason


def test_a_lookup_that_hangs_refuses_nothing_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's submit check waits for DNS only so long; the sender decides later."""
    import socket
    import threading

    release = threading.Event()

    def hanging_getaddrinfo(*args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        release.wait(60)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.5", 443))]

    monkeypatch.setattr(socket, "getaddrinfo", hanging_getaddrinfo)
    try:
        assert refusal_after_dns("https://slow-dns.example.com/h", timeout_s=0.05) is None
    finally:
        release.set()
