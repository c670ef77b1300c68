"""The BentoML service: routed predictions, feedback intake and the operator's admin API.

Run with ``bentoml serve tuneloop.serving.service:Tuneloop --host 127.0.0.1 --port 3000`` (or ``tuneloop
serve``); it reads the same ``TUNELOOP_*`` settings as the flows. Every answer names the model
version and request id that produced it, so feedback on it feeds the next loop.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from typing import Annotated

import bentoml
from fastapi import Body, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

from tuneloop.config import LoopConfig, apply_environment
from tuneloop.feedback import MAX_TEXT, FeedbackRecord, FeedbackStore
from tuneloop.flags import Router, challenger_percent

apply_environment()  # before MLflow reads its tracking URI

from tuneloop.serving.live import SegmentLabels, Shadow, guard, publish_drift, record_batch  # noqa: E402
from tuneloop.serving.models import AdapterBank, watch  # noqa: E402  (needs the environment above)
from tuneloop import operations  # noqa: E402

api = FastAPI(title="tuneloop operations")


class PredictRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128, description="Routing key: a user stays on one side.")
    input: str = Field(max_length=MAX_TEXT, description="The prompt (generation) or utterance (classification).")
    request_id: str | None = Field(None, max_length=128, description="Echoed back; generated when absent.")
    segment: str | None = Field(None, max_length=64, description="Optional tag (plan, locale, ...): /metrics counts requests by it.")


class Answer(BaseModel):
    request_id: str
    output: str
    model_version: str
    variant: str
    confidence: float | None = None


class Canary(BaseModel):
    percent: int = Field(ge=0, le=100, description="Share of users routed to the challenger.")


def _default_workers() -> int:
    """One worker per GPU when the service runs on GPUs (each holds its bank on its own device), else one per core."""
    import torch

    if LoopConfig().device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count()
    return os.cpu_count() or 1


WORKERS = LoopConfig().deploy.serve_workers or _default_workers()


def _max_batch() -> int:
    import torch

    on_gpu = LoopConfig().device in ("auto", "cuda") and torch.cuda.is_available()
    return LoopConfig().deploy.max_batch_size or (128 if on_gpu else 32)


MAX_BATCH = _max_batch()


@bentoml.service(name="tuneloop", traffic={"timeout": 300}, workers=WORKERS)
@bentoml.asgi_app(api, path="/v1")
class Tuneloop:
    def __init__(self) -> None:
        import torch

        # workers split the cores: more threads than cores would make every forward wait on the others
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))
        self.config = LoopConfig()
        self.store = FeedbackStore(self.config.feedback_db)
        self.router = Router(self.config)
        self.token = operations.api_token(self.config)
        self.bank = AdapterBank(self.config, device_index=(bentoml.server_context.worker_index or 1) - 1)
        self.bank.refresh()
        self._stop = threading.Event()
        watch(self.bank, float(os.environ.get("TUNELOOP_REGISTRY_POLL_S", "2")), self._stop)
        self.segments = SegmentLabels(self.config.deploy.max_segment_labels)
        self.drift = None
        if bentoml.server_context.worker_index in (None, 1):  # one guard per service, not one per worker
            on_gpu = self.bank.device.type == "cuda"  # a worker holds one GPU there, and its share of the cores
            guard(self.config, lambda: dict(self.bank.served), self.config.deploy.guard_interval_s, self._stop,
                  cores_per_worker=torch.get_num_threads(), gpus_per_worker=int(on_gpu))
            if self.config.drift.enabled:  # this worker's share of the inputs is the sample tested for drift
                from tuneloop.drift import DriftMonitor

                self.drift = DriftMonitor(self.config, lambda: self.bank.version_of("champion"), publish_drift)
                self.drift.start(self._stop)
        self.shadow = None
        if self.config.deploy.shadow:
            # the shadow's own model (and lock): its forward passes never hold up a live request's
            shadow_bank = AdapterBank(self.config, device_index=(bentoml.server_context.worker_index or 1) - 1)
            shadow_bank.refresh()
            watch(shadow_bank, float(os.environ.get("TUNELOOP_REGISTRY_POLL_S", "2")), self._stop)
            self.shadow = Shadow(self.config, shadow_bank.predict)

    def __is_ready__(self) -> bool:
        return self.bank.ready

    @bentoml.api(route="/predict", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=60_000)
    def predict(self, requests: list[PredictRequest]) -> list[Answer]:
        """Answer each request with the version its user is routed to; concurrent calls are batched, and
        one batch runs champion and challenger rows together (one forward for the base model's share)."""
        variants = ["champion" if self.shadow else self.router.variant(r.user_id) for r in requests]
        versions = [self.bank.version_of(v) for v in variants]
        began = time.perf_counter()
        outputs, confidences = self.bank.predict(versions, [r.input for r in requests])
        elapsed = time.perf_counter() - began
        served_as = [variants[i] if versions[i] != "base" else "base" for i in range(len(requests))]
        record_batch(versions, served_as, [self.segments(r.segment) for r in requests], elapsed)
        if self.drift is not None:
            self.drift.add([r.input for r in requests])
        answers = []
        for i, request in enumerate(requests):
            variant = served_as[i]
            answers.append(Answer(request_id=request.request_id or uuid.uuid4().hex, output=outputs[i],
                                  model_version=versions[i], variant=variant,
                                  confidence=confidences[i] if confidences else None))
        challenger = self.bank.served.get("challenger")
        if self.shadow and challenger:
            self.shadow.mirror(challenger, list(requests), answers)
        return answers

    # --- feedback and admin (FastAPI routes under /v1) ---------------------------------------------

    def _authorise(self, authorization: str | None) -> None:
        expected = f"Bearer {self.token}"
        if authorization is None or not secrets.compare_digest(authorization.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @api.post("/feedback", status_code=201, response_model=None, openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": FeedbackRecord.model_json_schema()}}}})
    async def feedback(self, request: Request, authorization: Annotated[str | None, Header()] = None):
        """Store one verdict (schema: FeedbackRecord). 201 once it is committed, 200 for a retry of a stored
        request id; 4xx naming the field otherwise: 400 undecodable body, 401 token, 409 request id reused
        for a different record, 413 body too large, 422 invalid field or unknown model version."""
        from fastapi.responses import JSONResponse
        from sqlalchemy.exc import SQLAlchemyError
        from starlette.concurrency import run_in_threadpool

        from tuneloop.feedback import FeedbackError, parse_feedback, read_limited

        self._authorise(authorization)
        try:
            # the body is read and parsed here, not by FastAPI, so that invalid UTF-8, bad JSON and
            # absurd sizes get a 4xx naming the problem instead of a generic error
            record = parse_feedback(await read_limited(request.stream()), kind=self.config.kind)

            def check_and_store() -> tuple[int, bool]:  # blocking: one trip to the thread pool
                if not self._known_version(record.model_version):
                    raise FeedbackError("model_version", f"unknown version {record.model_version!r} of {self.config.model_name}")
                return self.store.add(record)  # returns after the commit

            feedback_id, created = await run_in_threadpool(check_and_store)
        except FeedbackError as err:
            return JSONResponse(err.to_json(), status_code=err.status)
        except SQLAlchemyError:
            return JSONResponse({"detail": "store: not stored, retry later", "field": "store"}, status_code=503)
        return JSONResponse({"id": feedback_id, "created": created, "request_id": record.request_id},
                            status_code=201 if created else 200)

    def _known_version(self, version: str) -> bool:
        """'base', a served version, or one the registry knows. Answers are cached: known versions for
        good, unknown ones for a few seconds (a version registered just now becomes valid quickly)."""
        from tuneloop.feedback import FeedbackError, registry_has_version

        if version == "base" or version in self.bank.served.values():
            return True
        cache: dict[str, tuple[bool, float]] = self.__dict__.setdefault("_version_cache", {})
        known, checked = cache.get(version, (False, 0.0))
        if known or time.monotonic() - checked < 5:
            return known
        try:
            known = registry_has_version(self.config.model_name, version)
        except Exception as err:  # the registry is down: a retryable server condition, not bad input
            raise FeedbackError("model_version", f"cannot check against the registry now ({type(err).__name__})", 503) from err
        if len(cache) > 10_000:  # bounded: a client sending random versions cannot grow it without limit
            cache.clear()
        cache[version] = (known, time.monotonic())
        return known

    @api.get("/routing")
    def routing(self) -> dict:
        """What serves now: versions per alias and the challenger's share."""
        return {"served": self.bank.served, "challenger_percent": challenger_percent(self.config)}

    @api.post("/admin/rollback")
    def rollback(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        """Send every user to the champion now (the flag file is followed within ~0.1 s)."""
        self._authorise(authorization)
        operations.roll_back(self.config, "rolled back through the admin API")
        return {"challenger_percent": 0}

    @api.post("/admin/canary")
    def canary(self, body: Annotated[Canary, Body()], authorization: Annotated[str | None, Header()] = None) -> dict:
        self._authorise(authorization)
        try:
            operations.set_canary(self.config, body.percent, "set through the admin API")
        except ValueError as err:
            raise HTTPException(409, detail=str(err)) from err
        return {"challenger_percent": body.percent}

    @api.post("/admin/promote")
    def promote(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        self._authorise(authorization)
        try:
            version = operations.promote(self.config, reason="promoted through the admin API")
        except ValueError as err:
            raise HTTPException(409, detail=str(err)) from err
        self.bank.refresh()
        return {"champion": version}


# Answers are always JSON: saying so spares BentoML deriving the media type from the output's JSON
# schema on every response (a pydantic schema build per request, ~2 % of a worker's time under load).
Tuneloop.apis["predict"].output_spec.media_type = "application/json"
