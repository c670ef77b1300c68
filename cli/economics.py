"""``tuneloop economics``: when fine-tuning pays back against a hosted model (the crossover report)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneloop.cli.options import HomeOpt, KindChoice, KindOpt, build_config

console = Console()


def economics(
    hosted_price_per_1k: float | None = typer.Option(
        None, help="USD per 1,000 calls of the hosted model (default: cost.hosted_price_per_1k)"
    ),
    calls_per_month: float | None = typer.Option(None, help="Calls served per month (default: cost.calls_per_month)"),
    fine_tune_cost: float | None = typer.Option(
        None, help="One-off fine-tuning cost in USD (default: measured, the loop runs' cost so far)"
    ),
    serving_cost_per_1k: float | None = typer.Option(
        None, help="Own serving cost per 1,000 calls (default: measured by the service)"
    ),
    monthly_loop_cost: float | None = typer.Option(
        None,
        help="USD a month of running the loop (default: measured mean loop cost x cost.loops_per_month + trigger idle cost)",
    ),
    kind: KindChoice | None = KindOpt,
    home: Path | None = HomeOpt,
    plot_path: Path | None = typer.Option(
        None, "--plot", help="Where to write the PNG (default: <home>/work/<kind>/economics/crossover.png)"
    ),
    log: bool = typer.Option(True, help="Also log the report and plot to MLflow (a run 'economics-<kind>')"),
) -> None:
    """The break-even call count and month of fine-tuning vs a hosted model, with a cumulative-cost plot;
    says which figures were measured and which entered."""
    from pydantic import ValidationError

    from tuneloop.costs.cost import describe_config_error
    from tuneloop.costs.economics import EconomicsError, log_to_mlflow, plot, report

    config = build_config(home, kind=kind)  # a bad TUNELOOP_COST__* value: one line naming it, exit 2
    try:
        result = report(
            config, hosted_price_per_1k, calls_per_month, fine_tune_cost, serving_cost_per_1k, monthly_loop_cost
        )
    except EconomicsError as err:
        console.print(
            f"[red]refused:[/red] {err.field.replace('_', '-')}: {str(err).split(': ', 1)[1]}", highlight=False
        )
        raise typer.Exit(1) from None
    except ValidationError as err:  # a price in the config (TUNELOOP_COST__*) is out of range
        console.print(f"[red]refused:[/red] {describe_config_error(err)}", highlight=False)
        raise typer.Exit(1) from None
    table = Table("figure", "value", "source")
    for row in result.lines():
        table.add_row(*row)
    console.print(table)
    console.print(f"[bold]{result.summary()}[/bold]", highlight=False)
    png = plot(result, plot_path or config.work_dir / "economics" / "crossover.png")
    console.print(f"plot: {png}")
    if log:
        run_id = log_to_mlflow(result, png, config=config)
        console.print(f"logged to MLflow run {run_id}")
