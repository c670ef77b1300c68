"""Receipts: proof that the service served an answer, so that feedback can only be about real answers.

Every /predict answer carries ``receipt`` = HMAC-SHA256, under a server-side key, of its request id,
model version, user id and kind. ``/v1/feedback`` recomputes it from the record's own fields and
refuses a record whose receipt is missing or does not match: a client cannot claim a version or
request id it was never served, nor move one user's answer to another user id. (/predict is open to
apps, so whoever may call it can obtain answers, and receipts, for user ids of its choosing: the
feedback token and the per-user rate limit bound what such a caller can send.)

The key is ``TUNELOOP_RECEIPT_KEY``, else 32 random bytes kept in the operations database's settings
(made on first use), so every worker and replica of the service signs and verifies alike.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tuneloop.data.feedback import FeedbackStore

SETTING = "receipt_key"
ENV = "TUNELOOP_RECEIPT_KEY"


def receipt_key(store: FeedbackStore) -> bytes:
    if os.environ.get(ENV):
        return os.environ[ENV].encode()
    from tuneloop.data.ops_tables import SettingRow

    with Session(store.engine) as session:
        row = session.get(SettingRow, SETTING)
        if row is None:
            session.add(SettingRow(key=SETTING, value=secrets.token_hex(32)))
            try:
                session.commit()
            except IntegrityError:  # another worker made it first: use theirs
                session.rollback()
            row = session.get(SettingRow, SETTING)
        return bytes.fromhex(row.value)


def sign(key: bytes, request_id: str, model_version: str, user_id: str, kind: str) -> str:
    """The receipt of one answer (64 hex characters)."""
    # stripped as feedback records strip them; each field length-prefixed, so no choice of field values
    # can make two different answers sign alike
    fields = [v.strip() for v in (request_id, model_version, user_id, kind)]
    message = "".join(f"{len(v)}:{v}" for v in fields).encode("utf-8", "surrogatepass")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def verify(key: bytes, receipt: str | None, request_id: str, model_version: str, user_id: str, kind: str) -> bool:
    if not receipt:
        return False
    return hmac.compare_digest(receipt.encode(), sign(key, request_id, model_version, user_id, kind).encode())
