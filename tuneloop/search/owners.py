"""Which process owns a piece of running work, and whether that process is gone.

A search killed with SIGKILL cannot say so. Its Optuna trials and Prefect flow runs record their
owner (host, PID namespace, PID); the next run on the same machine finds the owner gone and cleans
up at once instead of waiting out a heartbeat grace period.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

log = logging.getLogger(__name__)

OWNER_TAG = "tuneloop.owner:"


def owner_id() -> str:
    """This process, such that another process on the same machine can tell whether it still lives."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino  # containers sharing a hostname still differ here
    except OSError:
        pidns = "-"
    return f"{socket.gethostname()}|{pidns}|{os.getpid()}"


def owner_dead(owner: str) -> bool:
    """True only when the owner provably ran on this machine (same PID namespace) and has exited."""
    host, pidns, pid = owner.rsplit("|", 2)
    if pidns == "-" or owner_id().rsplit("|", 1)[0] != f"{host}|{pidns}":
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # killed but not yet reaped by its parent: a zombie
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def claim_flow_run() -> None:
    """Tag the current Prefect flow run with this process as its owner, and mark the earlier runs of
    the same flow that are still 'Running' but whose owner on this machine is gone as Crashed, so
    the Prefect UI does not show a killed search as running forever. Best effort: never fails a flow."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id)
            client.update_flow_run(current.id, tags=[*current.tags, OWNER_TAG + owner_id()])
            running = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_run.flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
                ),
            )
            for run in running:
                owners = [t[len(OWNER_TAG) :] for t in run.tags if t.startswith(OWNER_TAG)]
                if run.id != current.id and owners and owner_dead(owners[0]):
                    client.set_flow_run_state(
                        run.id,
                        Crashed(message=f"its process ({owners[0]}) is gone; flow run {current.name} took over"),
                        force=True,
                    )
                    log.warning("flow run %s: its process is gone; marked Crashed", run.name)
    except Exception as err:  # noqa: BLE001  bookkeeping must never stop the search itself
        log.warning("could not claim the flow run or clean up orphaned ones: %s", err)
