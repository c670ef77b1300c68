"""The one typed configuration that flows through every stage, the service and the CLI.

Every field can be set from the environment with the ``TUNELOOP_`` prefix (nested fields with
``__``, e.g. ``TUNELOOP_TUNE__N_TRIALS=5``). External services are reached through the usual
variables: ``PREFECT_API_URL``, ``MLFLOW_TRACKING_URI``, and ``TUNELOOP_FEEDBACK_URL`` /
``TUNELOOP_OPTUNA_URL`` for any SQLAlchemy URL (Postgres included).

The settings are split by concern (``tune``, ``release``, ``limits``) and gathered in ``loop.LoopConfig``;
import them from here.
"""

from tuneloop.config.limits import CostConfig, LimitsConfig, RetentionConfig
from tuneloop.config.loop import DatabaseUrl, Kind, LoopConfig, apply_environment
from tuneloop.config.release import DeployConfig, DriftConfig, GateConfig
from tuneloop.config.tune import CLASSIFICATION_LR, CLASSIFICATION_TUNE, DEMO_TUNE, TuneConfig, with_priors

__all__ = [
    "CLASSIFICATION_LR",
    "CLASSIFICATION_TUNE",
    "DEMO_TUNE",
    "CostConfig",
    "DatabaseUrl",
    "DeployConfig",
    "DriftConfig",
    "GateConfig",
    "Kind",
    "LimitsConfig",
    "LoopConfig",
    "RetentionConfig",
    "TuneConfig",
    "apply_environment",
    "with_priors",
]
