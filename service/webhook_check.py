"""The submit-time check of a job's webhook URL, shared by every route that takes one."""

from __future__ import annotations

from pydantic import AnyHttpUrl

from contract.settings import Settings
from contract.webhook_targets import refusal_without_dns
from service.errors import ApiError


def check_webhook(url: AnyHttpUrl | None, settings: Settings) -> None:
    """422 when the server sends no webhooks, or ``url`` names an address it will not POST to
    (the sender checks again, after DNS, before every attempt)."""
    if url is None:
        return
    if settings.webhook_secret is None:
        raise ApiError(
            422, "webhooks_disabled", "webhooks need UNCLIP_WEBHOOK_SECRET set on the server", "webhook"
        )
    if not settings.webhook_allow_private:
        refusal = refusal_without_dns(str(url))
        if refusal is not None:
            raise ApiError(422, "webhook_not_allowed", refusal, "webhook")
