"""The BentoML service: routed predictions, feedback intake and the operator's admin API.

Run with ``bentoml serve serving.service:Tuneloop --host 127.0.0.1 --port 3000`` (or ``tuneloop
serve``); it reads the same ``TUNELOOP_*`` settings as the flows. Every answer names the model
version and request id that produced it, so feedback on it feeds the next loop.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated

import bentoml
from fastapi import Body, FastAPI, Header, HTTPException, Request
from pydantic import BaseModel, Field

from tuneloop.config import LoopConfig, apply_environment
from tuneloop.feedback import MAX_TEXT, FeedbackRecord, FeedbackStore
from tuneloop.flags import Router, challenger_percent, set_challenger_percent

apply_environment()  # before MLflow reads its tracking URI

from serving.live import Shadow, guard, metrics  # noqa: E402
from serving.models import AdapterBank, watch  # noqa: E402  (needs the environment above)
from tuneloop.registry import alias_version, promote  # noqa: E402

api = FastAPI(title="tuneloop operations")


def api_token(config: LoopConfig) -> str:
    """``TUNELOOP_API_TOKEN``, else a random token kept in the home (created on first use)."""
    if os.environ.get("TUNELOOP_API_TOKEN"):
        return os.environ["TUNELOOP_API_TOKEN"]
    path = config.home.resolve() / "api_token"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


class PredictRequest(BaseModel):
    user_id: str = Field(min_length=1, max_length=128, description="Routing key: a user stays on one side.")
    input: str = Field(max_length=MAX_TEXT, description="The prompt (generation) or utterance (classification).")
    request_id: str | None = Field(None, max_length=128, description="Echoed back; generated when absent.")


class Answer(BaseModel):
    request_id: str
    output: str
    model_version: str
    variant: str
    confidence: float | None = None


class Canary(BaseModel):
    percent: int = Field(ge=0, le=100, description="Share of users routed to the challenger.")


WORKERS = LoopConfig().deploy.serve_workers or os.cpu_count() or 1


@bentoml.service(name="tuneloop", traffic={"timeout": 300}, workers=WORKERS)
@bentoml.asgi_app(api, path="/v1")
class Tuneloop:
    def __init__(self) -> None:
        import torch

        # workers split the cores: more threads than cores would make every forward wait on the others
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // WORKERS))
        self.config = LoopConfig()
        self.store = FeedbackStore(self.config.feedback_db)
        self.router = Router(self.config.flag_file, self.config.flag_key)
        self.token = api_token(self.config)
        self.bank = AdapterBank(self.config)
        self.bank.refresh()
        self._stop = threading.Event()
        watch(self.bank, float(os.environ.get("TUNELOOP_REGISTRY_POLL_S", "2")), self._stop)
        if bentoml.server_context.worker_index in (None, 1):  # one guard per service, not one per worker
            guard(self.config, lambda: dict(self.bank.served), self.config.deploy.guard_interval_s, self._stop)
        self.shadow = Shadow(self.config.home.resolve() / "shadow" / f"{self.config.kind}.jsonl") if self.config.deploy.shadow else None

    def __is_ready__(self) -> bool:
        return self.bank.ready

    @bentoml.api(route="/predict", batchable=True, max_batch_size=32, max_latency_ms=60_000)
    def predict(self, requests: list[PredictRequest]) -> list[Answer]:
        """Answer each request with the version its user is routed to; concurrent calls are batched, and
        one batch runs champion and challenger rows together (one forward for the base model's share)."""
        variants = ["champion" if self.shadow else self.router.variant(r.user_id) for r in requests]
        versions = [self.bank.version_of(v) for v in variants]
        began = time.perf_counter()
        outputs, confidences = self.bank.predict(versions, [r.input for r in requests])
        elapsed = time.perf_counter() - began
        metrics().batch.observe(len(requests))
        for version in set(versions):
            metrics().latency.labels(version).observe(elapsed)
        answers = []
        for i, request in enumerate(requests):
            variant = variants[i] if versions[i] != "base" else "base"
            metrics().requests.labels(versions[i], variant).inc()
            answers.append(Answer(request_id=request.request_id or uuid.uuid4().hex, output=outputs[i],
                                  model_version=versions[i], variant=variant,
                                  confidence=confidences[i] if confidences else None))
        challenger = self.bank.served.get("challenger")
        if self.shadow and challenger:
            self.shadow.mirror(self.bank.predict, challenger, list(requests), answers)
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
        return {"served": self.bank.served, "challenger_percent": challenger_percent(self.config.flag_file, self.config.flag_key)}

    @api.post("/admin/rollback")
    def rollback(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        """Send every user to the champion now (the flag file is followed within ~0.1 s)."""
        self._authorise(authorization)
        set_challenger_percent(self.config.flag_file, self.config.flag_key, 0)
        return {"challenger_percent": 0}

    @api.post("/admin/canary")
    def canary(self, body: Annotated[Canary, Body()], authorization: Annotated[str | None, Header()] = None) -> dict:
        self._authorise(authorization)
        if body.percent and alias_version(self.config.model_name, "challenger") is None:
            raise HTTPException(409, detail="percent: there is no challenger to route to")
        set_challenger_percent(self.config.flag_file, self.config.flag_key, body.percent)
        return {"challenger_percent": body.percent}

    @api.post("/admin/promote")
    def promote(self, authorization: Annotated[str | None, Header()] = None) -> dict:
        self._authorise(authorization)
        try:
            version = promote(self.config.model_name, reason="promoted through the admin API")
        except ValueError as err:
            raise HTTPException(409, detail=str(err)) from err
        set_challenger_percent(self.config.flag_file, self.config.flag_key, 0)
        self.bank.refresh()
        return {"champion": version}


# Answers are always JSON: saying so spares BentoML deriving the media type from the output's JSON
# schema on every response (a pydantic schema build per request, ~2 % of a worker's time under load).
Tuneloop.apis["predict"].output_spec.media_type = "application/json"
