"""The routing flag: one per task kind, in the operations database, evaluated with OpenFeature + flagd.

The flag decides, per user, whether a request goes to the ``champion`` or the ``challenger``, with
flagd's ``fractional`` rule on the targeting key (the user id), so a user stays on the same side as
the share ramps up. Its definition lives in the ``flags`` table of the operations (feedback)
database, which the CLI, the flows and every service share wherever they run. Each service process
mirrors that row into a flag file of its own that the in-process flagd provider evaluates, so a
share change or a rollback reaches every replica within ``POLL_S`` + ``POLL_MS``.

A share names the challenger version it was given to (the challenger variant's value is
``challenger@<version>``), and a service routes a user to its challenger only when that is the
version it serves: a newly registered challenger gets 0 % until deploy gives it its canary share,
whatever share its predecessor had, and the share and its version change in one write.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus
from sqlalchemy.orm import Session

from tuneloop.config import LoopConfig
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.ops_tables import FlagRow

log = logging.getLogger(__name__)
POLL_S = 0.1  # how often a service reads the flag row: bounds how fast a rollback reaches it
POLL_MS = 100  # how often the flagd provider re-reads its mirrored file
SCHEMA = "https://flagd.dev/schema/v0/flags.json"


def route_flag(challenger_percent: int, version: str | None = None) -> dict:
    """The flagd definition that sends ``challenger_percent`` % of users (sticky by user id) to challenger ``version``."""
    if (
        isinstance(challenger_percent, bool)
        or not isinstance(challenger_percent, int)
        or not 0 <= challenger_percent <= 100
    ):
        raise ValueError(f"challenger_percent must be an integer within 0..100, got {challenger_percent!r}")
    return {
        "state": "ENABLED",
        "variants": {"champion": "champion", "challenger": f"challenger@{version}" if version else "challenger"},
        "defaultVariant": "champion",
        "targeting": {"fractional": [["challenger", challenger_percent], ["champion", 100 - challenger_percent]]},
    }


def percent_of(definition: dict | None) -> int:
    if not definition:
        return 0
    return dict((v, w) for v, w in definition["targeting"]["fractional"])["challenger"]


def version_of(definition: dict | None) -> str | None:
    """The challenger version a definition's share was given to (None: no version, so no share)."""
    if not definition:
        return None
    return definition["variants"]["challenger"].partition("@")[2] or None


def _definition(store: FeedbackStore, key: str) -> dict | None:
    with Session(store.engine) as session:
        row = session.get(FlagRow, key)
        return json.loads(row.definition) if row else None


def challenger_percent(config: LoopConfig, version: str | None = None) -> int:
    """The challenger's current share of users (0 when the flag was never set); with ``version``, that
    version's share (0 when the share was given to another version)."""
    definition = _definition(FeedbackStore(config.feedback_db), config.flag_key)
    if version is not None and version_of(definition) != str(version):
        return 0
    return percent_of(definition)


def share_version(config: LoopConfig) -> str | None:
    """The version the current share was given to."""
    return version_of(_definition(FeedbackStore(config.feedback_db), config.flag_key))


def set_challenger_percent(config: LoopConfig, percent: int, by: str | None = None, version: str | None = None) -> None:
    """Give challenger ``version`` (default: the one registered now) ``percent`` % of users, for every
    service of this kind; they follow within ``POLL_S`` + ``POLL_MS``. Callers that decided on a
    version (deploy, the rollout flow) name it, so that a challenger registered meanwhile gets nothing."""
    if version is None and percent:
        from tuneloop.registry.versions import alias_version

        version = alias_version(config.model_name, "challenger")
    definition = json.dumps(route_flag(percent, str(version) if version else None))
    store = FeedbackStore(config.feedback_db)
    with Session(store.engine) as session, session.begin():
        row = session.get(FlagRow, config.flag_key, with_for_update=True)
        if row is None:
            session.add(FlagRow(key=config.flag_key, definition=definition, by=by))
        else:
            row.definition, row.at, row.by = definition, datetime.now(UTC), by


def write_flag_file(path: Path, flag_key: str, definition: dict | None) -> None:
    """A flagd flag file holding one flag, replaced atomically (the provider never reads half a file)."""
    flags = {"$schema": SCHEMA, "flags": {flag_key: definition or route_flag(0)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".flags-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(flags, f, indent=2)
    os.replace(tmp, path)


class Router:
    """Sticky champion/challenger routing by user id, following the flag row live.

    A background thread copies the row into this process's own flag file whenever it changes;
    if the database is unreachable the last known share keeps serving.
    """

    def __init__(self, config: LoopConfig, mirror: Path | None = None, poll_s: float = POLL_S):
        self.flag_key = config.flag_key
        self.store = FeedbackStore(config.feedback_db)
        self.mirror = mirror or config.home.resolve() / "flags" / f"{config.flag_key}.{os.getpid()}.{id(self):x}.json"
        self._seen = _definition(self.store, self.flag_key)
        write_flag_file(self.mirror, self.flag_key, self._seen)
        self.provider = FlagdProvider(
            resolver_type=ResolverType.FILE, offline_flag_source_path=str(self.mirror), deadline_ms=POLL_MS
        )
        domain = f"tuneloop:{self.mirror}"
        api.set_provider(self.provider, domain)
        self.client = api.get_client(domain)
        deadline = time.monotonic() + 10
        while self.client.get_provider_status() != ProviderStatus.READY:  # initialisation runs in the background
            if time.monotonic() > deadline:
                raise RuntimeError(f"flag provider not ready for {self.mirror}: {self.client.get_provider_status()}")
            time.sleep(0.01)
        self._stop = threading.Event()
        threading.Thread(target=self._follow, args=(poll_s,), name="tuneloop-flag-sync", daemon=True).start()

    def _follow(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                current = _definition(self.store, self.flag_key)
            except Exception as err:  # noqa: BLE001  keep routing on the last known share
                log.warning("flag row unreadable, keeping the last share: %s", err)
                continue
            if current != self._seen:
                write_flag_file(self.mirror, self.flag_key, current)
                self._seen = current

    @property
    def percent(self) -> int:
        """The share this router currently applies."""
        return percent_of(self._seen)

    @property
    def version(self) -> str | None:
        """The challenger version that share was given to."""
        return version_of(self._seen)

    def share_of(self, challenger: str | None) -> int:
        """The share challenger version ``challenger`` gets now (0 unless the share was given to it)."""
        return self.percent if challenger is not None and self.version == str(challenger) else 0

    def variant(self, user_id: str, challenger: str | None = None) -> str:
        """'champion' or 'challenger' for a service whose challenger is version ``challenger``: a user
        the flag sends to another version's share stays on the champion; so does every user whenever
        the flag cannot be evaluated."""
        value = self.client.get_string_value(self.flag_key, "champion", EvaluationContext(targeting_key=user_id))
        kind, _, version = value.partition("@")
        if kind != "challenger" or not version or challenger is None or version != str(challenger):
            return "champion"
        return "challenger"

    def close(self) -> None:
        self._stop.set()
        self.provider.shutdown()  # its file watcher stops before the file goes
        self.mirror.unlink(missing_ok=True)
