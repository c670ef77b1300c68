"""What it costs and when it pays: the cost meter, cost metrics on a loop run, the cost of a registered
version, serving cost per 1,000 answers, and the crossover report (arithmetic, bad input, the CLI)."""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import mlflow
import pytest
from conftest import tiny_config
from mlflow import MlflowClient
from pydantic import ValidationError
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from tuneloop.config import CostConfig, LoopConfig
from tuneloop.costs.cost import (
    LoopMeter,
    Usage,
    cost_per_1k,
    cost_per_1k_from_throughput,
    describe_config_error,
    meter,
    tag_version_cost,
    version_cost,
)
from tuneloop.costs.economics import EconomicsError, bench_cost_per_1k, crossover, cumulative, plot, report
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.ops_tables import SettingRow, TriggerRunRow
from tuneloop.registry.tracking import use_experiment

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"


# --- the meter ---------------------------------------------------------------------------------------


def test_meter_counts_this_process_and_its_children_cpu_and_the_bytes_stored(tmp_path):
    with meter("burn", watch=[tmp_path]) as usage:
        began = time.process_time()
        while time.process_time() - began < 0.3:  # 0.3 s of this process's CPU
            pass
        subprocess.run([sys.executable, "-c", BURN.format(s=0.4)], check=True)  # 0.4 s in a child
        (tmp_path / "artifact.bin").write_bytes(b"x" * 123_456)
    assert usage.cpu_s >= 0.3 + 0.4  # the child's CPU is counted once it has exited
    assert usage.cpu_s <= usage.wall_s * 8  # bounded by the cores, not made up
    assert usage.stored_bytes == 123_456 and usage.gpus == 0 and usage.gpu_s == 0
    prices = CostConfig(cpu_hour=3.6, storage_gb_month=1.0)  # $0.001 per CPU second, $1 per GB-month
    assert usage.usd(prices) == pytest.approx(usage.cpu_s * 0.001 + 123_456 / 1e9 * 1.0)


