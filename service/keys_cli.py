"""``svg2-keys``: create, list and revoke API keys (stored hashed in the API's Redis).

    svg2-keys create --name alice            # prints the key once: keep it, it cannot be shown again
    svg2-keys create --name ops --admin      # an admin key sees and manages every job
    svg2-keys list                           # id, name, admin, created (never the secret)
    svg2-keys revoke key_0123456789abcdef    # requests with it get 401 from the next request on

Redis: ``--redis-url`` or ``SVG2_REDIS_URL`` (the API's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import redis

from service.auth import KeyStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="svg2-keys", description="Manage svg2 API keys.")
    parser.add_argument("--redis-url", default=os.environ.get("SVG2_REDIS_URL", "redis://127.0.0.1:6379/0"))
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a new key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--admin", action="store_true", help="the key sees and manages every job")
    sub.add_parser("list", help="list keys (ids and names, never secrets)")
    revoke = sub.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    keys = KeyStore(redis.Redis.from_url(args.redis_url, socket_connect_timeout=5))
    try:
        if args.command == "create":
            token, info = keys.create(args.name, admin=args.admin)
            print(json.dumps({"id": info.id, "name": info.name, "admin": info.admin, "key": token}))
            print("store the key now: only its hash is kept", file=sys.stderr)
        elif args.command == "list":
            for info in keys.list():
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(info.created_at))
                print(f"{info.id}\t{info.name}\t{'admin' if info.admin else 'user'}\t{created}")
        elif args.command == "revoke":
            if not keys.revoke(args.key_id):
                print(f"no key with id {args.key_id!r}", file=sys.stderr)
                return 1
            print(f"revoked {args.key_id}")
    except redis.RedisError as exc:
        print(f"svg2-keys: Redis at {args.redis_url} is unavailable: {exc}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
