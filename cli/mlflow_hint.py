"""Where to look at a loop in MLflow's UI, for the tracking URI in use: a server's own address, or the
`mlflow ui` command that serves a local database (and the address it will have)."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tuneloop.credentials import redact_text
from tuneloop.registry.tracking import run_url

LOCAL_UI = "http://127.0.0.1:5000"


@dataclass(frozen=True)
class UiHint:
    ui: str  # the UI's base address
    command: str | None  # what starts it (None: a server is already running there)

    def run_link(self, experiment_id: str, run_id: str) -> str:
        return run_url(self.ui, experiment_id, run_id)


def ui_hint(tracking_uri: str) -> UiHint:
    """A tracking server (http[s]) is its own UI; anything else (a SQLite or other database, a folder)
    is served by `mlflow ui` on 127.0.0.1:5000. Credentials in the URI are never printed."""
    scheme = urlsplit(tracking_uri).scheme
    if scheme in ("http", "https"):
        parts = urlsplit(tracking_uri)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        netloc += f":{parts.port}" if parts.port else ""
        return UiHint(urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")), None)
    return UiHint(
        LOCAL_UI,
        f"{venv_command('mlflow')} ui --backend-store-uri {shlex.quote(redact_text(tracking_uri))} --port 5000",
    )


def venv_command(name: str) -> str:
    """A command installed beside this Python, relative to the working directory when it is below it."""
    executable = Path(sys.executable).with_name(name)
    try:
        return shlex.quote(str(executable.relative_to(Path(os.getcwd()))))
    except ValueError:
        return shlex.quote(str(executable))
