"""Prefect flows: one module per loop stage, chained by ``flows.loop``."""
