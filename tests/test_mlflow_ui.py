"""The reviewer's view: MLflow's UI in a real browser (Debian's chromium, driven by Playwright) after a
loop on the stack: the experiment opens on its runs (not on MLflow 3's GenAI traces overview), the loop
run, the search run with its trial runs, the evaluation tables under ``evaluate/`` and the registered
version with its alias. A screenshot of each page goes to the test's tmp dir.

Uses the stack of tests/test_stack.py (``stack_loop`` in conftest.py); brings it back up when an
earlier test stopped it (its databases and artifacts are kept until the session ends).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urljoin

import pytest
from mlflow import MlflowClient

from tuneloop.registry.tracking import experiment_url, model_version_url, run_url

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(1800)]
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
MODEL = "tuneloop-classification"
TRACES_OVERVIEW = (
    "No data available for the selected time range"  # MLflow 3's GenAI overview of an experiment without traces
)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"{CHROMIUM} not installed (Debian's chromium: `apt-get install chromium`, or `make install` as root)"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # never `playwright install`
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def reviewed(stack_loop):
    """The stack after its loop: the MLflow UI's address and the ids a reviewer looks for."""
    stack_loop.ensure_up()
    ui = stack_loop.env["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=ui)
    experiment = client.get_experiment_by_name(MODEL)
    assert experiment is not None, "no loop ran on the stack"
    [loop_run] = client.search_runs([experiment.experiment_id], "tags.`tuneloop.stage` = 'loop'")
    search_id = loop_run.data.tags["search_run_id"]
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{search_id}'")
    tables = [a.path for a in client.list_artifacts(loop_run.info.run_id, "evaluate") if a.path.endswith(".json")]
    return {
        "ui": ui,
        "experiment": experiment,
        "loop": loop_run,
        "search": client.get_run(search_id),
        "trials": trials,
        "tables": tables,
    }


class Pages:
    """One browser page per check, each saved as a screenshot in the test's tmp dir."""

    def __init__(self, browser, folder: Path, credentials: dict):
        self.browser, self.folder, self.count, self.credentials = browser, folder, 0, credentials

    def open(self, url: str, name: str, *expect: str, timeout_ms: int = 90_000):
        page = self.browser.new_page(viewport={"width": 1500, "height": 950}, http_credentials=self.credentials)
        page.set_default_timeout(timeout_ms)
        page.goto(url)
        for text in expect:
            page.get_by_text(text, exact=False).first.wait_for(state="visible")
        return self.shoot(page, name)

    def shoot(self, page, name: str):
        page.wait_for_timeout(1500)  # let the rest render (MLflow's UI keeps polling: "networkidle" never comes)
        self.count += 1
        shot = self.folder / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        return page


@pytest.fixture
def pages(browser, tmp_path, request, stack_loop):
    # the stack's MLflow asks for a login (basic auth): the read-only reviewer's
    yield Pages(browser, tmp_path, {"username": "reviewer", "password": stack_loop.credentials().mlflow_reviewer})
    keep = os.environ.get("TUNELOOP_UI_SCREENSHOTS")  # copy them somewhere to look at after the run
    if keep:
        target = Path(keep) / request.node.name
        shutil.copytree(tmp_path, target, dirs_exist_ok=True)


def test_the_experiment_opens_on_its_runs_with_the_loop_run(reviewed, pages):
    experiment, loop = reviewed["experiment"], reviewed["loop"]
    page = pages.open(experiment_url(reviewed["ui"], experiment.experiment_id), "experiment", loop.info.run_name)
    assert "/runs" in page.url
    body = page.inner_text("body")
    assert TRACES_OVERVIEW not in body and "Detect Issues" not in body
    assert loop.info.run_name in body


def test_the_printed_link_opens_the_loop_run_on_its_description(reviewed, pages):
    """The link `tuneloop run` prints lands on the loop run, whose description is the gate's verdict with
    its item counts, what changed since the champion and links that open the search run."""
    experiment, loop, search = reviewed["experiment"], reviewed["loop"], reviewed["search"]
    page = pages.open(
        run_url(reviewed["ui"], experiment.experiment_id, loop.info.run_id),
        "loop-run-description",
        loop.info.run_name,
        "Gate: PASSED",
    )
    body = page.inner_text("body")
    assert TRACES_OVERVIEW not in body and "No description" not in body
    for text in ("What changed since the base model", "items", "adversarial", "per-item tables", "the search run"):
        assert text in body, f"{text!r} not on the loop run's page"
    page.get_by_text("Gate: PASSED").first.scroll_into_view_if_needed()
    pages.shoot(page, "loop-run-description-scrolled")
    # the description's links are routes of the UI itself, whatever address it is served at
    href = page.get_by_role("link", name="the search run").first.get_attribute("href")
    assert href and href.endswith(f"#/experiments/{experiment.experiment_id}/runs/{search.info.run_id}"), href
    target = pages.open(urljoin(page.url, href), "search-run-from-description", search.info.run_name)
    assert search.info.run_id in target.url and search.info.run_id in target.inner_text("body")
    table = page.get_by_role("link", name="heldout").first.get_attribute("href")
    assert table and table.endswith(f"/runs/{loop.info.run_id}/artifacts/evaluate/heldout.json"), table


def test_the_version_page_shows_the_description(reviewed, pages):
    page = pages.open(
        model_version_url(reviewed["ui"], MODEL, "1"), "model-version-description", "Version 1", "Gate: PASSED"
    )
    page.get_by_text("Gate: PASSED").first.scroll_into_view_if_needed()
    pages.shoot(page, "model-version-description-scrolled")
    body = page.inner_text("body")
    assert "No description" not in body and "What changed since" in body and reviewed["loop"].info.run_id in body


def test_the_loop_run_page_shows_the_gate_and_the_search_run(reviewed, pages):
    experiment, loop = reviewed["experiment"], reviewed["loop"]
    url = f"{reviewed['ui']}/#/experiments/{experiment.experiment_id}/runs/{loop.info.run_id}?workflowType=machine_learning"
    page = pages.open(url, "loop-run", loop.info.run_name, "gate.passed")
    body = page.inner_text("body")
    assert reviewed["search"].info.run_id in body  # the search_run_id tag points to the search


def _expand(page, row_text: str) -> None:
    """Open a parent run's row in the runs table (MLflow nests child runs under their parent, collapsed)."""
    row = page.get_by_role("row").filter(has_text=row_text).first
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()


def test_the_search_run_with_its_trial_runs(reviewed, pages):
    """As a reviewer finds them: the loop run's row opens onto its search run, which opens onto its trials."""
    experiment, loop, search, trials = reviewed["experiment"], reviewed["loop"], reviewed["search"], reviewed["trials"]
    assert trials
    page = pages.open(experiment_url(reviewed["ui"], experiment.experiment_id), "runs", loop.info.run_name)
    _expand(page, loop.info.run_name)
    page.get_by_text(search.info.run_name, exact=False).first.wait_for(state="visible")
    _expand(page, search.info.run_name)
    for trial in trials:
        page.get_by_text(trial.info.run_name.split()[0], exact=False).first.wait_for(state="visible")
    pages.shoot(page, "search-and-trials")
    body = page.inner_text("body")
    assert all(t.info.run_name in body for t in trials)
    run_page = pages.open(
        f"{reviewed['ui']}/#/experiments/{experiment.experiment_id}/runs/{search.info.run_id}"
        "?workflowType=machine_learning",
        "search-run",
        search.info.run_name,
    )
    assert search.info.run_name in run_page.inner_text("body")


def test_the_evaluation_tables_under_evaluate(reviewed, pages):
    experiment, loop, tables = reviewed["experiment"], reviewed["loop"], reviewed["tables"]
    assert {f"evaluate/{suite}.json" for suite in ("heldout", "adversarial", "regression", "gate")} <= set(tables)
    base = f"{reviewed['ui']}/#/experiments/{experiment.experiment_id}/runs/{loop.info.run_id}/artifacts"
    page = pages.open(
        f"{base}/evaluate/adversarial.json",
        "evaluate-adversarial",
        "adversarial.json",
        "challenger_output",
        "champion_output",
    )
    assert "mlflow-artifacts:" in page.inner_text("body")  # served through the tracking server
    page.get_by_text("View as table").click()  # the whole table as text (the table view pages it)
    page.get_by_text("injection", exact=False).first.wait_for(state="attached")
    pages.shoot(page, "evaluate-adversarial-raw")
    body = page.inner_text("body")
    for column in ("challenger_failed_because", "group", "cluster"):
        assert column in body, f"column {column} not in the table the UI shows"
    gate = pages.open(f"{base}/evaluate/gate.json", "evaluate-gate", "gate.json", "heldout_diff")
    assert "passed" in gate.inner_text("body")


def test_the_registered_version_with_its_alias(reviewed, pages):
    page = pages.open(f"{reviewed['ui']}/#/models/{MODEL}", "registered-model", MODEL, "Version 1")
    assert "challenger" in page.inner_text("body")
    version = pages.open(f"{reviewed['ui']}/#/models/{MODEL}/versions/1", "model-version", "Version 1", "challenger")
    body = version.inner_text("body").replace("\xa0", " ")
    assert "Aliases\n:\n@ challenger" in body  # the alias, as the page writes it
    assert reviewed["loop"].info.run_name in body  # its source run: the loop that registered it
