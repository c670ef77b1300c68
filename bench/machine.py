"""What a benchmark ran on, for its result file: the date, the processor, its cores and the load."""

from __future__ import annotations

import datetime
import os
import platform


def processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe() -> str:
    """e.g. "2-core AMD EPYC 7B13, no GPU": the line a benchmark page quotes."""
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        gpu = None
    return f"{os.cpu_count()}-core {processor()}, {gpu or 'no GPU'}"


def stamp() -> dict:
    """The date, the machine and its one-minute load average when called."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": describe(),
        "load_average": round(os.getloadavg()[0], 2),
    }
