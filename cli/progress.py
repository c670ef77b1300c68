"""How the CLI shows a loop's progress (the stages report through tuneloop/progress.py): on a
terminal, stage banners, "trial i of N" with its parameters and live bars with an ETA (rich);
elsewhere (a pipe, a CI log) one plain line per stage and trial and no bars."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tuneloop.progress import Quiet, Reporter, describe


class _RichBar:
    def __init__(self, console: Console, label: str, total: int, start: int):
        self.progress = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task(label, total=total, completed=start, detail="")
        self.progress.start()

    def update(self, n: int = 1, **fields: Any) -> None:
        detail = " ".join(f"{k} {v}" for k, v in fields.items())
        self.progress.update(self.task, advance=n, detail=detail)

    def close(self) -> None:
        self.progress.stop()


class TerminalReporter:
    def __init__(self, console: Console):
        self.console = console

    def stage(self, name: str, index: int, total: int) -> None:
        self.console.rule(f"[bold]{index}/{total} {name}", align="left")

    def trial(self, index: int, total: int, params: dict[str, Any]) -> None:
        self.console.print(f"trial {index} of {total}: {describe(params)}", highlight=False, markup=False)

    def bar(self, label: str, total: int, start: int = 0) -> _RichBar:
        return _RichBar(self.console, label, total, start)


class PlainReporter(Quiet):
    """Lines a log keeps: the stages and the trials; no bars (they would be a line per step)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def _line(self, text: str) -> None:
        # written, not print()ed: the loop flow logs prints (log_prints), below the log level shown
        self.stream.write(text + "\n")
        self.stream.flush()

    def stage(self, name: str, index: int, total: int) -> None:
        self._line(f"[{index}/{total}] {name}")

    def trial(self, index: int, total: int, params: dict[str, Any]) -> None:
        self._line(f"trial {index} of {total}: {describe(params)}")

    def bar(self, label: str, total: int, start: int = 0):
        return super().bar("quiet", total, start)  # no bar at all


def reporter_for(console: Console) -> Reporter:
    """Live progress on a terminal, plain lines otherwise."""
    return TerminalReporter(console) if console.is_terminal else PlainReporter(console.file)
