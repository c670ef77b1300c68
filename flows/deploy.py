"""Stage 5, deploy: a sticky canary for the new challenger, then a ramp that only moves while healthy.

``deploy`` (in the loop) opens the canary. ``rollout`` (its own flow, long-running) steps the share
through ``deploy.ramp`` while the challenger's live negative-feedback rate is not worse than the
champion's, rolls back to 0 % when it is significantly worse, and promotes at 100 %.
"""

from __future__ import annotations

import time

import mlflow
from prefect import flow, task

from tuneloop.config import LoopConfig
from tuneloop.flows.register import Registered
from tuneloop.registry.tracking import within_run
from tuneloop.registry.versions import alias_version
from tuneloop.release.flags import challenger_percent, set_challenger_percent
from tuneloop.release.operations import promote, record_event, roll_back
from tuneloop.release.rollout import check


@task(name="deploy")
def deploy(config: LoopConfig, registered: Registered, parent_run_id: str) -> int:
    """Returns the challenger's live share in percent. Running services follow the flag file live."""
    # the share names this version: registered before this line, the challenger had 0 %
    set_challenger_percent(
        config, config.deploy.canary_percent, by=f"loop run {parent_run_id}", version=registered.version
    )
    record_event(
        config,
        registered.version,
        "canary",
        f"{config.deploy.canary_percent} %: opened by loop run {parent_run_id}",
        actor=f"loop run {parent_run_id}",
    )
    share = challenger_percent(config, registered.version)
    with within_run(parent_run_id):
        mlflow.log_metric("deploy.challenger_percent", share)
        mlflow.set_tag("deployed_version", registered.version)
    return share


@flow(name="rollout", log_prints=True)
def rollout(config: LoopConfig | None = None, poll_s: float = 30.0) -> str:
    """Ramp the current challenger; returns 'promoted', 'rolled back: ...', 'full' or 'held: ...'."""
    config = config or LoopConfig()  # a deployment's run: built once, here, from its environment
    challenger = alias_version(config.model_name, "challenger")
    if challenger is None:
        return "held: no challenger registered"
    champion = alias_version(config.model_name, "champion") or "base"
    for share in config.deploy.ramp:
        if share < challenger_percent(config, challenger):
            continue  # already past this step
        set_challenger_percent(config, share, by="rollout flow", version=challenger)
        record_event(config, challenger, "canary", f"{share} %: rollout step", actor="rollout flow")
        print(f"challenger v{challenger} at {share} %")
        began = time.monotonic()
        while True:
            time.sleep(poll_s)
            if (
                alias_version(config.model_name, "challenger") != challenger
                or challenger_percent(config, challenger) == 0
            ):
                return "held: the challenger changed or was rolled back by someone else"
            verdict = check(config, champion, challenger)
            if verdict.action == "rollback":
                roll_back(config, f"rollout at {share} %: {verdict.reason}", version=challenger, actor="rollout flow")
                return f"rolled back: {verdict.reason}"
            waited = time.monotonic() - began
            if verdict.action == "ramp" and waited >= config.deploy.step_wait_s:
                print(f"healthy at {share} %: {verdict.reason}")
                break
            if waited >= config.deploy.max_wait_s:
                return f"held at {share} %: {verdict.reason}"
    if config.deploy.promote_at_full:
        try:
            promote(
                config,
                challenger,
                reason=f"rollout reached 100 % healthy (was challenger v{challenger})",
                actor="rollout flow",
            )
        except ValueError as err:  # a newer challenger was registered meanwhile: never promote it unseen
            return f"held: {err}"
        return "promoted"
    return "full"