def test_a_process_started_for_one_job_counts_its_start_up():
    """A scheduled trigger run is a process of its own: its imports and start-up are its cost too."""
    script = BURN.format(s=0.3) + (
        "from tuneloop.costs.cost import meter\n"
        "with meter('trigger') as block: pass\n"
        "with meter('trigger', since_process_start=True) as whole: pass\n"
        "print(block.cpu_s, whole.cpu_s, whole.wall_s)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    block_cpu, whole_cpu, whole_wall = map(float, out.stdout.split())
    assert block_cpu < 0.1 and whole_cpu >= 0.3 and whole_wall >= whole_cpu / 8


def test_meter_records_a_stage_that_raises_and_prices_gpu_time():
    loop = LoopMeter(CostConfig(cpu_hour=1, gpu_hour=10))
    with pytest.raises(ZeroDivisionError):
        loop.run("tune", lambda: 1 / 0)
    assert [u.stage for u in loop.usages] == ["tune"]
    usage = Usage("tune", wall_s=360, cpu_s=720, gpu_s=720, gpus=2)
    assert usage.usd(CostConfig(cpu_hour=1, gpu_hour=10)) == pytest.approx(720 / 3600 * 1 + 720 / 3600 * 10)


def test_cost_metrics_are_logged_on_the_run(home):
    config = tiny_config(home, "classification")
    use_experiment(config)
    loop = LoopMeter.for_loop(config)
    with mlflow.start_run() as run:
        loop.run("curate", sum, range(10**6))
        loop.run(
            "tune",
            lambda: (
                config.work_dir.mkdir(parents=True, exist_ok=True),
                (config.work_dir / "adapter.bin").write_bytes(b"a" * 10_000),
            ),
        )
    logged = loop.log(run.info.run_id)
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    for stage in ("curate", "tune"):
        assert (
            metrics[f"cost.{stage}.cpu_s"] >= 0 and f"cost.{stage}.usd" in metrics and f"cost.{stage}.wall_s" in metrics
        )
    assert metrics["cost.curate.cpu_s"] > 0
    assert metrics["cost.tune.stored_bytes"] == 10_000
    assert metrics["cost.total_usd"] == pytest.approx(metrics["cost.curate.usd"] + metrics["cost.tune.usd"])
    assert metrics["cost.total_usd"] == pytest.approx(logged["cost.total_usd"]) and metrics["cost.total_usd"] > 0


def test_prices_are_validated_with_the_field_named():
    for field, value in (
        ("cpu_hour", -1),
        ("gpu_hour", 5000),
        ("storage_gb_month", float("nan")),
        ("cpu_hour", float("inf")),
    ):
        with pytest.raises(ValidationError) as err:
            LoopConfig(cost={field: value})
        assert f"cost.{field}" in describe_config_error(err.value)
    assert LoopConfig(cost={"cpu_hour": 0}).cost.cpu_hour == 0  # free is allowed


# --- the cost of a registered version ------------------------------------------------------------------


def _loop_run(config, usd: float | None, started: int) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(config.model_name).experiment_id
    run = client.create_run(
        experiment, start_time=started, tags={"tuneloop.stage": "loop", "tuneloop.kind": config.kind}
    )
    if usd is not None:
        client.log_metric(run.info.run_id, "cost.total_usd", usd)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_version_costs_its_loop_the_refused_loops_and_the_idle_trigger_since_the_previous_version(home):
    config = tiny_config(home, "classification")
    use_experiment(config)
    client = MlflowClient()
    client.create_registered_model(config.model_name)
    t0 = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp() * 1000)
    hour = 3_600_000
    first = _loop_run(config, 1.50, t0)
    _loop_run(config, 0.75, t0 + 1 * hour)  # refused
    _loop_run(config, None, t0 + 2 * hour)  # refused  # logged before metering: counts 0
    second = _loop_run(config, 2.00, t0 + 3 * hour)
    for run_id in (first, second):
        client.create_model_version(
            config.model_name, source=str(home / "x"), run_id=run_id, tags={"loop_run_id": run_id}
        )
    store = FeedbackStore(config.feedback_db)
    with Session(store.engine) as session, session.begin():
        for minutes, ran, usd in ((-30, False, 0.01), (90, False, 0.002), (100, False, 0.003), (110, True, 0.5)):
            session.add(
                TriggerRunRow(
                    kind=config.kind,
                    ran=ran,
                    reason="x",
                    cpu_seconds=1,
                    wall_seconds=1,
                    cost_usd=usd,
                    at=datetime(2030, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes),
                )
            )
    cost = tag_version_cost(config, "2")
    # by hand: 2.00 (its loop) + 0.75 + 0 (the loops after v1's) + 0.002 + 0.003 (no-op trigger runs in between)
    assert cost["cost.total_usd"] == pytest.approx(2.00 + 0.75 + 0.005)
    assert cost["cost.refused_loops"] == 2 and cost["cost.unmetered_loops"] == 1 and cost["cost.idle_runs"] == 2
    assert client.get_model_version(config.model_name, "2").tags["cost.total_usd"] == f"{2.755:.6f}"
    first_cost = version_cost(config, "1")  # the first version: its own loop and the trigger's runs before it
    assert first_cost["cost.total_usd"] == pytest.approx(1.50 + 0.01) and first_cost["cost.refused_loops"] == 0


# --- serving cost -------------------------------------------------------------------------------------


def test_cost_per_1k_inferences_by_hand():
    # a worker at $0.08/h busy 36 s for 1,000 answers: 36/1000 s each x $0.08/3600 per s x 1000 = $0.0008
    assert cost_per_1k(36.0, 1000, 0.08) == pytest.approx(0.0008)
    assert cost_per_1k(1.0, 0, 0.08) is None
    # a $0.08/h machine answering 20 per second: 0.08 / 3600 / 20 x 1000 = $0.001111
    assert cost_per_1k_from_throughput(20.0, 0.08) == pytest.approx(0.08 / 3600 / 20 * 1000)
    assert cost_per_1k_from_throughput(0.0, 0.08) is None
    bench = bench_cost_per_1k(
        {
            "levels": [
                {"clients": 1, "service": {"throughput_rps": 10.0}},
                {"clients": 16, "service": {"throughput_rps": 40.0}},
            ]
        },
        CostConfig(cpu_hour=0.04),
        cores=2,
    )
    assert bench["machine_usd_per_hour"] == pytest.approx(0.08)
    assert bench["usd_per_1k_at_best_throughput"] == pytest.approx(0.08 / 3600 / 40 * 1000)


