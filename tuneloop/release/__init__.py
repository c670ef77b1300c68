"""Release: the routing flag, rollout, sequential tests, operations, drift."""
