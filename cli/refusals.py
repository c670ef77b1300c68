"""A loop refused for bad input (data that cannot be split, a base that cannot work, a search budget
that does not fit) is said by the CLI in one line; Prefect would log the same refusal as task and
flow run failures with two tracebacks first. This keeps those records out while the CLI runs a loop."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


class DropRefusals(logging.Filter):
    """Drops the run loggers' records about one of ``types`` (by the exception, or its name in the message)."""

    def __init__(self, types: tuple[type[BaseException], ...]):
        super().__init__()
        self.types, self.names = types, tuple(t.__name__ for t in types)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], self.types):
            return False
        message = record.getMessage()
        return not any(f"{name}(" in message or f"{name}:" in message for name in self.names)


@contextmanager
def quiet_refusals(*types: type[BaseException]) -> Iterator[None]:
    drop = DropRefusals(types)
    loggers = [logging.getLogger(name) for name in PREFECT_RUN_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)
