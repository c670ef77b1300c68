"""Base models, adapters, prompting, training, inference and calibration."""
