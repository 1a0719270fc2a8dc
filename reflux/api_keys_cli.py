"""``reflux api-keys create|list|revoke``: API keys straight in Postgres, without the API.

For the first admin key (the API itself wants an admin key to create keys) and for operators
with database access; day-to-day key management goes through ``/v1/api-keys``. ADR 0046.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from reflux.output import add_json_flag, print_json

__all__ = ["add_api_key_commands"]


def _create(args: argparse.Namespace) -> int:
    from api.auth.bootstrap import create_api_key, write_key_file
    from api.auth.roles import parse_role
    from api.config import ApiSettings
    from foundation.settings import Settings

    expires_at = (
        datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
    )
    key, secret = create_api_key(
        Settings(),
        ApiSettings(),
        name=args.name,
        role=parse_role(args.role),
        tenant=args.tenant,
        expires_at=expires_at,
    )
    if args.write_to:
        path = write_key_file(Path(args.write_to), secret)
        print(
            f"created API key {key.key_id} ({key.name}, role {key.role.value}); written to {path}"
        )
    else:
        print(f"created API key {key.key_id} ({key.name}, role {key.role.value}):", file=sys.stderr)
        print(secret)
    return 0


def _list(args: argparse.Namespace) -> int:
    import psycopg

    from api.auth.keys import list_keys
    from api.config import ApiSettings
    from api.store import ensure_api_schema
    from foundation.settings import Settings

    api = ApiSettings()
    with psycopg.connect(Settings().postgres_dsn, autocommit=True) as conn:
        ensure_api_schema(conn, api.api_schema)
        keys = list_keys(conn, api.api_schema)
    if args.json:
        # GET /v1/api-keys's body (an admin's view: every tenant), built by the API's own models.
        from api.routes.identity import ApiKeyList, public_key

        body = ApiKeyList(data=[public_key(k) for k in keys], count=len(keys))
        print_json(body.model_dump(mode="json"))
        return 0
    now = datetime.now(UTC)
    for key in keys:
        status = key.refusal(now) or "active"
        print(f"{key.key_id}  {key.name:<24} {key.role.value:<8} {key.tenant:<12} {status}")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    import psycopg

    from api.auth.keys import revoke_key
    from api.config import ApiSettings
    from api.store import ensure_api_schema
    from foundation.settings import Settings

    api = ApiSettings()
    with psycopg.connect(Settings().postgres_dsn, autocommit=True) as conn:
        ensure_api_schema(conn, api.api_schema)
        key = revoke_key(conn, api.api_schema, args.key_id)
    if key is None:
        print(f"no API key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked API key {key.key_id} ({key.name})")
    return 0


def add_api_key_commands(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "api-keys", help="create, list or revoke API keys directly in Postgres (bootstrap)"
    )
    sub = parser.add_subparsers(dest="api_keys_command", required=True)
    create = sub.add_parser("create", help="create a key; prints it once (or writes --write-to)")
    create.add_argument("--name", required=True, help="who holds it; writes show user:<name>")
    create.add_argument("--role", required=True, choices=["admin", "editor", "operator", "viewer"])
    create.add_argument("--tenant", default="default")
    create.add_argument("--expires-in-days", type=float, default=None)
    create.add_argument(
        "--write-to", default=None, help="write the key to this file (mode 0600), not stdout"
    )
    create.set_defaults(handler=_create)
    listing = sub.add_parser("list", help="every key (never a secret)")
    add_json_flag(listing)
    listing.set_defaults(handler=_list)
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    revoke.set_defaults(handler=_revoke)
    return parser
