"""The same loop on the team stack and embedded, side by side: what orchestration and tracking cost.

python -m bench stack [--kind classification] [--tiny] [--postgres URL] -> bench/results/stack-KIND.json

In fresh homes and fresh databases, one after the other so that each has the machine to itself:
1. the stack: ``tuneloop stack up`` (seconds until every part answers), ``prefect deploy --all``, the
   sample feedback into its operations database, then the ``loop-KIND`` deployment run through a
   worker (``prefect deployment run --watch``: submitted -> Completed) and ``stack down --drop-databases``;
2. embedded: ``tuneloop demo --kind KIND`` (``make demo``'s way: a temporary Prefect server, SQLite
   MLflow and stores, one process).
Each loop's own MLflow run gives the loop's wall time; the rest of each run is orchestration
(worker pickup, the flow run's process start, the temporary server) and the difference between the
two loops is tracking over HTTP into PostgreSQL. Real weights unless ``--tiny``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BIN = Path(sys.executable).parent


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "TUNELOOP_"))}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _run(args: list[str], env: dict[str, str], timeout: float = 3600) -> subprocess.CompletedProcess:
    out = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _loop_seconds(tracking_uri: str, kind: str) -> tuple[float, dict[str, float]]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(f"tuneloop-{kind}")
    [loop] = client.search_runs([experiment.experiment_id], "tags.`tuneloop.stage` = 'loop'")
    stages = {k.removeprefix("seconds."): v for k, v in loop.data.metrics.items() if k.startswith("seconds.")}
    return (loop.info.end_time - loop.info.start_time) / 1000, stages


def on_stack(kind: str, tiny: bool, postgres: str, home: Path) -> dict:
    from devtools.localserver import free_port

    prefix = f"bench_{os.getpid()}"
    stack = [str(BIN / "tuneloop"), "stack"]
    up = [
        *stack,
        "up",
        "--home",
        str(home),
        "--postgres",
        postgres,
        "--db-prefix",
        prefix,
        "--kind",
        kind,
        "--prefect-port",
        str(free_port()),
        "--mlflow-port",
        str(free_port()),
        "--service-port",
        str(free_port()),
        "--worker-port",
        str(free_port()),
        *(["--tiny"] if tiny else []),
    ]
    env = _clean_env(PREFECT_HOME=str(home / "cli-prefect"))
    began = time.monotonic()
    out = _run(up, env, timeout=600)
    figures = {"stack_up_s": time.monotonic() - began}
    stack_env = {m.group(1): m.group(2).strip("'") for m in re.finditer(r"^export (\w+)=(.*)$", out.stdout, re.M)}
    env.update(stack_env)
    try:
        began = time.monotonic()
        _run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], env, timeout=600)
        figures["deploy_s"] = time.monotonic() - began
        from tuneloop.data.feedback import FeedbackStore
        from tuneloop.data.sample_data import sample_feedback

        FeedbackStore(stack_env["TUNELOOP_FEEDBACK_URL"]).add_many_raw(sample_feedback(kind), kind)
        began = time.monotonic()
        # the demo's system prompt, as `tuneloop demo` sets it for the embedded run: the same training and suites
        from tuneloop.data.sample_data import SYSTEM_PROMPT

        params = {"config": {"kind": kind, "system_prompt": SYSTEM_PROMPT}}
        _run(
            [
                str(BIN / "prefect"),
                "deployment",
                "run",
                f"tuneloop/loop-{kind}",
                "--params",
                json.dumps(params),
                "--watch",
                "--watch-timeout",
                "3500",
            ],
            env,
            timeout=3600,
        )
        figures["run_s"] = time.monotonic() - began  # submitted -> Completed, as the CLI saw it
        figures["loop_s"], figures["stages"] = _loop_seconds(stack_env["MLFLOW_TRACKING_URI"], kind)
    finally:
        subprocess.run(
            [*stack, "down", "--home", str(home), "--drop-databases"], env=env, capture_output=True, timeout=300
        )
    return figures


def embedded(kind: str, tiny: bool, home: Path) -> dict:
    env = _clean_env(TUNELOOP_TINY=str(tiny).lower())
    began = time.monotonic()
    _run([str(BIN / "tuneloop"), "demo", "--kind", kind, "--home", str(home)], env)
    figures = {"run_s": time.monotonic() - began}
    figures["loop_s"], figures["stages"] = _loop_seconds(f"sqlite:///{home / 'mlflow.db'}", kind)
    return figures


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=["classification", "generation"], default="classification")
    parser.add_argument("--tiny", action="store_true", help="tiny random models (the orchestration alone)")
    parser.add_argument(
        "--postgres", default=os.environ.get("TUNELOOP_STACK_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        stack = on_stack(args.kind, args.tiny, args.postgres, Path(tmp) / "stack")
        local = embedded(args.kind, args.tiny, Path(tmp) / "embedded")
    result = {
        "kind": args.kind,
        "tiny": args.tiny,
        "cpu_count": os.cpu_count(),
        "stack": stack,
        "embedded": local,
        "overhead_of_loop": {
            "stack_around_loop": (stack["run_s"] - stack["loop_s"]) / stack["loop_s"],
            "embedded_around_loop": (local["run_s"] - local["loop_s"]) / local["loop_s"],
            "loop_stack_vs_embedded": stack["loop_s"] / local["loop_s"] - 1,
            "whole_stack_vs_embedded": stack["run_s"] / local["run_s"] - 1,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"stack-{args.kind}.json").write_text(json.dumps(result, indent=2))
    print(f"stack up {stack['stack_up_s']:.1f} s, deploy {stack['deploy_s']:.1f} s")
    print(
        f"loop ({args.kind}{', tiny' if args.tiny else ''}): stack run {stack['run_s']:.1f} s (its loop {stack['loop_s']:.1f} s) "
        f"vs embedded {local['run_s']:.1f} s (its loop {local['loop_s']:.1f} s)"
    )
    for key, value in result["overhead_of_loop"].items():
        print(f"  {key}: {value:+.1%}")
    print(f"-> {RESULTS / ('stack-' + args.kind + '.json')}")


if __name__ == "__main__":
    main(sys.argv[1:])
