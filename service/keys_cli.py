"""``unclip keys create|list|revoke``: manage API keys in the Redis of ``UNCLIP_REDIS_URL``.

Registered on the ``unclip`` parser by ``cli/main.py`` through :func:`register`. A created key's
token is printed once (only its digest is stored); a revoked key stops working on the next
request, in every API process. Keys belong to the queue's deployment (``UNCLIP_QUEUE``).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from redis import Redis

from contract.api_keys import ApiKey, ApiKeyStore
from contract.connection import REDIS_HINT, check_redis
from contract.keys import Keys
from contract.settings import Settings, get_settings


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: Any) -> None:
    """Add ``keys`` (with ``create``, ``list``, ``revoke``) to an argparse subparsers object."""
    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a key and print its token (shown once)")
    create.add_argument("--name", default="", help="who or what the key is for")
    create.add_argument(
        "--rate", type=_positive, help="requests per minute (default UNCLIP_KEY_REQUESTS_PER_MINUTE)"
    )
    create.add_argument(
        "--image-rate", type=_positive, help="images per minute (default UNCLIP_KEY_IMAGES_PER_MINUTE)"
    )
    create.add_argument(
        "--quota",
        type=_positive,
        help="jobs the key may have queued or running at once (default UNCLIP_KEY_MAX_ACTIVE_JOBS)",
    )
    create.set_defaults(func=run_create)
    listing = actions.add_parser("list", help="every key: id, name, limits, created, revoked")
    listing.set_defaults(func=run_list)
    revoke = actions.add_parser("revoke", help="stop a key from working (from its next request)")
    revoke.add_argument("key_id", help="the id that `unclip keys list` shows (or the whole token)")
    revoke.set_defaults(func=run_revoke)


def _store(settings: Settings) -> ApiKeyStore | None:
    problem = check_redis(settings.redis_url)
    if problem is not None:
        print(
            f"error: no Redis answers at {settings.redis_url} ({problem});\n       {REDIS_HINT}",
            file=sys.stderr,
        )
        return None
    return ApiKeyStore(Redis.from_url(settings.redis_url), Keys(settings.key_prefix))


def run_create(args: argparse.Namespace) -> int:
    store = _store(get_settings())
    if store is None:
        return 2
    token, key = store.create(
        args.name,
        requests_per_minute=args.rate,
        images_per_minute=args.image_rate,
        max_active_jobs=args.quota,
    )
    print(f"created key {key.id} ({key.name or 'no name'}); its token, shown only now:\n{token}")
    return 0


def _limit(value: int | None, default: int) -> str:
    return str(value) if value is not None else f"{default}*"


def _row(key: ApiKey, settings: Settings) -> str:
    created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.created_at))
    revoked = time.strftime("%Y-%m-%d %H:%M", time.gmtime(key.revoked_at)) if key.revoked_at else "-"
    return (
        f"{key.id:<14}{_limit(key.requests_per_minute, settings.key_requests_per_minute):>8}"
        f"{_limit(key.images_per_minute, settings.key_images_per_minute):>8}"
        f"{_limit(key.max_active_jobs, settings.key_max_active_jobs):>8}  {created:<18}{revoked:<18}{key.name}"
    )


def run_list(args: argparse.Namespace) -> int:
    settings = get_settings()
    store = _store(settings)
    if store is None:
        return 2
    print(f"{'id':<14}{'req/min':>8}{'img/min':>8}{'active':>8}  {'created (UTC)':<18}{'revoked':<18}name")
    for key in store.list():
        print(_row(key, settings))
    print("(* = the server's default)")
    return 0


def run_revoke(args: argparse.Namespace) -> int:
    store = _store(get_settings())
    if store is None:
        return 2
    key_id = args.key_id.split("_")[1] if args.key_id.startswith("uk_") else args.key_id
    if not store.revoke(key_id):
        print(f"error: no key {key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked key {key_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.keys_cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
