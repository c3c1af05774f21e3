"""API tokens, roles and per-token rate limits of the NL-query service.

A token is ``cty_`` followed by 43 URL-safe characters (256 random bits). It is shown once, when
created; the table ``api_tokens`` keeps only its SHA-256 with the holder's name and role. Roles
are ordered viewer < operator < admin.

A route states the lowest role it accepts with ``require_role`` (or the ``ViewerDep`` /
``OperatorDep`` / ``AdminDep`` aliases), which answers 401 for a missing, unknown or revoked
token, 429 with ``Retry-After`` when the token has used up its rate, and 403 when the role is
too low. It finds the service's connection pool and rate limiter on ``app.state.pool`` and
``app.state.rate_limiter``.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal, cast, get_args

import psycopg
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg.rows import class_row

from cityos.nlq.errors import NLQError

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_PREFIX = "cty_"  # noqa: S105 - a prefix, not a secret
TOKEN_PATTERN = re.compile(r"^cty_[A-Za-z0-9_-]{43}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class TokenError(NLQError):
    """A token cannot be created or revoked as asked (bad name or role)."""


class TokenNameTaken(TokenError):
    """A live token of that name exists."""


class TokenNotFound(TokenError):
    """No live token of that name."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token holder's name and role."""

    name: str
    role: Role
    token_id: int

    def has_role(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: everything but the token itself."""

    token_id: int
    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def create_token(conn: psycopg.Connection, name: str, role: str) -> tuple[str, TokenInfo]:
    """A new token for ``name`` with ``role``: (the token, to show once; what is stored)."""
    if role not in ROLE_RANK:
        raise TokenError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    if not NAME_PATTERN.match(name):
        raise TokenError(
            f"bad token name {name!r}: 1-64 letters, digits and . _ @ -, starting with a letter "
            "or digit"
        )
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        with conn.cursor(row_factory=class_row(TokenInfo)) as cur:
            cur.execute(
                "INSERT INTO api_tokens (name, role, token_sha256) VALUES (%s, %s, %s)"
                " RETURNING token_id, name, role, created_at, revoked_at, last_used_at",
                (name, role, hash_token(token)),
            )
            info = cur.fetchone()
    except psycopg.errors.UniqueViolation as err:
        raise TokenNameTaken(f"a live token named {name!r} exists; revoke it first") from err
    assert info is not None
    return token, info


def list_tokens(conn: psycopg.Connection) -> list[TokenInfo]:
    with conn.cursor(row_factory=class_row(TokenInfo)) as cur:
        cur.execute(
            "SELECT token_id, name, role, created_at, revoked_at, last_used_at"
            " FROM api_tokens ORDER BY created_at, token_id"
        )
        return cur.fetchall()


def revoke_token(conn: psycopg.Connection, name: str) -> TokenInfo:
    """Revoke the live token of ``name``; it stops working at once."""
    with conn.cursor(row_factory=class_row(TokenInfo)) as cur:
        cur.execute(
            "UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL"
            " RETURNING token_id, name, role, created_at, revoked_at, last_used_at",
            (name,),
        )
        info = cur.fetchone()
    if info is None:
        raise TokenNotFound(f"no live token named {name!r}")
    return info


def authenticate(conn: psycopg.Connection, token: str) -> Principal | None:
    """The holder of a live token (its last use recorded), or None."""
    if not TOKEN_PATTERN.match(token):
        return None
    row = conn.execute(
        "UPDATE api_tokens SET last_used_at = now()"
        " WHERE token_sha256 = %s AND revoked_at IS NULL RETURNING name, role, token_id",
        (hash_token(token),),
    ).fetchone()
    if row is None:
        return None
    name, role, token_id = row
    return Principal(name=name, role=cast(Role, role), token_id=token_id)


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute, in bursts of up to as many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}  # key -> (requests left, at)
        self._lock = threading.Lock()

    def take(self, key: Hashable) -> float | None:
        """Spend one request of ``key``: None when allowed, else seconds until one is."""
        now = self._clock()
        with self._lock:
            left, at = self._buckets.get(key, (self.capacity, now))
            left = min(self.capacity, left + (now - at) * self.refill_per_s)
            if left >= 1.0:
                self._buckets[key] = (left - 1.0, now)
                return None
            self._buckets[key] = (left, now)
            return (1.0 - left) / self.refill_per_s


_bearer = HTTPBearer(auto_error=False, description="an API token from `cityos token create`")


def _role_dependency(role: Role) -> Callable[..., Principal]:
    def principal(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        found = None
        if credentials is not None:
            with request.app.state.pool.connection() as conn:
                found = authenticate(conn, credentials.credentials)
        if found is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing, unknown or revoked API token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        wait_s = request.app.state.rate_limiter.take(found.token_id)
        if wait_s is not None:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                "too many requests with this token; try again later",
                headers={"Retry-After": str(math.ceil(wait_s))},
            )
        if not found.has_role(role):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, f"this needs the {role} role; the token is {found.role}"
            )
        return found

    return principal


# One dependency per role, so a route that names the same role twice is authorised once.
_DEPENDENCIES = {role: _role_dependency(role) for role in ROLES}


def require_role(role: Role) -> Callable[..., Principal]:
    """The FastAPI dependency that admits tokens of ``role`` or higher."""
    return _DEPENDENCIES[role]


ViewerDep = Annotated[Principal, Depends(require_role("viewer"))]
OperatorDep = Annotated[Principal, Depends(require_role("operator"))]
AdminDep = Annotated[Principal, Depends(require_role("admin"))]
