"""The `tuneloop` command: run the loop, serve, and move traffic (promote, canary, rollback)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli.config_show import app as config_app
from tuneloop.cli.options import HomeOpt, KindChoice, KindOpt, TinyOpt, build_config
from tuneloop.cli.stack import app as stack_app
from tuneloop.config import DEMO_TUNE, LoopConfig, with_priors
from tuneloop.credentials import redact_text

app = typer.Typer(help=__doc__, no_args_is_help=True)
app.add_typer(stack_app, name="stack", help="The team set-up on one machine: up, down, status, env")
app.add_typer(
    config_app, name="config", help="The effective configuration: value, source and variable of every setting"
)
console = Console()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"tuneloop {version('tuneloop')}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the installed version and exit"
    ),
) -> None:
    """Run the loop, serve, and move traffic (promote, canary, rollback)."""


def _config(kind: KindChoice | None, home: Path | None, **overrides) -> LoopConfig:
    return build_config(home, kind=kind, **overrides)


@app.command()
def seed(kind: KindChoice | None = KindOpt, home: Path | None = HomeOpt, seed: int = 0) -> None:
    """Write the generated sample feedback into the store (skips records already there)."""
    config = _config(kind, home)
    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.sample_data import sample_feedback

    added = FeedbackStore(config.feedback_db).add_many_raw(
        sample_feedback(config.kind, seed, small=config.tiny), config.kind
    )
    console.print(f"{added} sample {config.kind} records added to {redact_text(config.feedback_db)}")


@app.command("import")
def import_file(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL or CSV of feedback records"),
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    fmt: str | None = typer.Option(None, "--format", help="jsonl or csv (default: from the file's suffix)"),
    check_versions: bool = typer.Option(
        True,
        help="Refuse model versions the registry does not know (answers "
        "from outside tuneloop: model_version external:<name>)",
    ),
    report: Path | None = typer.Option(None, help="Write every reject (line, field, reason) here as JSON lines"),
    strict: bool = typer.Option(False, help="Exit with status 1 when any record is rejected"),
) -> None:
    """Import feedback collected elsewhere, with the API's validation; rejects are reported, not stored."""
    config = _config(kind, home)
    if fmt not in (None, "jsonl", "csv"):
        raise typer.BadParameter(f"format must be jsonl or csv, got {fmt!r}")
    import mlflow

    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.feedback_import import import_feedback, write_rejects
    from tuneloop.version_check import RegistryUnreachable, probe, registry_checker

    try:
        if check_versions:  # once, before any record: a registry that is down is not "unknown version" x N
            probe(mlflow.get_tracking_uri())
        result = import_feedback(
            FeedbackStore(config.feedback_db),
            file,
            config.kind,
            fmt,
            model_name=config.model_name,
            known_version=registry_checker(config.model_name) if check_versions else None,
        )
    except RegistryUnreachable as err:
        console.print(
            f"[red]refused:[/red] {err}; model versions cannot be checked. Records validated before it "
            "failed are stored (a rerun skips them); rerun when it answers, or pass --no-check-versions.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from None
    console.print(
        f"{file}: {result.read} read, {result.stored} stored, {result.duplicates} already stored, "
        f"{len(result.rejected)} rejected",
        soft_wrap=True,
    )
    for reject in result.rejected[:20]:  # one line each, whatever the width: a log is grepped by line
        console.print(f"  line {reject.line}: {reject.field}: {reject.reason}", markup=False, soft_wrap=True)
    if len(result.rejected) > 20:
        console.print(
            f"  ... and {len(result.rejected) - 20} more" + ("" if report else " (use --report FILE for all)")
        )
    if report:
        write_rejects(result, report)
    if strict and result.rejected:
        raise typer.Exit(1)


@app.command()
def run(
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    tiny: bool | None = TinyOpt,
    trials: int | None = typer.Option(
        None, min=1, help="Optuna trials [default: $TUNELOOP_TUNE__N_TRIALS, else what the time budget fits, else 2]"
    ),
    budget_minutes: float | None = typer.Option(
        None, "--budget-minutes", help="Time the search may spend: whole trials while they fit (tune.timeout_s)"
    ),
) -> None:
    """Run one loop on the feedback in the store."""
    config = _config(kind, home, tiny=tiny)
    if trials:
        config.tune.n_trials = trials
    if budget_minutes:
        config.tune.timeout_s = budget_minutes * 60
    _run_loop(config)


def _run_loop(config: LoopConfig) -> None:
    from tuneloop.cli.progress import reporter_for
    from tuneloop.cli.refusals import quiet_refusals
    from tuneloop.flows.curate import DatasetError
    from tuneloop.flows.loop import loop
    from tuneloop.flows.tune import TuneConfigError
    from tuneloop.modeling.models import ModelError
    from tuneloop.progress import reporting

    began = time.perf_counter()
    try:
        with reporting(reporter_for(console)), quiet_refusals(DatasetError, ModelError, TuneConfigError):
            result = loop(config)
    except (DatasetError, ModelError, TuneConfigError) as err:  # bad input: say what and what to set, no traceback
        console.print(f"[red]refused before training:[/red] {err}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    _summary(config, result, time.perf_counter() - began)


@app.command()
def demo(kind: KindChoice | None = KindOpt, home: Path | None = HomeOpt, tiny: bool | None = TinyOpt) -> None:
    """Seed the sample feedback (first time) and run the whole loop on it (generation: the showcase's faster
    profile, 3 epochs, for tune settings left unset)."""
    from tuneloop.data.sample_data import SYSTEM_PROMPT

    config = _config(kind, home, tiny=tiny)
    if "system_prompt" not in config.model_fields_set:  # the sample company's assistant, unless the user set one
        config.system_prompt = SYSTEM_PROMPT
    if config.kind == "generation":  # the showcase's five-minute profile where the user set nothing else
        config.tune = with_priors(config.tune, DEMO_TUNE)
    from tuneloop.data.feedback import FeedbackStore

    if FeedbackStore(config.feedback_db).count(config.kind) == 0:
        seed(kind=config.kind, home=config.home, seed=0)
    _run_loop(config)


def _objective(params: dict) -> str:
    """The winning trial's objective as the search run names it: ``sft``, ``kto (beta 0.13)``."""
    objective = params.get("objective", "sft")
    beta = params.get("beta", params.get(f"{objective}_beta"))
    return objective if objective == "sft" or beta is None else f"{objective} (beta {float(beta):.2g})"


def _summary(config: LoopConfig, result, seconds: float) -> None:
    counts = result.data.counts
    console.rule(f"tuneloop {config.kind}: one loop in {seconds:.0f} s")
    console.print(
        f"Data {result.data.dataset_hash}: {counts.get('records', 0)} records -> {counts.get('train', 0)} train / "
        f"{counts.get('validation', 0)} validation / {counts.get('heldout', 0)} held-out ({counts.get('quarantined', 0)} quarantined, "
        f"{counts.get('duplicates_removed', 0)} duplicates, {counts.get('thumbs_down_without_correction', 0)} bare thumbs-down)"
    )
    if config.kind == "generation" and counts.get("answers"):
        console.print(
            f"Feedback: {counts.get('corrections', 0)} corrections, {counts.get('thumbs_up', 0)} thumbs-up, "
            f"{counts.get('conflicts_resolved', 0)} conflicting answers resolved by vote; {counts['answers']} "
            f"distinct answers, {counts.get('answers_one_phrasing', 0)} with one phrasing only, "
            f"{counts.get('answers_untrained', 0)} with none to train on"
        )
    if counts.get("preference_pairs") or counts.get("unpaired_liked") or counts.get("unpaired_disliked"):
        console.print(
            f"Preference signal: {counts.get('preference_pairs', 0)} pairs (a correction against the answer it "
            f"replaced), {counts.get('unpaired_liked', 0)} liked and {counts.get('unpaired_disliked', 0)} "
            f"disliked answers (bare thumbs-down included), for the dpo and kto objectives (tune.objectives)"
        )
    best = result.tuned.best
    console.print(
        f"Search {result.tuned.study_name}: {result.tuned.n_complete} complete, {result.tuned.n_pruned} pruned; "
        f"winner trial {best.number}: rank {best.params['rank']}, lr {best.params['lr']:.2e}"
        + (f", {_objective(best.params)}" if config.kind == "generation" else "")
    )
    table = Table("suite", "items", f"baseline ({result.report.baseline})", "challenger")
    for suite, scores in result.report.challenger.items():
        table.add_row(
            suite,
            str(result.report.items.get(suite, "")),
            f"{result.report.champion[suite].mean:.3f}",
            f"{scores.mean:.3f}",
        )
    console.print(table)
    if memory := result.report.memory:
        console.print(
            f"Memory of corrections: {memory['questions']:.0f} training questions; it answered "
            + ", ".join(
                f"{memory[k]:.0%} of {k.removeprefix('answered_').replace('_', ' ')}"
                for k in memory
                if k.startswith("answered_")
            )
            + f" (TUNELOOP_MEMORY_THRESHOLD {config.memory_threshold})"
        )
    checks = Table("gate check", "verdict", "diff", "CI", "threshold")
    for c in result.report.checks:
        checks.add_row(
            c["name"],
            c["verdict"],
            f"{c['diff_mean']:+.3f}",
            f"[{c['diff_low']:+.3f}, {c['diff_high']:+.3f}]",
            f"{c['threshold']:.3f}",
        )
    console.print(checks)
    console.print(
        f"Gate: {result.report.verdict}; held-out diff {result.report.heldout_diff:+.3f} "
        f"CI [{result.report.ci_low:+.3f}, {result.report.ci_high:+.3f}]"
    )
    for reason in result.report.reasons:
        console.print(f"  - {reason}")
    if result.registered:
        console.print(
            f"Registered {result.registered.name} version {result.registered.version} as "
            f"'{result.registered.alias}', live for {result.challenger_percent}% of users"
        )
    console.print("Stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    _links(config, result)


def _links(config: LoopConfig, result) -> None:
    """Where to review the loop: its run in MLflow's UI (for the tracking URI in use), then the service."""
    import mlflow

    from tuneloop.cli.mlflow_hint import ui_hint, venv_command
    from tuneloop.registry.tracking import model_version_url

    hint = ui_hint(mlflow.get_tracking_uri())
    experiment_id = mlflow.get_run(result.run_id).info.experiment_id
    console.print()
    if hint.command:
        console.print(f"MLflow UI:     {hint.command}", markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"Loop run:      {hint.run_link(experiment_id, result.run_id)}", markup=False, highlight=False, soft_wrap=True
    )
    if result.registered:
        console.print(
            f"Model version: {model_version_url(hint.ui, result.registered.name, result.registered.version)}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"Start service: TUNELOOP_HOME={config.home.resolve()} {venv_command('tuneloop')} serve --kind {config.kind}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def serve(
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    port: int = 3000,
    host: str = "127.0.0.1",
    tiny: bool | None = TinyOpt,
) -> None:
    """Start the BentoML service for a kind (foreground)."""
    config = _config(kind, home, tiny=tiny)
    os.environ.update(TUNELOOP_KIND=config.kind, TUNELOOP_TINY=str(config.tiny).lower())
    root = Path(__file__).resolve().parent.parent
    bentoml = Path(sys.executable).with_name("bentoml")
    os.execv(
        str(bentoml),
        [
            str(bentoml),
            "serve",
            "tuneloop.serving.service:Tuneloop",
            "--host",
            host,
            "--port",
            str(port),
            "--working-dir",
            str(root),
        ],
    )


@app.command()
def promote(
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    expected_version: str = typer.Option(
        ...,
        "--expected-version",
        help="The challenger version you mean to "
        "promote (see `tuneloop status`); refused when the challenger is another",
    ),
) -> None:
    """Challenger becomes champion (the old champion is kept as 'previous'); the canary closes."""
    config = _config(kind, home)
    from tuneloop.release import operations

    version = _operator_call(operations.promote, config, expected_version, reason="promoted from the CLI")
    console.print(f"{config.model_name} version {version} is now champion")


@app.command()
def rollback(
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    champion: bool = typer.Option(False, "--champion", help="Also put the previous champion back"),
) -> None:
    """Send every user to the champion at once (challenger share 0 %)."""
    config = _config(kind, home)
    from tuneloop.release import operations

    after = _operator_call(operations.roll_back, config, "rolled back from the CLI", restore_champion=champion)
    console.print("challenger share set to 0 %" + (f"; champion is version {after} again" if champion else ""))


@app.command()
def canary(percent: int, kind: KindChoice | None = KindOpt, home: Path | None = HomeOpt) -> None:
    """Set the challenger's sticky share of users (0-100)."""
    config = _config(kind, home)
    from tuneloop.release import operations

    _operator_call(operations.set_canary, config, percent, "set from the CLI")
    console.print(f"challenger share set to {percent} %")


token_app = typer.Typer(
    help="API tokens of the service: feedback writers and operators hold different ones", no_args_is_help=True
)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    name: str = typer.Option(..., "--name", help="Who holds it (an app, a person): shown in the operations log"),
    scope: str = typer.Option(..., "--scope", help="feedback (POST /v1/feedback) or admin (also /v1/admin/*)"),
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
) -> None:
    """Create a named token and print it once (only its SHA-256 digest is stored)."""
    config = _config(kind, home)
    from tuneloop.access.tokens import create

    token = _operator_call(create, config, name, scope)
    console.print(
        f"token {name!r} ({scope}) created; it is shown this once, keep it in a secret store:", highlight=False
    )
    print(token)


@token_app.command("list")
def token_list(kind: KindChoice | None = KindOpt, home: Path | None = HomeOpt) -> None:
    """Names, scopes, creation and last use of every token (never the tokens)."""
    config = _config(kind, home)
    from tuneloop.access.tokens import listing

    table = Table("name", "scope", "created", "last used")
    for row in listing(config):
        table.add_row(row["name"], row["scope"], row["created_at"] or "-", row["last_used_at"] or "-")
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    name: str = typer.Argument(..., help="The token's name"),
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
) -> None:
    """Delete a token; services refuse it from their next request on."""
    config = _config(kind, home)
    from tuneloop.access.tokens import revoke

    _operator_call(revoke, config, name)
    console.print(f"token {name!r} revoked")


@app.command()
def forget(
    user_id: str = typer.Option(..., "--user-id", help="The user id as the apps sent it"),
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
) -> None:
    """Delete one user's feedback (quarantined records too) and shadow records, and list the dataset
    versions and registered model versions trained on them (retrain without them, then retire those)."""
    config = _config(kind, home)
    from tuneloop.data.forget import forget as forget_user

    report = forget_user(config, user_id)
    console.print(
        f"deleted {report.feedback_rows} feedback records ({report.quarantined_rows} quarantined) and "
        f"{report.shadow_rows} shadow records of that user"
    )
    console.print("dataset versions trained on them: " + (", ".join(report.datasets) or "none"))
    console.print(
        f"registered versions of {config.model_name} trained on them: " + (", ".join(report.model_versions) or "none")
    )


def _operator_call(fn, *args, **kwargs):
    """Run a traffic operation; a refusal (nothing to promote, no challenger, ...) is one clear line, exit 1."""
    try:
        return fn(*args, **kwargs)
    except ValueError as err:
        console.print(f"[red]refused:[/red] {err}")
        raise typer.Exit(1) from None


@app.command()
def rollout(
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    poll_s: float = typer.Option(30.0, help="Seconds between health checks"),
) -> None:
    """Ramp the challenger through deploy.ramp while its live feedback is healthy; promote at 100 %."""
    config = _config(kind, home)
    from tuneloop.flows.deploy import rollout as rollout_flow

    console.print(rollout_flow(config, poll_s=poll_s))


@app.command()
def status(kind: KindChoice | None = KindOpt, home: Path | None = HomeOpt) -> None:
    """Aliases, the challenger's share and the feedback count."""
    config = _config(kind, home)
    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.registry.versions import ALIASES, alias_version
    from tuneloop.release.flags import challenger_percent

    for alias in ALIASES:
        console.print(f"{alias:>10}: {alias_version(config.model_name, alias) or '-'}")
    challenger = alias_version(config.model_name, "challenger")
    console.print(f"challenger share: {challenger_percent(config, challenger) if challenger else 0} %")
    console.print(f"feedback records: {FeedbackStore(config.feedback_db).count(config.kind)}")


from tuneloop.cli.economics import economics  # noqa: E402

app.command()(economics)

if __name__ == "__main__":
    app()