# --- the crossover --------------------------------------------------------------------------------------


def test_crossover_arithmetic_matches_a_hand_computation():
    c = crossover(2500, 5.0, 0.5, 200_000)
    # $2,500 / ($0.005 - $0.0005) = 555,555.6 calls; / 200,000 a month = 2.78 months
    assert c.saving_per_call == pytest.approx(0.0045)
    assert c.break_even_calls == pytest.approx(2500 / 0.0045)
    assert c.break_even_months == pytest.approx(2500 / 0.0045 / 200_000)
    assert round(c.break_even_calls) == 555_556 and round(c.break_even_months, 2) == 2.78
    with_loop = crossover(2500, 5.0, 0.5, 200_000, monthly_loop=100)
    # monthly saving 200,000 x 0.0045 - 100 = 800; 2,500 / 800 = 3.125 months = 625,000 calls
    assert with_loop.monthly_saving == pytest.approx(800)
    assert with_loop.break_even_months == pytest.approx(3.125) and with_loop.break_even_calls == pytest.approx(625_000)
    months, hosted, tuned = cumulative(with_loop, months=3.125, points=2)
    assert hosted[-1] == pytest.approx(tuned[-1])  # the curves meet at the break-even
    assert all(f.source == "entered" for f in (c.fine_tune, c.hosted_per_1k, c.serving_per_1k, c.calls_per_month))


@pytest.mark.parametrize(
    "args, field",
    [
        ((-1, 5.0, 0.5, 200_000), "fine_tune_cost"),
        ((2500, -5.0, 0.5, 200_000), "hosted_price_per_1k"),
        ((2500, 5.0, -0.5, 200_000), "serving_cost_per_1k"),
        ((2500, 5.0, 0.5, 0), "calls_per_month"),
        ((2500, 5.0, 0.5, -10), "calls_per_month"),
        ((2500, 1e7, 0.5, 200_000), "hosted_price_per_1k"),
        ((2500, float("nan"), 0.5, 200_000), "hosted_price_per_1k"),
        ((float("inf"), 5.0, 0.5, 200_000), "fine_tune_cost"),
        ((2500, 5.0, 0.5, 200_000, -3), "monthly_loop_cost"),
        ((2500, "5", 0.5, 200_000), "hosted_price_per_1k"),
    ],
)
def test_bad_figures_are_refused_naming_the_figure(args, field):
    with pytest.raises(EconomicsError) as err:
        crossover(*args)
    assert err.value.field == field


def test_no_crossover_is_said_not_divided_by():
    at_cost = crossover(2500, 0.5, 0.5, 200_000)
    assert at_cost.break_even_months is None and at_cost.break_even_calls is None
    assert "never pays back" in at_cost.no_crossover
    eaten = crossover(2500, 5.0, 0.5, 200_000, monthly_loop=900)  # the loop costs exactly what is saved
    assert eaten.break_even_months is None and "never closes" in eaten.no_crossover
    for c in (at_cost, eaten):
        assert all(math.isfinite(v) for v in (c.saving_per_call, c.monthly_saving))


