"""Progress of a loop, reported through one small interface so that the stages say what they do
without knowing how it is shown: the CLI installs a terminal reporter (cli/progress.py), everything
else (flows on a worker, the service, tests) gets the default, which keeps the training step bar on
stderr and says nothing more.

Reporters are process-wide: a search's trials in other processes report there, not here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Bar(Protocol):
    def update(self, n: int = 1, **fields: Any) -> None: ...

    def close(self) -> None: ...


class Reporter(Protocol):
    def stage(self, name: str, index: int, total: int) -> None:
        """A stage of the loop begins (1-based ``index`` of ``total``)."""

    def trial(self, index: int, total: int, params: dict[str, Any]) -> None:
        """A search trial begins (``total``: the trials the study should hold)."""

    def bar(self, label: str, total: int, start: int = 0) -> Bar:
        """A counted piece of work: training steps, evaluation parts."""


class _NoBar:
    def update(self, n: int = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Quiet:
    """Says nothing; training steps show tqdm's bar (on stderr) as they always did."""

    def stage(self, name: str, index: int, total: int) -> None:
        pass

    def trial(self, index: int, total: int, params: dict[str, Any]) -> None:
        pass

    def bar(self, label: str, total: int, start: int = 0) -> Bar:
        if label != "train":
            return _NoBar()
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc=label, unit="step", leave=False)

        class _Tqdm:
            def update(self, n: int = 1, **fields: Any) -> None:
                bar.set_postfix(fields, refresh=False)
                bar.update(n)

            def close(self) -> None:
                bar.close()

        return _Tqdm()


_current: Reporter = Quiet()


def current() -> Reporter:
    return _current


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Use ``reporter`` for the work inside the block (the CLI wraps a command in it)."""
    global _current
    before, _current = _current, reporter
    try:
        yield reporter
    finally:
        _current = before


def describe(params: dict[str, Any]) -> str:
    """A trial's parameters in one short line: 'rank 16, lr 9.00e-04, ...'."""
    return ", ".join(
        f"{k} {v:.2e}" if isinstance(v, float) and (abs(v) < 1e-2 or abs(v) >= 1e4) else f"{k} {v}"
        for k, v in params.items()
    )
