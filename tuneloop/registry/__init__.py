"""The MLflow registry (versions, aliases, lineage) and experiment tracking."""
