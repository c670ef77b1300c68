"""One loop: curate -> tune -> evaluate -> register -> deploy, under one MLflow parent run."""

from __future__ import annotations

import time

import mlflow
from prefect import flow
from pydantic import BaseModel

from flows.curate import CuratedData, curate
from flows.deploy import deploy
from flows.evaluate import EvalReport, evaluate
from flows.register import Registered, register
from flows.tune import TuneResult, tune
from tuneloop.config import LoopConfig
from tuneloop.owners import claim_flow_run
from tuneloop.tracking import use_experiment


class LoopResult(BaseModel):
    run_id: str
    data: CuratedData
    tuned: TuneResult
    report: EvalReport
    registered: Registered | None
    challenger_percent: int
    seconds: dict[str, float]


@flow(name="tuneloop", log_prints=True)
def loop(config: LoopConfig = LoopConfig()) -> LoopResult:
    claim_flow_run()  # an earlier loop killed on this machine shows as Crashed, not Running forever
    use_experiment(config)
    seconds: dict[str, float] = {}

    def timed(stage: str, fn, *args):
        began = time.perf_counter()
        out = fn(*args)
        seconds[stage] = time.perf_counter() - began
        return out

    with mlflow.start_run(run_name=f"loop-{config.kind}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        run_id = run.info.run_id
        mlflow.set_tags({"tuneloop.kind": config.kind, "tuneloop.stage": "loop"})
        mlflow.log_dict(config.model_dump(mode="json"), "config.json")
        data = timed("curate", curate, config)
        tuned = timed("tune", tune, config, data, run_id)
        report = timed("evaluate", evaluate, config, data, tuned, run_id)
        registered = timed("register", register, config, data, tuned, report, run_id)
        share = timed("deploy", deploy, config, registered, run_id) if registered else 0
        if not registered:
            print("Gate refused the challenger; nothing registered or deployed:\n- " + "\n- ".join(report.reasons))
        mlflow.log_metrics({f"seconds.{k}": v for k, v in seconds.items()})
    return LoopResult(run_id=run_id, data=data, tuned=tuned, report=report, registered=registered,
                      challenger_percent=share, seconds=seconds)
