"""Which model produced a feedback record: a registered version, the bare base, or an answer from
outside tuneloop (a hosted model, another system) under the documented convention
``model_version: external:<name>`` (e.g. ``external:gpt-4o``, ``external:helpdesk-2024``).

External records are stored, curated and trained on like the others; curation counts them
(``source.external``) so a dataset's lineage says how many came from outside. A registry that cannot
be reached is reported as such, never as "unknown version".
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Literal

EXTERNAL_PREFIX = "external:"
EXTERNAL_HINT = (
    f"records from a hosted model or another system: set model_version to '{EXTERNAL_PREFIX}<name>' "
    f"(e.g. {EXTERNAL_PREFIX}gpt-4o); or import without the check (--no-check-versions)"
)

Status = Literal["known", "external", "unknown"]


class RegistryUnreachable(RuntimeError):
    """The MLflow registry did not answer: no version can be confirmed or refused."""


def is_external(version: str) -> bool:
    return version.startswith(EXTERNAL_PREFIX) and bool(version[len(EXTERNAL_PREFIX) :].strip())


def probe(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Raise RegistryUnreachable when an MLflow server at ``tracking_uri`` does not answer at all
    (any HTTP answer, even 401, is a server that is there). Local stores are always reachable."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise RegistryUnreachable(f"MLflow at {_without_credentials(tracking_uri)} is unreachable ({reason})") from None


def version_status(model_name: str, version: str) -> Status:
    """known (a registered version or 'base'), external (the convention) or unknown; raises
    RegistryUnreachable when the registry fails for any reason but the version's absence."""
    if version == "base":
        return "known"
    if version.startswith(EXTERNAL_PREFIX):
        return "external" if is_external(version) else "unknown"
    if not version.isdigit():  # registry versions are integers; anything else cannot exist
        return "unknown"
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_model_version(model_name, version)
        return "known"
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return "unknown"
        raise RegistryUnreachable(
            f"the MLflow registry failed to answer ({err.error_code}: {str(err)[:200]})"
        ) from None
    except OSError as err:
        raise RegistryUnreachable(f"the MLflow registry is unreachable ({type(err).__name__})") from None


def unknown_reason(model_name: str, version: str) -> str:
    """What a refused version's record says: what is wrong and what to do."""
    if version.startswith(EXTERNAL_PREFIX):
        return f"'{version}' names no system: write {EXTERNAL_PREFIX}<name>"
    return f"unknown version {version!r} of {model_name} (the registry has no such version); {EXTERNAL_HINT}"


def registry_checker(model_name: str) -> Callable[[str], Status]:
    return lambda version: version_status(model_name, version)


def _without_credentials(uri: str) -> str:
    from tuneloop.credentials import redact_text

    return redact_text(uri)
