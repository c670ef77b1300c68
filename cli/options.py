"""How every command builds its LoopConfig: options the user gave override the environment, which
overrides an env file, which overrides the defaults. Options therefore default to None (not to
literals): an option left out never hides a ``TUNELOOP_*`` variable.

A bad value is one line naming where it came from (the variable or the option), exit status 2;
``TUNELOOP_*`` variables that no field reads get a warning with the closest known name.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError
from rich.console import Console

from tuneloop.config import LoopConfig, apply_environment

PREFIX, NESTED = "TUNELOOP_", "__"
# TUNELOOP_* variables read outside LoopConfig (secrets of the service, the stack, test tooling)
OTHER_VARIABLES = {
    "TUNELOOP_API_TOKEN",
    "TUNELOOP_REGISTRY_POLL_S",
    "TUNELOOP_SHADOW_SALT",
    "TUNELOOP_RECEIPT_KEY",
    "TUNELOOP_CACHE",
    "TUNELOOP_UI_SCREENSHOTS",
    "TUNELOOP_ENV_FILE",
}
OTHER_PREFIXES = ("TUNELOOP_STACK_",)
err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line per problem, however narrow the terminal


class KindChoice(str, Enum):
    generation = "generation"
    classification = "classification"


KindOpt = typer.Option(
    None, "--kind", "-k", help="What is tuned [default: $TUNELOOP_KIND, else generation]", show_default=False
)
HomeOpt = typer.Option(None, "--home", help="State directory [default: $TUNELOOP_HOME, else ./.tuneloop]")
TinyOpt = typer.Option(
    None,
    "--tiny/--no-tiny",
    help="Tiny random models (smoke test) [default: $TUNELOOP_TINY, else off]",
    show_default=False,
)


def env_name(path: tuple[str, ...]) -> str:
    """The variable that sets a (possibly nested) field: ('tune', 'n_trials') -> TUNELOOP_TUNE__N_TRIALS."""
    return PREFIX + NESTED.join(part.upper() for part in path)


def field_paths(model: type[BaseModel] = LoopConfig, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf field of the configuration, nested sections opened."""
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from field_paths(annotation, prefix + (name,))
        else:
            yield prefix + (name,)


def known_variables() -> set[str]:
    sections = {env_name((name,)) for name, info in LoopConfig.model_fields.items()}  # a whole section as JSON
    return {env_name(p) for p in field_paths()} | sections | OTHER_VARIABLES


def unknown_variables(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``TUNELOOP_*`` variables no setting reads, each with the closest known name (a likely misspelling)."""
    environ = os.environ if environ is None else environ
    known = known_variables()
    unknown = [
        name
        for name in environ
        if name.upper().startswith(PREFIX) and name.upper() not in known and not name.upper().startswith(OTHER_PREFIXES)
    ]
    return [
        (name, next(iter(difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)), None))
        for name in sorted(unknown)
    ]


def warn_unknown_variables() -> None:
    for name, closest in unknown_variables():
        hint = f"; did you mean {closest}?" if closest else " (see `tuneloop config show` for every setting)"
        err.print(f"warning: {name} is not a tuneloop setting and is ignored{hint}")


def env_file() -> Path | None:
    """An env file (``TUNELOOP_*=value`` lines) read below the environment: $TUNELOOP_ENV_FILE, else ./tuneloop.env."""
    path = Path(os.environ.get("TUNELOOP_ENV_FILE", "tuneloop.env"))
    return path if path.is_file() else None


def build_config(home: Path | None = None, **options: Any) -> LoopConfig:
    """The effective configuration: given options over the environment over the env file over defaults.

    Options left out (None) are not passed, so pydantic-settings takes the environment's value. A bad
    value anywhere exits with status 2 and one line per problem naming its variable or option.
    """
    given = {k: (v.value if isinstance(v, Enum) else v) for k, v in options.items() if v is not None}
    warn_unknown_variables()
    try:
        resolved = apply_environment(home)
        return LoopConfig(home=resolved, _env_file=env_file(), **given)
    except ValidationError as error:
        for problem in error.errors():
            path = tuple(str(p) for p in problem["loc"] if not isinstance(p, int))
            err.print(f"error: {_origin(path, given)}: {problem['msg']}", markup=False)
        raise typer.Exit(2) from None
    except SettingsError as error:  # a nested section's variable that is not valid JSON
        cause = error.__cause__ or error
        err.print(f"error: {cause_line(str(error))} ({type(cause).__name__}: {cause})", markup=False)
        raise typer.Exit(2) from None


def cause_line(message: str) -> str:
    # pydantic-settings: 'error parsing value for field "tune" from source "EnvSettingsSource"'
    if 'field "' in message:
        field = message.split('field "', 1)[1].split('"', 1)[0]
        return f"{env_name((field,))} is not valid JSON"
    return message


def _origin(path: tuple[str, ...], given: dict[str, Any]) -> str:
    """Where a bad value came from: the option, the environment variable or the env file, by name."""
    if path and path[0] in given:
        return f"--{path[0].replace('_', '-')}={given[path[0]]!r}"
    for depth in range(len(path), 0, -1):  # TUNELOOP_TUNE__N_TRIALS, or a whole TUNELOOP_TUNE section
        name = env_name(path[:depth])
        if name in os.environ:
            return f"{name}={os.environ[name]!r}"
    return env_name(path) if path else "configuration"
