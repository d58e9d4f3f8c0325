"""The submit-time check of a job's webhook URL, shared by every route that takes one."""

from __future__ import annotations

from pydantic import AnyHttpUrl

from contract.settings import Settings
from contract.webhook_targets import refusal_after_dns
from service.errors import ApiError

# How long a submit waits for its webhook host's addresses (no answer in time: accepted, and the
# sender, which resolves the host again before every attempt, decides).
DNS_TIMEOUT_S = 2.0


def check_webhook(url: AnyHttpUrl | None, settings: Settings) -> None:
    """422 when the server sends no webhooks, or ``url`` names a host it will not POST to: a
    non-public address, a private or metadata name, a name that resolves to a non-public address
    (the sender checks again, after DNS, before every attempt). Blocks for the DNS lookup: call
    it from a thread (a sync route, or ``run_in_threadpool``)."""
    if url is None:
        return
    if settings.webhook_secret is None:
        raise ApiError(
            422, "webhooks_disabled", "webhooks need UNCLIP_WEBHOOK_SECRET set on the server", "webhook"
        )
    if not settings.webhook_allow_private:
        refusal = refusal_after_dns(str(url), timeout_s=DNS_TIMEOUT_S)
        if refusal is not None:
            raise ApiError(422, "webhook_not_allowed", refusal, "webhook")
