"""One loop: curate -> tune -> evaluate -> register -> deploy, under one MLflow parent run."""

from __future__ import annotations

import time

import mlflow
from prefect import flow
from pydantic import BaseModel

from tuneloop import progress
from tuneloop.config import LoopConfig
from tuneloop.costs.cost import LoopMeter, tag_version_cost
from tuneloop.costs.economics import crossover_artifact
from tuneloop.data.datasets import DatasetRef
from tuneloop.flows.curate import curate
from tuneloop.flows.deploy import deploy
from tuneloop.flows.evaluate import EvalReport, evaluate
from tuneloop.flows.register import Registered, register
from tuneloop.flows.reviewer_notes import write_notes
from tuneloop.flows.tune import TuneResult, tune
from tuneloop.modeling.models import preflight
from tuneloop.registry.tracking import use_experiment
from tuneloop.search.owners import claim_flow_run


class LoopResult(BaseModel):
    run_id: str
    data: DatasetRef
    tuned: TuneResult
    report: EvalReport
    registered: Registered | None
    challenger_percent: int
    seconds: dict[str, float]


@flow(name="tuneloop", log_prints=True)
def loop(config: LoopConfig | None = None) -> LoopResult:
    config = config or LoopConfig()  # a deployment's run: built once, here, from its environment
    base = preflight(config)  # a base, device or quantization setting that cannot work is refused before any work
    claim_flow_run()  # an earlier loop killed on this machine shows as Crashed, not Running forever
    use_experiment(config)
    meter = LoopMeter.for_loop(config)  # CPU, GPU and wall seconds and bytes stored, per stage, priced
    with mlflow.start_run(run_name=f"loop-{config.kind}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        run_id = run.info.run_id
        mlflow.set_tags({"tuneloop.kind": config.kind, "tuneloop.stage": "loop", **base.tags()})
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        stage = _stages(meter)
        data = stage("curate", curate, config)
        tuned = stage("tune", tune, config, data, run_id)
        report = stage("evaluate", evaluate, config, data, tuned, run_id)
        registered = stage("register", register, config, data, tuned, report, run_id)
        write_notes(config, data, tuned, report, registered, run_id)  # the reviewer's first screen in MLflow's UI
        share = stage("deploy", deploy, config, registered, run_id) if registered else 0
        if not registered:
            print("Gate refused the challenger; nothing registered or deployed:\n- " + "\n- ".join(report.reasons))
        mlflow.log_metrics({f"seconds.{k}": v for k, v in meter.seconds.items()})
    meter.log(run_id)
    if registered:  # its loop, and the refused loops and idle trigger runs since the previous version
        tag_version_cost(config, registered.version)
    crossover_artifact(config, run_id)  # when fine-tuning pays, from what was measured
    return LoopResult(
        run_id=run_id,
        data=data,
        tuned=tuned,
        report=report,
        registered=registered,
        challenger_percent=share,
        seconds=meter.seconds,
    )


STAGES = ("curate", "tune", "evaluate", "register", "deploy")


def _stages(meter: LoopMeter):
    """Run a stage metered, announcing it first (stage i of 5) to the progress reporter."""

    def stage(name: str, fn, *args):
        progress.current().stage(name, STAGES.index(name) + 1, len(STAGES))
        return meter.run(name, fn, *args)

    return stage