def test_plot_is_a_png(tmp_path):
    path = plot(crossover(2500, 5.0, 0.5, 200_000, monthly_loop=50), tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_report_uses_measured_figures_and_says_so(home):
    config = tiny_config(home, "classification")
    use_experiment(config)
    with pytest.raises(EconomicsError, match="fine_tune_cost"):
        report(config)  # nothing measured, nothing entered
    for i, usd in enumerate((1.0, 3.0)):
        _loop_run(config, usd, int(time.time() * 1000) - (2 - i) * 1000)
    store = FeedbackStore(config.feedback_db)
    with Session(store.engine) as session, session.begin():
        session.add(
            TriggerRunRow(kind=config.kind, ran=False, reason="x", cpu_seconds=1, wall_seconds=1, cost_usd=0.0001)
        )
        session.add(
            SettingRow(
                key=f"serving_cost:{config.model_name}",
                value='{"at": "now", "versions": {"1": '
                '{"requests": 500, "busy_s": 10, "usd_per_1k": 0.25, "worker_usd_per_hour": 0.04}}}',
            )
        )
    config.cost.loops_per_month, config.cost.trigger_runs_per_month = 4, 2880
    c = report(config, hosted_price_per_1k=5.0, calls_per_month=200_000)
    assert c.fine_tune.source == "measured" and c.fine_tune.value == pytest.approx(4.0)
    assert c.serving_per_1k.source == "measured" and c.serving_per_1k.value == pytest.approx(0.25)
    assert c.monthly_loop.source == "measured" and c.monthly_loop.value == pytest.approx(2.0 * 4 + 0.0001 * 2880)
    assert c.hosted_per_1k.source == "entered"
    assert c.break_even_months == pytest.approx(4.0 / (200_000 * (5.0 - 0.25) / 1000 - c.monthly_loop.value))
    entered = report(config, 5.0, 200_000, fine_tune_cost=2500, serving_cost_per_1k=0.5, monthly_loop_cost=0)
    assert entered.fine_tune.source == entered.serving_per_1k.source == entered.monthly_loop.source == "entered"


def test_the_economics_command(home):
    from tuneloop.cli.main import app

    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "economics",
            "--home",
            str(home),
            "--hosted-price-per-1k",
            "5",
            "--calls-per-month",
            "200000",
            "--fine-tune-cost",
            "2500",
            "--serving-cost-per-1k",
            "0.5",
            "--plot",
            str(home / "c.png"),
        ],
        terminal_width=200,
    )
    assert ok.exit_code == 0, ok.output
    assert "555,556 calls" in ok.output and "month 2.8" in ok.output and "entered" in ok.output
    assert (home / "c.png").exists()
    run = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("tuneloop-generation").experiment_id],
        filter_string="tags.`tuneloop.stage` = 'economics'",
    )[0]
    assert run.data.metrics["economics.break_even_calls"] == pytest.approx(2500 / 0.0045)
    assert "economics/crossover.png" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "economics")]
    for args, says in (
        (["--calls-per-month", "0"], "calls-per-month"),
        (["--hosted-price-per-1k", "-2"], "hosted-price-per-1k"),
        (["--serving-cost-per-1k", "nan"], "serving-cost-per-1k"),
    ):
        bad = runner.invoke(
            app,
            [
                "economics",
                "--home",
                str(home),
                "--fine-tune-cost",
                "2500",
                "--serving-cost-per-1k",
                "0.5",
                "--no-log",
                *args,
            ],
            terminal_width=200,
        )
        assert bad.exit_code == 1 and says in bad.output and "Traceback" not in bad.output, bad.output
    none = runner.invoke(
        app,
        [
            "economics",
            "--home",
            str(home),
            "--hosted-price-per-1k",
            "0.4",
            "--fine-tune-cost",
            "2500",
            "--serving-cost-per-1k",
            "0.5",
            "--no-log",
        ],
        terminal_width=200,
    )
    assert none.exit_code == 0 and "No crossover" in none.output


def test_the_crossover_artifact_after_a_loop(home):
    from prefect import flow

    config = tiny_config(home, "classification")
    use_experiment(config)
    run_id = _loop_run(config, 2.0, int(time.time() * 1000))
    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        session.add(
            SettingRow(
                key=f"serving_cost:{config.model_name}",
                value='{"at": "now", "versions": {"1": '
                '{"requests": 500, "busy_s": 10, "usd_per_1k": 0.25, "worker_usd_per_hour": 0.04}}}',
            )
        )

    @flow
    def after_loop() -> str:
        from tuneloop.costs.economics import crossover_artifact

        return crossover_artifact(config, run_id)

    text = after_loop()
    assert "Break-even after" in text and "measured" in text
    artifacts = [a.path for a in MlflowClient().list_artifacts(run_id, "economics")]
    assert any(p.endswith(".png") for p in artifacts) and "economics/crossover.md" in artifacts
    assert "economics.break_even_months" in MlflowClient().get_run(run_id).data.metrics
