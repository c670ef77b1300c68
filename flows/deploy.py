"""Stage 5, deploy: send a sticky canary share of users to the new challenger through the flag."""

from __future__ import annotations

import mlflow
from prefect import task

from flows.register import Registered
from tuneloop.config import LoopConfig
from tuneloop.flags import challenger_percent, set_challenger_percent
from tuneloop.tracking import within_run


@task(name="deploy")
def deploy(config: LoopConfig, registered: Registered, parent_run_id: str) -> int:
    """Returns the challenger's live share in percent. Running services follow the flag file live."""
    set_challenger_percent(config.flag_file, config.flag_key, config.deploy.canary_percent)
    share = challenger_percent(config.flag_file, config.flag_key)
    with within_run(parent_run_id):
        mlflow.log_metric("deploy.challenger_percent", share)
        mlflow.set_tag("deployed_version", registered.version)
    return share
