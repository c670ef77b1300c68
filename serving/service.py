"""The BentoML service: routed predictions, feedback intake and the operator's admin API.

Run with ``bentoml serve tuneloop.serving.service:Tuneloop --host 127.0.0.1 --port 3000`` (or ``tuneloop
serve``); it reads the same ``TUNELOOP_*`` settings as the flows. Every answer names the model
version and request id that produced it and carries a receipt for them (``tuneloop/access/receipts.py``),
so feedback on it feeds the next loop and feedback on anything else is refused. /predict is open to
apps; feedback needs a ``feedback`` (or ``admin``) token and /v1/admin/* an ``admin`` token
(``tuneloop/access/tokens.py``). Bodies are bounded before they are parsed (``serving/limits.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from datetime import UTC
from typing import Annotated

import bentoml
from fastapi import Body, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

from tuneloop.access import receipts, tokens
from tuneloop.config import LoopConfig, apply_environment
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.records import MAX_TEXT, FeedbackRecord
from tuneloop.modeling.fast import fast_paths
from tuneloop.release.flags import Router

apply_environment()  # before MLflow reads its tracking URI
CONFIG = LoopConfig()  # the service process's one configuration: built once, at import, from its environment
# every MLflow call here is on a request, admin or refresh path: bounded waits, not MLflow's ~4 minutes
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(CONFIG.deploy.registry_timeout_s))
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(CONFIG.deploy.registry_retries))
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.1")

from tuneloop.modeling.models import usable_cores  # noqa: E402
from tuneloop.release import operations  # noqa: E402
from tuneloop.serving.known_state import ReadyDetail  # noqa: E402
from tuneloop.serving.limits import BodyLimit  # noqa: E402
from tuneloop.serving.live import SegmentLabels, Shadow, guard, publish_drift, record_batch  # noqa: E402
from tuneloop.serving.models import AdapterBank, watch  # noqa: E402  (needs the environment above)

api = FastAPI(title="tuneloop operations")
log = logging.getLogger("tuneloop.serving")


class PredictRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128, description="Routing key: a user stays on one side.")
    input: str = Field(max_length=MAX_TEXT, description="The prompt (generation) or utterance (classification).")
    request_id: str | None = Field(None, max_length=128, description="Echoed back; generated when absent.")
    segment: str | None = Field(
        None, max_length=64, description="Optional tag (plan, locale, ...): /metrics counts requests by it."
    )


class Answer(BaseModel):
    request_id: str
    output: str
    model_version: str
    variant: str
    confidence: float | None = None
    receipt: str = Field(description="HMAC of request id, model version, user id and kind: send it back with feedback.")


class Canary(BaseModel):
    percent: int = Field(ge=0, le=100, description="Share of users routed to the challenger.")


class Promotion(BaseModel):
    expected_version: str = Field(
        min_length=1,
        max_length=64,
        description="The challenger version to promote; refused (409) when the challenger is another version by now.",
    )


def _default_workers() -> int:
    """One worker per GPU when the service runs on GPUs (each holds its bank on its own device), else one per core."""
    import torch

    if CONFIG.device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return usable_cores()


WORKERS = CONFIG.deploy.serve_workers or _default_workers()


def _max_batch() -> int:
    import torch

    on_gpu = CONFIG.device in ("auto", "cuda") and torch.cuda.is_available()
    return CONFIG.deploy.max_batch_size or (128 if on_gpu else 32)


MAX_BATCH = _max_batch()


@bentoml.service(name="tuneloop", traffic={"timeout": 300}, workers=WORKERS)
@bentoml.asgi_app(api, path="/v1")
class Tuneloop:
    def __init__(self) -> None:
        import torch

        # workers split the cores: more threads than cores would make every forward wait on the others
        torch.set_num_threads(max(1, usable_cores() // WORKERS))
        self.config = CONFIG
        fast_paths.configure(self.config.fast_paths)
        self.store = FeedbackStore(self.config.feedback_db)
        self.router = Router(self.config)
        self.receipt_key = receipts.receipt_key(self.store)
        self.bank = AdapterBank(self.config, device_index=(bentoml.server_context.worker_index or 1) - 1)
        self.bank.on_load_failure = self._version_failed
        self.bank.refresh()  # with the registry down: what this home last served (or not ready until it answers)
        self._stop = threading.Event()
        watch(self.bank, float(os.environ.get("TUNELOOP_REGISTRY_POLL_S", "2")), self._stop)
        self.segments = SegmentLabels(self.config.deploy.max_segment_labels)
        self.drift = None
        if bentoml.server_context.worker_index in (None, 1):  # one guard per service, not one per worker
            on_gpu = self.bank.device.type == "cuda"  # a worker holds one GPU there, and its share of the cores
            guard(
                self.config,
                lambda: dict(self.bank.served),
                self.config.deploy.guard_interval_s,
                self._stop,
                cores_per_worker=torch.get_num_threads(),
                gpus_per_worker=int(on_gpu),
            )
            if self.config.drift.enabled:  # this worker's share of the inputs is the sample tested for drift
                from tuneloop.release.drift import DriftMonitor

                self.drift = DriftMonitor(self.config, lambda: self.bank.version_of("champion"), publish_drift)
                self.drift.start(self._stop)
        self.shadow = None
        if self.config.deploy.shadow:
            # the shadow's own model (and lock): its forward passes never hold up a live request's
            shadow_bank = AdapterBank(self.config, device_index=(bentoml.server_context.worker_index or 1) - 1)
            shadow_bank.on_load_failure = self._version_failed
            shadow_bank.refresh()
            watch(shadow_bank, float(os.environ.get("TUNELOOP_REGISTRY_POLL_S", "2")), self._stop)
            self.shadow = Shadow(self.config, shadow_bank.predict)

    def __is_ready__(self) -> bool:
        return self.bank.ready

    def _version_failed(self, alias: str, version: str, reason: str) -> None:
        """A version that cannot be loaded: counted, and a challenger's share closed with the reason logged."""
        from tuneloop.release.flags import challenger_percent, set_challenger_percent
        from tuneloop.serving.live import metrics

        metrics().adapter_load_failures.labels(alias, version).inc()
        if alias == "challenger" and challenger_percent(self.config, version) > 0:
            why = f"v{version} cannot be loaded by the service ({reason})"
            set_challenger_percent(self.config, 0, by="service", version=version)
            operations.record_event(self.config, version, "canary", f"0 %: {why}", actor="service")
            log.warning("canary of v%s set to 0 %%: %s", version, why)

    @bentoml.api(route="/predict", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    def predict(self, requests: list[PredictRequest]) -> list[Answer]:
        """Answer each request with the version its user is routed to; concurrent calls are batched, and
        one batch runs champion and challenger rows together (one forward for the base model's share)."""
        challenger = self.bank.served.get("challenger")
        variants = ["champion" if self.shadow else self.router.variant(r.user_id, challenger) for r in requests]
        versions = [self.bank.version_of(v) for v in variants]
        began = time.perf_counter()
        outputs, confidences = self.bank.predict(versions, [r.input for r in requests])
        elapsed = time.perf_counter() - began
        served_as = [self.bank.variant_of(variant, version) for variant, version in zip(variants, versions)]
        record_batch(versions, served_as, [self.segments(r.segment) for r in requests], elapsed)
        if self.drift is not None:
            self.drift.add([r.input for r in requests])
        answers = []
        for i, request in enumerate(requests):
            request_id = request.request_id or uuid.uuid4().hex
            answers.append(
                Answer(
                    request_id=request_id,
                    output=outputs[i],
                    model_version=versions[i],
                    variant=served_as[i],
                    confidence=confidences[i] if confidences else None,
                    receipt=receipts.sign(self.receipt_key, request_id, versions[i], request.user_id, self.config.kind),
                )
            )
        challenger = self.bank.served.get("challenger")
        if self.shadow and challenger:
            self.shadow.mirror(challenger, list(requests), answers)
        return answers

    # --- feedback and admin (FastAPI routes under /v1) ---------------------------------------------

    def _authorise(self, authorization: str | None, scope: str) -> tokens.Caller:
        """The named token behind the header: 401 when missing or unknown, 403 when its scope does not allow ``scope``."""
        caller = tokens.authenticate(self.store, authorization)
        if caller is None:
            raise HTTPException(
                status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
            )
        if not caller.may(scope):
            raise HTTPException(
                status_code=403, detail=f"token {caller.name!r} has scope {caller.scope!r}; this needs {scope!r}"
            )
        return caller

    @api.post(
        "/feedback",
        status_code=201,
        response_model=None,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": FeedbackRecord.model_json_schema()}},
            }
        },
    )
    async def feedback(self, request: Request, authorization: Annotated[str | None, Header()] = None):
        """Store one verdict (schema: FeedbackRecord) about an answer this service gave. 201 once it is
        committed, 200 for a retry of a stored request id; 4xx naming the field otherwise: 400 undecodable
        body, 401 token, 403 token scope or a receipt that does not match the record, 409 request id
        reused for a different record, 413 body too large, 422 invalid field, missing receipt or unknown
        model version, 429 the user's feedback rate (limits.feedback_per_user)."""
        from fastapi.responses import JSONResponse
        from sqlalchemy.exc import SQLAlchemyError
        from starlette.concurrency import run_in_threadpool

        from tuneloop.data.records import FeedbackError, parse_feedback, read_limited

        try:
            await run_in_threadpool(self._authorise, authorization, "feedback")
        except SQLAlchemyError:  # the token table cannot be read: nothing was taken, so retrying is safe
            return JSONResponse({"detail": "store: not available, retry later", "field": "store"}, status_code=503)
        try:
            # the body is read and parsed here, not by FastAPI, so that invalid UTF-8, bad JSON and
            # absurd sizes get a 4xx naming the problem instead of a generic error
            record = parse_feedback(await read_limited(request.stream()), kind=self.config.kind)
            self._check_receipt(record)

            def check_and_store() -> tuple[int, bool]:  # blocking: one trip to the thread pool
                self._check_rate(record)
                if not self._known_version(record.model_version):
                    raise FeedbackError(
                        "model_version", f"unknown version {record.model_version!r} of {self.config.model_name}"
                    )
                return self.store.add(record, source="api")  # returns after the commit

            feedback_id, created = await run_in_threadpool(check_and_store)
        except FeedbackError as err:
            return JSONResponse(err.to_json(), status_code=err.status)
        except (
            SQLAlchemyError
        ) as err:  # locked past its wait, disk full, unreachable: not committed, so not acknowledged
            log.warning(
                "feedback not stored (%s): answered 503", type(err.orig if hasattr(err, "orig") else err).__name__
            )
            return JSONResponse({"detail": "store: not stored, retry later", "field": "store"}, status_code=503)
        return JSONResponse(
            {"id": feedback_id, "created": created, "request_id": record.request_id},
            status_code=201 if created else 200,
        )

    def _check_receipt(self, record: FeedbackRecord) -> None:
        from tuneloop.data.records import FeedbackError

        if not record.receipt:
            raise FeedbackError("receipt", "required: the receipt of the /predict answer this feedback is about")
        if not receipts.verify(
            self.receipt_key, record.receipt, record.request_id, record.model_version, record.user_id, record.kind
        ):
            raise FeedbackError(
                "receipt",
                "does not match request_id, model_version, user_id and kind: this service gave no such answer",
                403,
            )

    def _check_rate(self, record: FeedbackRecord) -> None:
        """429 past ``limits.feedback_per_user`` records per user id in the window; a retry of a stored
        record is never refused (it was acknowledged, and storing it again is a no-op)."""
        from datetime import datetime, timedelta

        from tuneloop.data.records import FeedbackError

        limits = self.config.limits
        since = datetime.now(UTC) - timedelta(seconds=limits.feedback_window_s)
        if (
            self.store.recent_by_user(record.user_id, since) >= limits.feedback_per_user
            and self.store.get(record.request_id, record.kind) is None
        ):
            raise FeedbackError(
                "user_id",
                f"more than {limits.feedback_per_user} feedback records in "
                f"{limits.feedback_window_s:g} s from this user (limits.feedback_per_user); retry later",
                429,
            )

    def _known_version(self, version: str) -> bool:
        """'base', a served version, or one the registry knows. Answers are cached: known versions for
        good, unknown ones for a few seconds (a version registered just now becomes valid quickly)."""
        from tuneloop.data.records import FeedbackError, registry_has_version

        if version == "base" or version in self.bank.served.values():
            return True
        cache: dict[str, tuple[bool, float]] = self.__dict__.setdefault("_version_cache", {})
        known, checked = cache.get(version, (False, 0.0))
        if known or time.monotonic() - checked < 5:
            return known
        try:
            known = registry_has_version(self.config.model_name, version)
        except Exception as err:  # the registry is down: a retryable server condition, not bad input
            raise FeedbackError(
                "model_version", f"cannot check against the registry now ({type(err).__name__})", 503
            ) from err
        if len(cache) > 10_000:  # bounded: a client sending random versions cannot grow it without limit
            cache.clear()
        cache[version] = (known, time.monotonic())
        return known

    @api.get("/routing")
    def routing(self) -> dict:
        """What serves now: versions per alias and the challenger's share (both in memory: no database call)."""
        served = dict(self.bank.served)
        return {"served": served, "challenger_percent": self.router.share_of(served.get("challenger"))}

    @api.post("/admin/rollback")
    def rollback(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        """Send every user to the champion now (the flag file is followed within ~0.1 s)."""
        caller = self._authorise(authorization, "admin")
        # the version served is known here: no registry read stands between the operator and the share
        operations.roll_back(
            self.config,
            "rolled back through the admin API",
            version=self.bank.served.get("challenger"),
            actor=f"token:{caller.name}",
            champion_known=True,
        )
        return {"challenger_percent": 0}

    @api.post("/admin/canary")
    def canary(self, body: Annotated[Canary, Body()], authorization: Annotated[str | None, Header()] = None) -> dict:
        caller = self._authorise(authorization, "admin")
        try:
            operations.set_canary(self.config, body.percent, "set through the admin API", actor=f"token:{caller.name}")
        except ValueError as err:
            raise HTTPException(409, detail=str(err)) from err
        return {"challenger_percent": body.percent}

    @api.post("/admin/promote")
    def promote(
        self, body: Annotated[Promotion, Body()], authorization: Annotated[str | None, Header()] = None
    ) -> dict:
        """Promote the challenger if it is still ``expected_version`` (409 naming both otherwise)."""
        caller = self._authorise(authorization, "admin")
        from mlflow.exceptions import MlflowException

        try:
            version = operations.promote(
                self.config,
                body.expected_version,
                reason="promoted through the admin API",
                actor=f"token:{caller.name}",
            )
        except ValueError as err:
            raise HTTPException(409, detail=str(err)) from err
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise HTTPException(
                409, detail=f"expected_version: {self.config.model_name} has no registered versions"
            ) from err
        self.bank.refresh()
        return {"champion": version}


# Answers are always JSON: saying so spares BentoML deriving the media type from the output's JSON
# schema on every response (a pydantic schema build per request, ~2 % of a worker's time under load).
Tuneloop.apis["predict"].output_spec.media_type = "application/json"
# /readyz says whether this worker is up to date with the registry (and since when it is not)
Tuneloop.add_asgi_middleware(ReadyDetail)
# every body bounded before it is parsed: 413 for an oversized body or too many requests in one call
Tuneloop.add_asgi_middleware(
    BodyLimit, max_body_bytes=CONFIG.limits.max_body_bytes, max_predict_requests=CONFIG.limits.max_predict_requests
)
