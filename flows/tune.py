"""Stage 2, tune: an Optuna search over LoRA rank and learning rate, one MLflow child run per trial.

The study is named after the dataset and search space, so running the flow again on the same data
continues the same study: completed trials are never rerun, a trial killed mid-way is retried with
its original parameters from its last checkpoint (RDB heartbeat + RetryFailedTrialCallback).
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
from pathlib import Path

import mlflow
import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback
from prefect import task
from pydantic import BaseModel

from eval_suites.suites import heldout_suite, score
from flows.curate import CuratedData
from tuneloop.config import LoopConfig
from tuneloop.models import load_base, load_tokenizer, save_labels
from tuneloop.tracking import within_run
from tuneloop.training import Pruned, add_adapter, encode, predict, train


class TrialResult(BaseModel):
    number: int
    params: dict[str, float]
    score: float
    adapter_dir: Path
    mlflow_run_id: str


class TuneResult(BaseModel):
    study_name: str
    best: TrialResult
    n_complete: int
    n_pruned: int


def study_name(config: LoopConfig, data: CuratedData) -> str:
    space = json.dumps([config.tune.model_dump(exclude={"n_trials", "timeout_s"}), config.tiny], sort_keys=True)
    return f"{config.model_name}-{data.dataset_hash}-{hashlib.sha256(space.encode()).hexdigest()[:8]}"


def storage(config: LoopConfig) -> RDBStorage:
    return RDBStorage(
        config.optuna_db,
        heartbeat_interval=10,
        grace_period=30,
        heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=3, inherit_intermediate_values=True),
    )


def heldout_score(config: LoopConfig, model, tokenizer, data: CuratedData) -> float:
    items = heldout_suite(data.heldout[: config.tune.max_eval_examples])
    outputs, confidences = predict(config.kind, model, tokenizer, [i.input for i in items], data.labels, config.max_new_tokens)
    return score(config.kind, items, outputs, confidences, data.labels)[1]["score"]


def run_trial(trial: optuna.Trial, config: LoopConfig, data: CuratedData, parent_run_id: str, name: str) -> float:
    tune = config.tune
    rank = int(trial.suggest_categorical("rank", tune.ranks))
    lr = trial.suggest_float("lr", tune.lr_min, tune.lr_max, log=True)
    # a retried trial continues the original's checkpoint and MLflow run
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    origin = RetryFailedTrialCallback.retried_trial_number(frozen)  # (optuna 5 needs the frozen trial here)
    key = origin if origin is not None else trial.number
    checkpoint_dir = config.work_dir / "checkpoints" / name / f"trial-{key:03d}"
    previous_run = trial.study.trials[origin].user_attrs.get("mlflow_run_id") if origin is not None else None

    tokenizer = load_tokenizer(config.kind)
    model = add_adapter(load_base(config.kind, config.tiny, data.labels or None), config.kind, rank, tune.seed)
    encoded = encode(config.kind, tokenizer, [(e.prompt, e.target) for e in data.train], data.labels, tune.max_length)
    total = -(-len(encoded) // tune.batch_size) * tune.epochs
    eval_steps = {round(total * (i + 1) / tune.evals_per_trial) for i in range(tune.evals_per_trial)}
    scores: dict[int, float] = {}

    with within_run(parent_run_id), mlflow.start_run(
        run_id=previous_run, run_name=None if previous_run else f"trial-{key:03d} r={rank} lr={lr:.1e}", nested=True
    ) as run:
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if not previous_run:
            mlflow.log_params({"rank": rank, "lr": lr, "trial": key, "study": name, "trainable_params": trainable,
                               "epochs": tune.epochs, "batch_size": tune.batch_size})
        mlflow.set_tags({"tuneloop.stage": "tune", "optuna.trial": trial.number, "dataset_hash": data.dataset_hash})

        def on_eval(step: int) -> None:
            scores[step] = heldout_score(config, model, tokenizer, data)
            mlflow.log_metric("heldout_score", scores[step], step=step)
            trial.report(scores[step], step)
            if trial.should_prune():
                raise Pruned

        result = train(
            model, encoded, tokenizer.pad_token_id, lr=lr, epochs=tune.epochs, batch_size=tune.batch_size,
            seed=tune.seed, eval_steps=eval_steps, on_eval=on_eval,
            on_step=lambda step, loss: mlflow.log_metric("train_loss", loss, step=step),
            checkpoint_dir=checkpoint_dir, checkpoint_every=max(1, total // 4), progress=True,
        )
        mlflow.log_metrics({
            "wall_seconds": result.seconds,
            "tokens_per_second": result.tokens / result.seconds if result.seconds else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "resumed_from_step": result.resumed_from_step,
        })
        if result.pruned:
            mlflow.set_tag("optuna.state", "PRUNED")
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            raise optuna.TrialPruned()
        final = scores.get(total)
        if final is None:
            final = heldout_score(config, model, tokenizer, data)
        mlflow.log_metric("final_heldout_score", final)
        mlflow.set_tag("optuna.state", "COMPLETE")
        adapter_dir = config.work_dir / "adapters" / name / f"trial-{key:03d}"
        model.save_pretrained(adapter_dir)
        if data.labels:
            save_labels(adapter_dir, data.labels)
        trial.set_user_attr("adapter_dir", str(adapter_dir))
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return final


@task(name="tune")
def tune(config: LoopConfig, data: CuratedData, parent_run_id: str) -> TuneResult:
    name = study_name(config, data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage(config), direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=config.tune.seed),
        pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
    )
    if config.tune.first_trial and not study.trials:
        study.enqueue_trial(config.tune.first_trial)
    finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    remaining = config.tune.n_trials - len(finished)
    if remaining > 0:
        study.optimize(lambda t: run_trial(t, config, data, parent_run_id, name), n_trials=remaining,
                       timeout=config.tune.timeout_s, catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RuntimeError(f"study {name}: every trial was pruned or failed; nothing to evaluate")
    best = max(complete, key=lambda t: t.value)
    with within_run(parent_run_id):
        mlflow.set_tags({"best_trial": best.number, "study_name": name})
        mlflow.log_params({f"best_{k}": v for k, v in best.params.items()})
        mlflow.log_metric("best_trial_heldout_score", best.value)
        mlflow.MlflowClient().set_tag(best.user_attrs["mlflow_run_id"], "best_trial", "true")
    return TuneResult(
        study_name=name,
        best=TrialResult(number=best.number, params={k: int(v) if k == "rank" else v for k, v in best.params.items()}, score=best.value,
                         adapter_dir=Path(best.user_attrs["adapter_dir"]), mlflow_run_id=best.user_attrs["mlflow_run_id"]),
        n_complete=len(complete),
        n_pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    )
