"""`tuneloop stack up | down | status | env`: the team set-up on one machine, each part its real program.

``stack up`` starts, on 127.0.0.1 and each in its own process group:

* a Prefect server on PostgreSQL (``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...``),
* an MLflow tracking server with a PostgreSQL backend store that serves the artifacts itself
  (clients see ``mlflow-artifacts:`` URIs; the files live in ``$TUNELOOP_HOME/mlartifacts``),
* a process work pool ``tuneloop`` with one or more workers on its default queue (loops, triggers,
  rollouts) and, with ``--trial-workers N``, N trial workers on its ``trials`` queue, one flow run at
  a time each (``--limit 1``: one per machine or GPU), that run the search workers of a loop whose
  ``tune.worker_deployment`` is set (``flows/search_workers.py``),
* the BentoML service, one per kind,

creates the PostgreSQL role and databases it needs, waits until every part answers its health check and
prints an environment block (``eval "$(tuneloop stack up)"`` or ``eval "$(tuneloop stack env)"``)
that points a shell, ``prefect deploy`` and the CLI at the stack. Every server requires credentials
(``cli/stack_auth.py``): they live in ``$TUNELOOP_HOME/stack/secrets/`` (0600) and reach each part
through its environment, never its command line. Logs, PIDs and the stack's
settings live in ``$TUNELOOP_HOME/stack/``. ``stack up`` again starts only what is not running;
``stack down`` stops every process group, then anything left that carries the stack's marker in its
environment (flow runs started by a worker included), and may be run any number of times.

Every part gets its own scratch home under ``stack/`` (worker-1, service-generation, ...): they share
nothing on disk but reach each other through the servers and the databases, as on a cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli import stack_auth
from tuneloop.cli.stack_auth import Credentials
from tuneloop.cli.stack_parts import (
    DATABASES,
    DEFAULT_POSTGRES,
    KINDS,
    MARKER,
    Part,
    StackSettings,
    _stack_id,
    parts,
)
from tuneloop.cli.stack_stores import drop_stack_databases, ensure_databases, prepare_stores
from tuneloop.credentials import redact_text

app = typer.Typer(help=__doc__.split("\n\n")[0], no_args_is_help=True)
err = Console(stderr=True)  # progress to stderr: stdout carries only the env block, so `eval "$(...)"` works


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat): tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pidfile(settings: StackSettings, name: str) -> Path:
    return settings.dir / f"{name}.pid"


def running_pid(settings: StackSettings, name: str) -> int | None:
    """The part's PID if the process recorded for it is still the same process, else None."""
    path = _pidfile(settings, name)
    if not path.exists():
        return None
    try:
        pid, ticks = path.read_text().split()
        pid = int(pid)
    except ValueError:
        return None
    return pid if _start_ticks(pid) == ticks else None


