"""API keys (Bearer tokens) and per-key request rate limits.

A key is ``svg2_`` + 43 url-safe characters (256 random bits). Only its SHA-256 is stored, in Redis:

- ``svg2:apikey:{sha256 hex}`` hash: ``id`` (``key_<16 hex>``, the owner id written on jobs), ``name``,
  ``admin`` (``1``/``0``), ``created_at``.
- ``svg2:apikeys`` hash: key id -> sha256 hex (listing and revocation by id).
- ``svg2:rate:{sha256 prefix}:{unix second}`` counter with a 2 s TTL (fixed one-second window).

Looking a key up and counting its request is one pipelined round trip; the stored digest is compared
with :func:`hmac.compare_digest`. Revocation deletes the hash, so it takes effect on the next request.

Keys are made with the ``svg2-keys`` console script (:mod:`service.keys_cli`). An admin key sees and
manages every job; any other key sees only the jobs it created (others read as 404).
With ``SVG2_AUTH_DISABLED=1`` (local development only) every request is the anonymous admin.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Request

from service.errors import APIError

KEY_PREFIX = "svg2_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``key_id`` is the owner id stored on their jobs ('' when auth is disabled)."""

    key_id: str
    name: str
    admin: bool

    def may_see(self, owner: str) -> bool:
        return self.admin or hmac.compare_digest(owner, self.key_id)


ANONYMOUS = Principal(key_id="", name="anonymous (auth disabled)", admin=True)


@dataclass(frozen=True)
class ApiKeyInfo:
    id: str
    name: str
    admin: bool
    created_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """API keys in Redis (hashed). ``redis`` may use either ``decode_responses`` setting."""

    def __init__(self, redis_client: redis.Redis, prefix: str = "svg2") -> None:
        self.redis = redis_client
        self.prefix = prefix
        self._index_key = f"{prefix}:apikeys"

    def _key(self, digest: str) -> str:
        return f"{self.prefix}:apikey:{digest}"

    def create(self, name: str, admin: bool = False) -> tuple[str, ApiKeyInfo]:
        """A new key: returns the secret (shown once, never stored) and its info."""
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(token)
        info = ApiKeyInfo(id=f"key_{uuid.uuid4().hex[:16]}", name=name, admin=admin, created_at=time.time())
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self._key(digest), mapping={"id": info.id, "name": name, "admin": "1" if admin else "0",
                                              "created_at": repr(info.created_at), "digest": digest})
        pipe.hset(self._index_key, info.id, digest)
        pipe.execute()
        return token, info

    def list(self) -> list[ApiKeyInfo]:
        """Every key's info (never the secret), oldest first."""
        digests = [_text(d) for d in self.redis.hvals(self._index_key)]
        pipe = self.redis.pipeline(transaction=False)
        for digest in digests:
            pipe.hgetall(self._key(digest))
        keys = [_info(h) for h in pipe.execute() if h]
        return sorted(keys, key=lambda k: k.created_at)

    def revoke(self, key_id: str) -> bool:
        """Delete a key by id; True if it existed. Requests with it get 401 from then on."""
        digest = self.redis.hget(self._index_key, key_id)
        if digest is None:
            return False
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._key(_text(digest)))
        pipe.hdel(self._index_key, key_id)
        pipe.execute()
        return True

    def authenticate(self, token: str, rate_limit_rps: int) -> tuple[Principal | None, bool]:
        """(the key's principal or None, whether this request is over the key's rate limit); one
        round trip. The limit is a fixed one-second window per key (0: no limit)."""
        pipe, digest = self._auth_pipeline(self.redis, token, rate_limit_rps)
        return self._judge(pipe.execute(), digest, rate_limit_rps)

    async def aauthenticate(self, aredis, token: str, rate_limit_rps: int) -> tuple[Principal | None, bool]:
        """:meth:`authenticate` through an asyncio Redis client (no threadpool hop per request)."""
        pipe, digest = self._auth_pipeline(aredis, token, rate_limit_rps)
        return self._judge(await pipe.execute(), digest, rate_limit_rps)

    def _auth_pipeline(self, client, token: str, rate_limit_rps: int):
        digest = _digest(token)
        rate_key = f"{self.prefix}:rate:{digest[:32]}:{int(time.time())}"
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(self._key(digest))
        if rate_limit_rps:
            pipe.incr(rate_key)
            pipe.expire(rate_key, 2)
        return pipe, digest

    @staticmethod
    def _judge(results: list, digest: str, rate_limit_rps: int) -> tuple[Principal | None, bool]:
        h = {_text(k): _text(v) for k, v in results[0].items()}
        if not h or not hmac.compare_digest(h.get("digest", ""), digest):
            return None, False
        over = bool(rate_limit_rps) and int(results[1]) > rate_limit_rps
        return Principal(key_id=h["id"], name=h.get("name", ""), admin=h.get("admin") == "1"), over


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _info(h: dict) -> ApiKeyInfo:
    d = {_text(k): _text(v) for k, v in h.items()}
    return ApiKeyInfo(id=d["id"], name=d.get("name", ""), admin=d.get("admin") == "1",
                      created_at=float(d.get("created_at") or 0))


async def get_principal(request: Request) -> Principal:
    """The dependency every ``/v1`` route takes: 401 without a valid ``Authorization: Bearer`` key,
    429 (``Retry-After: 1``) over the key's requests-per-second limit."""
    ctx = request.app.state.svg2
    settings = ctx.settings
    if settings.auth_disabled:
        return ANONYMOUS
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise APIError(401, "missing_api_key", "send an API key: 'Authorization: Bearer svg2_...'",
                       headers={"WWW-Authenticate": "Bearer"})
    principal, over = await ctx.keys.aauthenticate(ctx.aredis, token, settings.rate_limit_rps)
    if principal is None:
        raise APIError(401, "invalid_api_key", "the API key is unknown or was revoked",
                       headers={"WWW-Authenticate": "Bearer"})
    if over:
        raise APIError(429, "rate_limit_exceeded",
                       f"more than {settings.rate_limit_rps} requests per second with this API key",
                       headers={"Retry-After": "1"})
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
