"""`tuneloop config show`: every setting's effective value, where it came from and the variable that sets it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer
from dotenv import dotenv_values
from rich.console import Console
from rich.table import Table

from tuneloop.cli.options import HomeOpt, KindChoice, KindOpt, TinyOpt, build_config, env_file, env_name, field_paths

app = typer.Typer(help="The effective configuration", no_args_is_help=True)
console = Console()


def source_of(
    path: tuple[str, ...], options: dict[str, Any], environ: dict[str, str], file_values: dict[str, str]
) -> str:
    """option > env > file > default, as pydantic-settings resolves them (a section's JSON variable counts too)."""
    if path[0] in options:
        return "option"
    names = [env_name(path[:depth]) for depth in range(len(path), 0, -1)]
    if any(name in environ for name in names):
        return "env"
    if any(name in file_values for name in names):
        return "file"
    return "default"


def rows(config, options: dict[str, Any], environ: dict[str, str]) -> list[dict[str, Any]]:
    """One row per leaf setting: name (dotted), value (secrets redacted), source, variable."""
    dumped = config.model_dump(mode="json")  # store URLs without their passwords
    source_file = env_file()
    file_values = {k.upper(): v for k, v in dotenv_values(source_file).items()} if source_file else {}
    out = []
    for path in field_paths():
        value: Any = dumped
        for part in path:
            value = value[part]
        out.append(
            {
                "name": ".".join(path),
                "value": value,
                "source": source_of(path, options, environ, file_values),
                "variable": env_name(path),
            }
        )
    return out


@app.command("show")
def show(
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    tiny: bool | None = TinyOpt,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line instead of a table"),
    changed: bool = typer.Option(False, "--changed", help="Only settings not at their default"),
) -> None:
    """Every setting: its effective value, its source (default, env, file or option) and its variable."""
    options = {k: v for k, v in {"kind": kind, "tiny": tiny, "home": home}.items() if v is not None}
    environ = dict(os.environ)  # as the user set it: building the config exports TUNELOOP_HOME
    config = build_config(home, kind=kind, tiny=tiny)
    listing = [r for r in rows(config, options, environ) if not changed or r["source"] != "default"]
    if as_json:
        for row in listing:
            print(json.dumps(row))
        return
    table = Table("setting", "value", "source", "variable")
    for row in listing:
        value = row["value"] if isinstance(row["value"], str) else json.dumps(row["value"])
        table.add_row(row["name"], value, row["source"], row["variable"])
    console.print(table)