def marked_pids(stack_id: str) -> list[int]:
    """Every process on this machine whose environment carries this stack's marker."""
    needle = f"{MARKER}={stack_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def _healthy(url: str, timeout: float = 3) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _launch(settings: StackSettings, part: Part) -> int:
    logs = settings.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for key in ("TUNELOOP_HOME", "PREFECT_HOME", "BENTOML_HOME"):
        if key in part.env:
            Path(part.env[key]).mkdir(parents=True, exist_ok=True)
    with open(logs / f"{part.name}.log", "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {redact_text(shlex.join(part.args))}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            part.args,
            env=part.env,
            cwd=settings.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # its own process group
    _pidfile(settings, part.name).write_text(f"{proc.pid} {_start_ticks(proc.pid)}")
    return proc.pid


def _log_tail(settings: StackSettings, name: str, chars: int = 2500) -> str:
    path = settings.dir / "logs" / f"{name}.log"
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


# --- up / down / status ---------------------------------------------------------------------------


def env_block(settings: StackSettings, creds: Credentials) -> str:
    """``export`` lines for a shell; the secrets are read from their files when the block is
    evaluated, so printing it shows none."""
    lines = [f"export {k}={shlex.quote(v)}" for k, v in settings.client_env().items()]
    return "\n".join(lines + stack_auth.shell_lines(creds))


def up(settings: StackSettings, timeout_s: float = 300) -> dict[str, float]:
    """Start what is not running, wait until every part answers; returns seconds until each answered."""
    settings.dir.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    running = [p.name for p in parts(settings, _credentials(settings)) if running_pid(settings, p.name)]
    if running and (changing := Credentials.changes(settings.secrets)):
        # the running parts hold the old values: a rotation while they run would lock them out
        raise RuntimeError(
            f"{', '.join(changing)} in {settings.secrets} would change while {', '.join(running)} run: "
            "to rotate a secret, `tuneloop stack down` first, then `tuneloop stack up`"
        )
    creds = Credentials.ensure(settings.secrets)
    os.environ["PGPASSFILE"] = str(creds.pgpass)  # this process prepares the stores as the stack's role
    created = ensure_databases(settings, creds)
    if created:
        err.print(f"created databases {', '.join(created)} (owner {settings.role})")
    for change in stack_auth.ensure_mlflow_users(creds):
        err.print(change)
    settings.save()
    todo = parts(settings, creds)
    pending: dict[str, Part] = {}
    answered: dict[str, float] = {}
    for part in todo:
        pid = running_pid(settings, part.name)
        if pid is not None:
            err.print(f"{part.name}: already running (pid {pid})")
            pending[part.name] = part  # still checked below
    started: set[str] = set()
    prepared = False
    deadline = began + timeout_s
    while True:
        for part in todo:
            if part.name in answered:
                continue
            if part.name not in pending and all(dep in answered for dep in part.after):
                pid = _launch(settings, part)
                started.add(part.name)
                pending[part.name] = part
                err.print(f"{part.name}: started (pid {pid}), log {settings.dir / 'logs' / (part.name + '.log')}")
            if part.name in pending:
                if running_pid(settings, part.name) is None:
                    raise RuntimeError(
                        f"{part.name} exited while starting; its log ends:\n{_log_tail(settings, part.name)}"
                    )
                if _healthy(part.health_url, timeout=2):
                    answered[part.name] = time.monotonic() - began
                    err.print(f"{part.name}: healthy after {answered[part.name]:.1f} s ({part.health_url})")
        if not prepared:  # while the servers start; before any part that uses the stores
            prepare_stores(settings)
            prepared = True
            continue
        if len(answered) == len(todo):
            break
        if time.monotonic() > deadline:
            late = [p.name for p in todo if p.name not in answered]
            tails = "\n".join(f"--- {name}:\n{_log_tail(settings, name)}" for name in late)
            raise TimeoutError(f"not healthy after {timeout_s:.0f} s: {', '.join(late)}\n{tails}")
        time.sleep(0.5)
    answered["total"] = time.monotonic() - began
    return answered


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _stop_group(pid: int, grace_s: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while _group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def down(settings: StackSettings, grace_s: float = 20) -> list[str]:
    """Stop every part (services and workers first, the servers last); then whatever still carries the
    stack's marker (a flow run a worker started in a session of its own, say). Idempotent."""
    stopped = []
    for part in reversed(parts(settings, _credentials(settings))):
        pid = running_pid(settings, part.name)
        if pid is not None:
            began = time.monotonic()
            _stop_group(pid, grace_s)
            stopped.append(f"{part.name} ({time.monotonic() - began:.1f} s)")
        _pidfile(settings, part.name).unlink(missing_ok=True)
    stack_id = _stack_id(settings)
    leftovers = marked_pids(stack_id)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while leftovers and time.monotonic() < deadline:
        time.sleep(0.2)
        leftovers = marked_pids(stack_id)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return stopped


def status(settings: StackSettings) -> list[dict]:
    """Each part: its PID (None when not running), health, and for services readiness."""
    rows = []
    for part in parts(settings, _credentials(settings)):
        pid = running_pid(settings, part.name)
        healthy = pid is not None and _healthy(part.health_url)
        row = {
            "part": part.name,
            "pid": pid,
            "url": part.health_url,
            "healthy": healthy,
            "log": str(settings.dir / "logs" / f"{part.name}.log"),
        }
        if part.ready_url:
            row["ready"] = healthy and _healthy(part.ready_url)
        rows.append(row)
    return rows


# --- the commands ---------------------------------------------------------------------------------

HomeOpt = typer.Option(
    None, "--home", help="State directory (default $TUNELOOP_HOME or ./.tuneloop); the stack lives in HOME/stack"
)


def _home(home: Path | None) -> Path:
    return Path(home or os.environ.get("TUNELOOP_HOME", ".tuneloop")).resolve()


def _credentials(settings: StackSettings) -> Credentials:
    """The stored credentials (stopping or checking a stack made before they existed: placeholders)."""
    found = Credentials.load(settings.secrets)
    return found or Credentials(settings.secrets, *([""] * 6))


def _settings(home: Path | None) -> StackSettings:
    resolved = _home(home)
    settings = StackSettings.load(resolved)
    if settings is None:
        err.print(f"no stack in {resolved / 'stack'} (tuneloop stack up starts one)")
        raise typer.Exit(1)
    return settings


@app.command("up")
def up_command(
    home: Path | None = HomeOpt,
    postgres: str = typer.Option(
        DEFAULT_POSTGRES,
        envvar="TUNELOOP_STACK_POSTGRES",
        help="PostgreSQL server URL; the stack's databases are created there when missing",
    ),
    db_prefix: str = typer.Option(
        "tuneloop", help="Database names: PREFIX_prefect, PREFIX_mlflow, PREFIX_ops, PREFIX_optuna"
    ),
    prefect_port: int = typer.Option(4200),
    mlflow_port: int = typer.Option(5000),
    service_port: int = typer.Option(3000, help="The first kind's service port; further kinds take the next ports"),
    worker_port: int = typer.Option(8380, help="Worker health check ports start here"),
    kind: list[str] = typer.Option(
        ["generation"],
        "--kind",
        "-k",
        envvar="TUNELOOP_KIND",
        help="A service per kind (repeat for both; $TUNELOOP_KIND: one, or both space-separated)",
    ),
    workers: int = typer.Option(1, min=1, help="Prefect workers polling the tuneloop pool's default queue"),
    trial_workers: int = typer.Option(
        0,
        min=0,
        help="Prefect workers polling its trials queue, one flow run each "
        "(search workers of loops with tune.worker_deployment set)",
    ),
    serve_workers: int = typer.Option(1, min=1, help="Worker processes of each BentoML service"),
    mlflow_workers: int = typer.Option(1, min=1, help="Worker processes of the MLflow server"),
    tiny: bool = typer.Option(False, envvar="TUNELOOP_TINY", help="Tiny random models everywhere (tests, smoke runs)"),
    timeout: float = typer.Option(300, help="Seconds to wait for every part to answer"),
) -> None:
    """Start the stack (only the parts not running yet); print the environment block to eval."""
    for k in kind:
        if k not in KINDS:
            raise typer.BadParameter(f"kind must be generation or classification, got {k!r}")
    resolved = _home(home)
    previous = StackSettings.load(resolved)
    settings = StackSettings(
        home=resolved,
        postgres=postgres,
        db_prefix=db_prefix,
        prefect_port=prefect_port,
        mlflow_port=mlflow_port,
        service_port=service_port,
        worker_port=worker_port,
        kinds=list(dict.fromkeys(kind)),
        workers=workers,
        trial_workers=trial_workers,
        serve_workers=serve_workers,
        mlflow_workers=mlflow_workers,
        tiny=tiny,
    )
    if (
        previous is not None
        and any(running_pid(previous, p.name) for p in parts(previous, _credentials(previous)))
        and {**previous.public(), "workers": 0, "trial_workers": 0}
        != {**settings.public(), "workers": 0, "trial_workers": 0}
    ):
        err.print(
            "a stack with other settings is running in this home (only --workers and --trial-workers may change "
            "while it runs): "
            "`tuneloop stack down` first"
        )
        raise typer.Exit(1)
    if previous is not None:
        extra = [f"worker-{n}" for n in range(settings.workers + 1, previous.workers + 1)]
        extra += [f"trial-worker-{n}" for n in range(settings.trial_workers + 1, previous.trial_workers + 1)]
        for name in extra:  # fewer workers than before: stop the extra ones
            pid = running_pid(previous, name)
            if pid is not None:
                _stop_group(pid, 20)
                err.print(f"{name}: stopped")
            _pidfile(previous, name).unlink(missing_ok=True)
    try:
        seconds = up(settings, timeout)
    except (RuntimeError, TimeoutError) as error:
        err.print(f"[red]stack up failed:[/red] {error}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    from tuneloop.registry.tracking import experiment_url

    err.print(
        f"stack ready in {seconds['total']:.1f} s: Prefect UI {settings.prefect_api[:-4]}, "
        f"MLflow UI {experiment_url(settings.mlflow_uri)}, "
        + ", ".join(f"service {k} {settings.service_url(k)}" for k in settings.kinds)
    )
    err.print('point a shell at it with: eval "$(tuneloop stack env)"')
    print(env_block(settings, _credentials(settings)))


@app.command("down")
def down_command(
    home: Path | None = HomeOpt,
    drop_databases: bool = typer.Option(False, "--drop-databases", help="Also drop the stack's databases and role"),
    postgres: str | None = typer.Option(
        None,
        envvar="TUNELOOP_STACK_POSTGRES",
        help="The superuser URL "
        "that drops them (default: the one stack up was given, without "
        "its password, which libpq then takes from PGPASSFILE/PGPASSWORD)",
    ),
    grace: float = typer.Option(20, help="Seconds each part gets to stop after SIGTERM before SIGKILL"),
) -> None:
    """Stop every part of the stack (idempotent: nothing running is fine)."""
    settings = StackSettings.load(_home(home))
    if settings is None:
        err.print("no stack here: nothing to stop")
        return
    stopped = down(settings, grace)
    err.print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if drop_databases:
        drop_stack_databases(replace(settings, postgres=postgres) if postgres else settings)
        err.print(f"dropped databases {', '.join(settings.database(p) for p in DATABASES)}")


@app.command("status")
def status_command(home: Path | None = HomeOpt, as_json: bool = typer.Option(False, "--json")) -> None:
    """Each part's PID and health; exit status 1 when any part is not healthy."""
    settings = _settings(home)
    rows = status(settings)
    if as_json:
        print(json.dumps(rows, indent=2))
    else:
        table = Table("part", "pid", "health", "url")
        for row in rows:
            health = "healthy" if row["healthy"] else ("unhealthy" if row["pid"] else "down")
            if "ready" in row and row["healthy"]:
                health += ", ready" if row["ready"] else ", not ready (no version to serve yet)"
            table.add_row(row["part"], str(row["pid"] or "-"), health, row["url"])
        Console().print(table)
    if not all(row["healthy"] for row in rows):
        raise typer.Exit(1)


@app.command("env")
def env_command(home: Path | None = HomeOpt) -> None:
    """The environment block that points a shell at the stack: eval "$(tuneloop stack env)". It reads
    the credentials from their files in HOME/stack/secrets when evaluated; it prints none."""
    settings = _settings(home)
    print(env_block(settings, _credentials(settings)))
