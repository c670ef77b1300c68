"""Held-out and adversarial evaluation suites and their local `evaluate` metric modules."""
