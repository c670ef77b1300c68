"""The routing flag, without models (the gate's statistics are in test_gate_stats.py)."""

from __future__ import annotations

import time

import pytest

from tuneloop.config import LoopConfig
from tuneloop.release.flags import Router, challenger_percent, set_challenger_percent


def test_router_is_sticky_and_follows_the_shared_flag_live(tmp_path):
    config = LoopConfig(kind="classification", home=tmp_path)
    set_challenger_percent(config, 30, version="2")
    router, replica = Router(config), Router(config)  # two service processes' views of one flag row
    first = {u: router.variant(f"user-{u}", "2") for u in range(1000)}
    share = sum(v == "challenger" for v in first.values()) / 1000
    assert 0.25 < share < 0.35
    assert all(router.variant(f"user-{u}", "2") == v == replica.variant(f"user-{u}", "2") for u, v in first.items())
    # the share was given to version 2: a service whose challenger is another version sends nobody there
    assert all(router.variant(f"user-{u}", "3") == "champion" for u in range(1000)) and router.share_of("3") == 0

    set_challenger_percent(config, 60, version="2")  # ramping up keeps every canary user on the challenger
    deadline = time.monotonic() + 3
    while sum(router.variant(f"user-{u}", "2") == "challenger" for u in range(1000)) < 550:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert all(router.variant(f"user-{u}", "2") == "challenger" for u, v in first.items() if v == "challenger")

    began = time.monotonic()
    set_challenger_percent(config, 0)
    while any(r.variant(f"user-{u}", "2") == "challenger" for r in (router, replica) for u in range(1000)):
        assert time.monotonic() - began < 1.0, "rollback did not reach both replicas within a second"
        time.sleep(0.02)
    assert challenger_percent(config) == 0 == router.percent
    for bad in (101, -1, 12.5):
        with pytest.raises(ValueError, match="challenger_percent"):
            set_challenger_percent(config, bad)
    router.close(), replica.close()
