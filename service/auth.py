"""Who is calling: an API key (``Authorization: Bearer uk_…``), a signed image URL, or nobody in
particular when keys are off (``UNCLIP_REQUIRE_API_KEYS=false``, local development).

:func:`authenticate` is applied to every router at include time (``service.main.create_app``), so
a route added later is covered without doing anything. The :class:`Principal` it returns is what
the job lookup (``service.deps.get_job``) and the submit use for tenancy: a key sees only its
own jobs. The per-key request rate is enforced here too (``service.rate_limits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from contract.api_keys import ApiKey, ApiKeyStore
from contract.keys import Keys
from contract.settings import Settings
from contract.signing import Verdict, load_signer
from service.app_settings import SettingsDep
from service.errors import ApiError
from service.rate_limits import check_request_rate

_BEARER = "bearer "
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="unclip"'}


@dataclass(frozen=True)
class Principal:
    """The caller. ``owner`` is the API key id that jobs belong to; None means no tenancy check
    (keys off, or a signed URL, whose signature already names the one image it opens)."""

    owner: str | None
    key: ApiKey | None = None
    signed: bool = False


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    if not header.lower().startswith(_BEARER):
        raise ApiError(401, "invalid_api_key", "use `Authorization: Bearer <API key>`", headers=_CHALLENGE)
    return header[len(_BEARER) :].strip()


def _signed_url(request: Request, settings: Settings, redis: Redis) -> Principal | None:
    """A valid signed URL (GET/HEAD only) lets its one path through without a key."""
    expires, signature = request.query_params.get("expires"), request.query_params.get("sig")
    if expires is None or signature is None or request.method not in ("GET", "HEAD"):
        return None
    verdict = load_signer(redis, settings).verify(request.url.path, expires, signature)
    if verdict is Verdict.EXPIRED:
        raise ApiError(403, "url_expired", "this signed URL has expired; read the job again for a fresh one")
    if verdict is Verdict.INVALID:
        raise ApiError(403, "invalid_signature", "the URL's signature does not match it")
    return Principal(owner=None, signed=True)


def authenticate(request: Request, settings: SettingsDep) -> Principal:
    """The caller, or 401 (no key, a malformed, unknown or revoked key), 403 (a bad or expired
    signed URL) or 429 (the key's request rate)."""
    redis: Redis = request.app.state.redis
    signed = _signed_url(request, settings, redis)
    if signed is not None:
        return signed
    if not settings.require_api_keys:
        return Principal(owner=None)
    token = _bearer_token(request)
    if token is None:
        raise ApiError(
            401, "missing_api_key", "send your API key as `Authorization: Bearer <key>`", headers=_CHALLENGE
        )
    key = ApiKeyStore(redis, Keys(settings.key_prefix)).authenticate(token)
    if key is None:
        raise ApiError(401, "invalid_api_key", "the API key is unknown or was revoked", headers=_CHALLENGE)
    check_request_rate(request, settings, key)
    return Principal(owner=key.id, key=key)


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def limits_of(key: ApiKey | None, settings: Settings) -> tuple[int, int, int]:
    """(requests/min, images/min, active jobs) of ``key``: its own, else the settings' defaults."""
    if key is None:
        return settings.key_requests_per_minute, settings.key_images_per_minute, settings.key_max_active_jobs
    return (
        key.requests_per_minute or settings.key_requests_per_minute,
        key.images_per_minute or settings.key_images_per_minute,
        key.max_active_jobs or settings.key_max_active_jobs,
    )
