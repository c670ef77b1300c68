"""Credentials kept secret: one redaction for everything shown, logged or stored, and secret files.

A password travels only in the environment of the processes that use it or in a file only its owner
can read (0600). Whatever is serialised for display, logs, MLflow artifacts or Prefect parameters goes
through :func:`redact` (the URL fields of ``LoopConfig`` do so whenever they are dumped as JSON), so a
URL keeps its scheme, user, host and database but shows ``***`` for its password. A process that
receives such a URL (a Prefect worker running a deployment's flow run) takes the password back from
its own environment with :func:`restore_password`.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

REDACTED = "***"
# scheme://user:password@ : the password is what lies between the user's colon and the host's @
# (URL syntax percent-encodes any @ / ? # inside a password); bounded, so linear on any input
_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s:/?#@]{0,256}):(?P<password>[^\s@/?#]{1,1024})@"
)
# the environment variables whose URLs may carry a database password for LoopConfig's stores
URL_VARIABLES = ("TUNELOOP_FEEDBACK_URL", "TUNELOOP_OPTUNA_URL", "TUNELOOP_LOCK_URL")


def redact_text(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` in it replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['head']}:{REDACTED}@", text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (strings, and dicts, lists and tuples of them) with every URL password redacted."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _same_database(a, b) -> bool:
    return (a.drivername.split("+")[0], a.username, a.host, a.port, a.database) == (
        b.drivername.split("+")[0],
        b.username,
        b.host,
        b.port,
        b.database,
    )


def restore_password(url: str | None) -> str | None:
    """A URL whose password was redacted gets it back from this process's environment (a
    ``TUNELOOP_*_URL`` naming the same user, server and database); with none there, the URL goes on
    without a password, so that libpq takes it from ``PGPASSFILE`` or ``PGPASSWORD``."""
    if not url or f":{REDACTED}@" not in url:
        return url
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.password != REDACTED:
        return url
    for name in URL_VARIABLES:
        candidate = os.environ.get(name)
        if not candidate or f":{REDACTED}@" in candidate:
            continue
        try:
            known = make_url(candidate)
        except Exception:  # noqa: BLE001 - a malformed variable is not this URL's source
            continue
        if known.password and _same_database(parsed, known):
            return parsed.set(password=known.password).render_as_string(hide_password=False)
    return parsed._replace(password=None).render_as_string(hide_password=False)  # set() takes None as 'keep'


# --- secret files ---------------------------------------------------------------------------------


def secret_dir(path: Path) -> Path:
    """``path`` as a directory only its owner may enter (0700)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` readable by its owner alone: created 0600 (never world-readable,
    not even for an instant) and moved into place whole."""
    secret_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)
    os.replace(tmp, path)


def read_secret(path: Path) -> str:
    """The secret in ``path``; refuses a file that others can read or write."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(f"{path} is readable or writable by others (mode {mode:o}): chmod 600 {path}")
    return path.read_text().strip()


def ensure_secret(path: Path, given: str | None = None, nbytes: int = 32) -> str:
    """The secret in ``path``: ``given`` (a team's own, from the environment) when set, else the one
    already there, else a new random one; always stored 0600."""
    if given:
        if not path.exists() or read_secret(path) != given:
            write_secret(path, given)
        return given
    if path.exists():
        return read_secret(path)
    value = secrets.token_urlsafe(nbytes)
    write_secret(path, value)
    return value
