"""Pseudonymous user ids: what the shadow log stores instead of a user id, and how ``forget`` finds a
user's rows again. A salted HMAC: the same user gets the same hash on every replica, and the hash
cannot be reversed by hashing known ids without the salt."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore


def shadow_salt(config: LoopConfig) -> bytes:
    """``TUNELOOP_SHADOW_SALT``, else a random salt kept in the operations database (made on first use),
    so every replica hashes a user id alike and the hash cannot be reversed by hashing known ids."""
    if os.environ.get("TUNELOOP_SHADOW_SALT"):
        return os.environ["TUNELOOP_SHADOW_SALT"].encode()
    from sqlalchemy.exc import IntegrityError
    from sqlalchemy.orm import Session

    from tuneloop.data.ops_tables import SettingRow

    with Session(FeedbackStore(config.feedback_db).engine) as session:
        row = session.get(SettingRow, "shadow_salt")
        if row is None:
            session.add(SettingRow(key="shadow_salt", value=secrets.token_hex(32)))
            try:
                session.commit()
            except IntegrityError:  # another replica made it first
                session.rollback()
            row = session.get(SettingRow, "shadow_salt")
        return row.value.encode()


def user_hash(salt: bytes, user_id: str) -> str:
    """HMAC-SHA256 of the user id under the salt (64 hex characters): same user, same hash; no id."""
    return hmac.new(salt, user_id.encode(), hashlib.sha256).hexdigest()
