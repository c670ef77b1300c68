"""A feedback record: its schema, its validation, and the bounds on what a client may send."""

from __future__ import annotations

import json
from collections.abc import AsyncIterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from tuneloop.config import Kind

MAX_TEXT = 8000  # characters per text field; longer inputs are refused, not truncated


MAX_BODY = 4 * 4 * MAX_TEXT + 4096  # bytes: four maximal fields of 4-byte characters, plus the rest


def _valid_text(value: str) -> str:
    # JSON may carry "\u0000" and lone surrogates ("\ud800"): neither is storable text (Postgres
    # refuses NUL, UTF-8 cannot encode a surrogate), so refuse them here instead of failing at commit.
    if "\x00" in value:
        raise PydanticCustomError("nul_character", "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("invalid_utf8", "must be valid UTF-8 text (it contains a lone surrogate)") from None
    return value


CleanText = Annotated[str, AfterValidator(_valid_text)]


CorrectionText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT), AfterValidator(_valid_text)]


SegmentText = Annotated[str, StringConstraints(max_length=64), AfterValidator(_valid_text)]


class FeedbackRecord(BaseModel):
    """One user's verdict on one model answer."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    request_id: CleanText = Field(
        min_length=1, max_length=128, description="Id of the answered request; retries reuse it."
    )
    user_id: CleanText = Field(
        min_length=1, max_length=128, description="Who gave the feedback (never leaves the store)."
    )
    model_version: CleanText = Field(
        min_length=1, max_length=64, description="Version that produced the answer ('base' for none)."
    )
    kind: Kind = Field(
        "generation", description="generation (free-text correction) or classification (corrected label)."
    )
    prompt: CleanText = Field(min_length=1, max_length=MAX_TEXT, description="What the user asked (or the utterance).")
    output: CleanText = Field(max_length=MAX_TEXT, description="What the model answered (or the predicted label).")
    rating: Literal["up", "down"] = Field(description="Thumbs up or down.")
    correction: CorrectionText | None = Field(
        None, description="What it should have said (or the right label); thumbs-down only."
    )
    segment: SegmentText | None = Field(None, description="Optional tag for per-segment evaluation.")
    receipt: CleanText | None = Field(
        None,
        max_length=128,
        description="The receipt of the /predict answer this is about (required by /v1/feedback; "
        "records imported by an operator may lack it).",
    )

    @field_validator("correction")
    @classmethod
    def _correction_only_on_thumbs_down(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("rating") == "up":
            raise PydanticCustomError("correction_on_thumbs_up", "a thumbs-up cannot carry a correction")
        return value


class FeedbackError(ValueError):
    """A refused record: the offending field, why, and the HTTP status that says so."""

    def __init__(self, field: str, message: str, status: int = 422, errors: list[dict[str, str]] | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status
        self.errors = errors or [{"field": field, "message": message}]

    @classmethod
    def from_validation(cls, err: ValidationError) -> FeedbackError:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"]}
            for e in err.errors(include_url=False)
        ]
        return cls(errors[0]["field"], errors[0]["message"], 422, errors)

    def to_json(self) -> dict[str, Any]:
        return {"detail": str(self), "field": self.field, "errors": self.errors}


def validate_feedback(data: Any, kind: str | None = None) -> FeedbackRecord:
    """A parsed JSON value -> a record, or FeedbackError naming the first bad field.

    ``kind`` fills a missing ``kind`` (the service's or the import's kind); a different one is refused.
    """
    if not isinstance(data, dict):
        raise FeedbackError("body", f"must be a JSON object, not {type(data).__name__}")
    if kind is not None:
        data = {"kind": kind, **data}
    try:
        record = FeedbackRecord.model_validate(data)
    except ValidationError as err:
        raise FeedbackError.from_validation(err) from None
    if kind is not None and record.kind != kind:
        raise FeedbackError("kind", f"expected {kind!r} here, got {record.kind!r}")
    return record


def parse_feedback(body: bytes | str, kind: str | None = None) -> FeedbackRecord:
    """Raw bytes (an HTTP body, a JSONL line) -> a record, or FeedbackError naming the problem."""
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FeedbackError("body", f"not valid UTF-8 (byte {err.start})", 400) from None
    try:
        data = json.loads(body)
    except json.JSONDecodeError as err:
        raise FeedbackError("body", f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})", 400) from None
    except (ValueError, RecursionError) as err:  # over-long integers, absurd nesting
        raise FeedbackError("body", f"not acceptable JSON: {str(err)[:120]}", 400) from None
    return validate_feedback(data, kind)


async def read_limited(chunks: AsyncIterable[bytes], limit: int = MAX_BODY) -> bytes:
    """Read a request body, refusing (413) as soon as it exceeds ``limit`` bytes."""
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise FeedbackError("body", f"larger than {limit} bytes", 413)
    return bytes(body)


def registry_has_version(model_name: str, version: str) -> bool:
    """Whether the MLflow Model Registry knows this version of the model ('base' always exists)."""
    if version == "base":
        return True
    if not version.isdigit():  # registry versions are integers; anything else cannot exist
        return False
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_model_version(model_name, version)
        return True
    except MlflowException:
        return False
