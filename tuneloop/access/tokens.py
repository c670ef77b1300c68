"""Scoped API tokens: feedback writers and operators hold different tokens.

A token is 32 random bytes (URL-safe text, prefixed ``tl_``) shown once when created; the ``api_tokens``
table keeps only its SHA-256 digest, its name, scope and when it was created and last used. A
``feedback`` token may post feedback; an ``admin`` token may also move traffic (``/v1/admin/*``).
``TUNELOOP_API_TOKEN``, when set, is one more admin token (named ``env``) for set-ups that hand the
service its token through the environment.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.ops_tables import ApiTokenRow

Scope = Literal["feedback", "admin"]
SCOPES: tuple[Scope, ...] = ("feedback", "admin")
ENV_TOKEN = "TUNELOOP_API_TOKEN"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
TOUCH_EVERY = timedelta(
    seconds=60
)  # last_used_at is written at most this often per token (one write, not one per call)


class TokenError(ValueError):
    """A refused token operation (bad name or scope, a name in use, no such token)."""


@dataclass(frozen=True)
class Caller:
    """Who presented a valid token: its name and scope."""

    name: str
    scope: Scope

    def may(self, scope: Scope) -> bool:
        return self.scope == "admin" or self.scope == scope


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create(config: LoopConfig, name: str, scope: str) -> str:
    """A new token named ``name`` with ``scope``; returns the token (the only time it is seen)."""
    if not NAME.fullmatch(name or ""):
        raise TokenError(
            f"name: {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if scope not in SCOPES:
        raise TokenError(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
    if name == "env":
        raise TokenError("name: 'env' is the environment's token (TUNELOOP_API_TOKEN); pick another name")
    token = "tl_" + secrets.token_urlsafe(32)
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        session.add(ApiTokenRow(name=name, scope=scope, token_hash=digest(token)))
        try:
            session.commit()
        except IntegrityError:
            raise TokenError(f"name: a token named {name!r} exists; revoke it first or pick another name") from None
    return token


def revoke(config: LoopConfig, name: str) -> None:
    """Delete the named token; services refuse it from their next request on."""
    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        row = session.get(ApiTokenRow, name)
        if row is None:
            raise TokenError(f"name: no token named {name!r}")
        session.delete(row)


def listing(config: LoopConfig) -> list[dict]:
    """Every token's name, scope, creation and last use (never the token or its digest)."""
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        rows = session.scalars(select(ApiTokenRow).order_by(ApiTokenRow.name))
        return [
            {"name": r.name, "scope": r.scope, "created_at": _iso(r.created_at), "last_used_at": _iso(r.last_used_at)}
            for r in rows
        ]


def _iso(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).isoformat(timespec="seconds")


def authenticate(store: FeedbackStore, authorization: str | None) -> Caller | None:
    """The caller behind an ``Authorization: Bearer ...`` header, or None when missing or unknown."""
    if not authorization or not authorization.startswith("Bearer ") or len(authorization) > 512:
        return None
    token = authorization[len("Bearer ") :]
    env = os.environ.get(ENV_TOKEN)
    if env and hmac.compare_digest(token.encode(), env.encode()):
        return Caller("env", "admin")
    wanted = digest(token)
    with Session(store.engine) as session:
        row = session.scalar(select(ApiTokenRow).where(ApiTokenRow.token_hash == wanted))
        # the digest lookup finds the row; the comparison that admits it takes the same time whatever matched
        if row is None or not hmac.compare_digest(row.token_hash, wanted):
            return None
        caller = Caller(row.name, row.scope)  # type: ignore[arg-type]
        now = datetime.now(UTC)
        last = (
            row.last_used_at
            if row.last_used_at is None or row.last_used_at.tzinfo
            else row.last_used_at.replace(tzinfo=UTC)
        )
        if last is None or now - last > TOUCH_EVERY:
            row.last_used_at = now
            session.commit()
        return caller
