"""The routing flag: a flagd flag file and its OpenFeature evaluation.

One flag per task kind decides, per user, whether a request goes to the ``champion`` or the
``challenger``. The split is flagd's ``fractional`` rule on the targeting key (the user id), so a
user stays on the same side as the share ramps up. Files are replaced atomically so the in-process
provider's watcher never reads half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.provider import ProviderStatus

POLL_MS = 100  # how often the provider looks at the file: bounds how fast a rollback takes effect


def route_flag(challenger_percent: int) -> dict:
    if not 0 <= challenger_percent <= 100:
        raise ValueError(f"challenger_percent must be within 0..100, got {challenger_percent}")
    return {
        "state": "ENABLED",
        "variants": {"champion": "champion", "challenger": "challenger"},
        "defaultVariant": "champion",
        "targeting": {"fractional": [["challenger", challenger_percent], ["champion", 100 - challenger_percent]]},
    }


def read_flags(flag_file: Path) -> dict:
    path = Path(flag_file)
    return json.loads(path.read_text()) if path.exists() else {"$schema": "https://flagd.dev/schema/v0/flags.json", "flags": {}}


def challenger_percent(flag_file: Path, flag_key: str) -> int:
    flag = read_flags(flag_file)["flags"].get(flag_key)
    if not flag:
        return 0
    return dict((v, w) for v, w in flag["targeting"]["fractional"])["challenger"]


def set_challenger_percent(flag_file: Path, flag_key: str, percent: int) -> None:
    """Write the share atomically; every service watching the file follows within ~POLL_MS."""
    flags = read_flags(flag_file)
    flags["flags"][flag_key] = route_flag(percent)
    path = Path(flag_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".flags-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(flags, f, indent=2)
    os.replace(tmp, path)


class Router:
    """Sticky champion/challenger routing by user id, following the flag file live."""

    def __init__(self, flag_file: Path, flag_key: str):
        if not Path(flag_file).exists():
            set_challenger_percent(flag_file, flag_key, 0)
        self.flag_key = flag_key
        provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(flag_file),
                                 deadline_ms=POLL_MS)
        domain = f"tuneloop:{flag_file}:{flag_key}"
        api.set_provider(provider, domain)
        self.client = api.get_client(domain)
        deadline = time.monotonic() + 10
        while self.client.get_provider_status() != ProviderStatus.READY:  # initialisation runs in the background
            if time.monotonic() > deadline:
                raise RuntimeError(f"flag provider not ready for {flag_file}: {self.client.get_provider_status()}")
            time.sleep(0.01)

    def variant(self, user_id: str) -> str:
        """'champion' or 'challenger'; 'champion' whenever the flag cannot be evaluated."""
        value = self.client.get_string_value(self.flag_key, "champion", EvaluationContext(targeting_key=user_id))
        return value if value in ("champion", "challenger") else "champion"
