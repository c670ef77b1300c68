"""A hostile client against a live service (and the stack's Prefect and MLflow servers when given):
unauthenticated writes, wrong-scope tokens, forged feedback receipts, oversized and pathological bodies,
one user flooding feedback. Every attack must be refused (400/401/403/409/413/422/429); the figures are
requests tried, refused, wrongly accepted (must be 0) and the slowest refusal.

``python -m bench hostile`` starts a service on the tiny model in a fresh home on 127.0.0.1. With
``PREFECT_API_URL`` and/or ``MLFLOW_TRACKING_URI`` of a running stack in the environment (``tuneloop stack
env``), unauthenticated writes are also tried against those servers, on 127.0.0.1 only. Requests are
bounded in number (about a hundred) and time (10 s each). Results: ``bench/results/hostile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REFUSALS = {400, 401, 403, 409, 413, 422, 429}  # 400: a body that is not decodable JSON (named in the answer)
LOCAL = {"127.0.0.1", "localhost", "::1"}
FEEDBACK_PER_USER = 5


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    wrongly_accepted: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # neither refused nor accepted (5xx, timeouts): reported too
    slowest: tuple[float, str] = (0.0, "")
    by_attack: dict[str, dict] = field(default_factory=dict)

    def attack(self, category: str, name: str, send) -> None:
        """Send one hostile request; a refusal status is the only right answer."""
        self.tried += 1
        began = time.perf_counter()
        try:
            status = send().status_code
        except httpx.HTTPError as err:
            status = f"{type(err).__name__}"
        ms = (time.perf_counter() - began) * 1000
        label = f"{category}: {name}"
        self.by_attack[label] = {"status": status, "ms": round(ms, 1)}
        if status in REFUSALS:
            self.refused += 1
            self.slowest = max(self.slowest, (ms, label))
        elif isinstance(status, int) and 200 <= status < 300:
            self.wrongly_accepted.append(label)
        else:
            self.errors.append(f"{label} -> {status}")


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def _answer(http: httpx.Client, user: str, request_id: str) -> dict:
    r = http.post(
        "/predict",
        json={"requests": [{"user_id": user, "input": "What is the Nimbus Pro cost?", "request_id": request_id}]},
    )
    r.raise_for_status()
    return r.json()[0]


def _record(a: dict, user: str, **change) -> dict:
    return {
        "request_id": a["request_id"],
        "user_id": user,
        "model_version": a["model_version"],
        "receipt": a["receipt"],
        "prompt": "What is the Nimbus Pro cost?",
        "output": a["output"],
        "rating": "down",
        "correction": "The Nimbus Pro costs 189 euros.",
        **change,
    }


def service_attacks(http: httpx.Client, issued: dict[str, str], tally: Tally, max_body: int) -> dict:
    app, ops = issued["feedback"], issued["admin"]
    a = _answer(http, "victim", "hostile-served-1")
    admin = [
        ("/v1/admin/rollback", None),
        ("/v1/admin/canary", {"percent": 100}),
        ("/v1/admin/promote", {"expected_version": "1"}),
    ]

    # unauthenticated writes
    tally.attack(
        "unauthenticated", "feedback without a token", lambda: http.post("/v1/feedback", json=_record(a, "victim"))
    )
    for path, body in admin:
        for what, headers in (
            ("no token", {}),
            ("made-up token", _bearer("tl_" + secrets.token_urlsafe(32))),
            ("basic scheme", {"Authorization": "Basic YWRtaW46YWRtaW4="}),
            ("8 KB token", _bearer("x" * 8000)),
        ):
            tally.attack(
                "unauthenticated",
                f"{path} with {what}",
                lambda p=path, b=body, h=headers: http.post(p, json=b, headers=h),
            )
    # wrong scope: the token apps hold for feedback
    for path, body in admin:
        tally.attack(
            "wrong scope",
            f"feedback token on {path}",
            lambda p=path, b=body: http.post(p, json=b, headers=_bearer(app)),
        )
    tally.attack(
        "wrong scope",
        "admin promote of a version that is not the challenger",
        lambda: http.post("/v1/admin/promote", json={"expected_version": "999"}, headers=_bearer(ops)),
    )
    # forged feedback
    forgeries = {
        "missing receipt": {"receipt": None},
        "random receipt": {"receipt": secrets.token_hex(32)},
        "another user's receipt": {"user_id": "attacker"},
        "claimed version": {"model_version": "1"},
        "request never served": {"request_id": "hostile-never-served"},
        "receipt of another kind": {"kind": "classification"},
        "truncated receipt": {"receipt": a["receipt"][:32]},
    }
    for name, change in forgeries.items():
        body = _record(a, change.pop("user_id", "victim"), **change)
        tally.attack("forged feedback", name, lambda b=body: http.post("/v1/feedback", json=b, headers=_bearer(app)))
    # oversized and pathological bodies
    many = {"requests": [{"user_id": f"u{i}", "input": "hi"} for i in range(10_000)]}
    tally.attack("oversized", "/predict with 10,000 requests", lambda: http.post("/predict", json=many))
    big = b'{"requests": [{"user_id": "u", "input": "' + b"a" * (max_body + 1) + b'"}]}'
    tally.attack(
        "oversized",
        f"/predict body of {len(big)} bytes",
        lambda: http.post("/predict", content=big, headers={"Content-Type": "application/json"}),
    )

    def stream():
        yield b'{"requests": [{"user_id": "u", "input": "'
        for _ in range(max_body // 65536 + 2):
            yield b"a" * 65536

    tally.attack(
        "oversized",
        "/predict streamed without a length",
        lambda: http.post("/predict", content=stream(), headers={"Content-Type": "application/json"}),
    )
    tally.attack(
        "oversized",
        "feedback body of 200 KB",
        lambda: http.post(
            "/v1/feedback", content=json.dumps({**_record(a, "victim"), "prompt": "a" * 200_000}), headers=_bearer(app)
        ),
    )
    tally.attack(
        "pathological",
        "feedback nested 100,000 deep",
        lambda: http.post("/v1/feedback", content=b"[" * 100_000, headers=_bearer(app)),
    )
    tally.attack(
        "pathological",
        "/predict input of 8,001 characters",
        lambda: http.post("/predict", json={"requests": [{"user_id": "u", "input": "a" * 8001}]}),
    )
    tally.attack(
        "pathological",
        "feedback with a NUL character",
        lambda: http.post("/v1/feedback", json=_record(a, "victim", prompt="a\x00b"), headers=_bearer(app)),
    )
    # one user flooding: the first FEEDBACK_PER_USER are legitimate; the rest must be refused
    legitimate = 0
    for n in range(FEEDBACK_PER_USER + 5):
        body = _record(_answer(http, "flooder", f"hostile-flood-{n}"), "flooder")
        if n < FEEDBACK_PER_USER:
            legitimate += http.post("/v1/feedback", json=body, headers=_bearer(app)).status_code == 201
        else:
            tally.attack(
                "flood",
                f"feedback record {n + 1} of one user",
                lambda b=body: http.post("/v1/feedback", json=b, headers=_bearer(app)),
            )
    return {"legitimate_feedback_accepted": legitimate, "of": FEEDBACK_PER_USER}


def pii_inputs(http: httpx.Client) -> dict:
    """8,000-character inputs built to make personal-data patterns backtrack: answered, and how fast."""
    n = 8000
    inputs = {
        "a...a@": "a" * (n - 1) + "@",
        "a..a@b..b": "a" * (n // 2 - 1) + "@" + "b" * (n // 2),
        "digits+letter": (("1" * 23 + "a") * n)[:n],
        "12-12-": ("12-" * n)[:n],
        "de12 de12": ("de12 " * n)[:n],
    }
    out = {}
    for name, text in inputs.items():
        began = time.perf_counter()
        r = http.post("/predict", json={"requests": [{"user_id": "u-pii", "input": text}]})
        out[name] = {"status": r.status_code, "ms": round((time.perf_counter() - began) * 1000, 1)}
    return out


def stack_attacks(tally: Tally) -> dict:
    """Unauthenticated writes to the stack's servers named in the environment (127.0.0.1 only)."""
    notes = {}
    prefect, tracking = os.environ.get("PREFECT_API_URL"), os.environ.get("MLFLOW_TRACKING_URI", "")
    with httpx.Client(timeout=10) as http:
        if prefect and urlparse(prefect).hostname in LOCAL:
            base = prefect.rstrip("/")
            tally.attack(
                "stack",
                "Prefect: create a flow without credentials",
                lambda: http.post(f"{base}/flows/", json={"name": f"hostile-{secrets.token_hex(4)}"}),
            )
            tally.attack(
                "stack",
                "Prefect: cross-origin flow create",
                lambda: http.post(
                    f"{base}/flows/", json={"name": "hostile-cors"}, headers={"Origin": "http://evil.example"}
                ),
            )
        else:
            notes["prefect"] = "not tried: PREFECT_API_URL unset or not on 127.0.0.1"
        if tracking.startswith("http") and urlparse(tracking).hostname in LOCAL:
            base = tracking.rstrip("/")
            tally.attack(
                "stack",
                "MLflow: create a registered model without credentials",
                lambda: http.post(
                    f"{base}/api/2.0/mlflow/registered-models/create", json={"name": f"hostile-{secrets.token_hex(4)}"}
                ),
            )
            tally.attack(
                "stack",
                "MLflow: move the champion alias without credentials",
                lambda: http.post(
                    f"{base}/api/2.0/mlflow/registered-models/alias",
                    json={"name": "tuneloop-generation", "alias": "champion", "version": "1"},
                ),
            )
        else:
            notes["mlflow"] = "not tried: MLFLOW_TRACKING_URI unset or not an http server on 127.0.0.1"
    return notes


def run() -> dict:
    from devtools.localserver import tuneloop_service
    from tuneloop.access import tokens
    from tuneloop.config import LimitsConfig, LoopConfig

    home = Path(tempfile.mkdtemp(prefix="tuneloop-bench-hostile-"))
    config = LoopConfig(kind="generation", home=home, tiny=True, feedback_url=None)  # the service's own store in home
    issued = {scope: tokens.create(config, f"bench-{scope}", scope) for scope in tokens.SCOPES}
    tally = Tally()
    began = time.perf_counter()
    with tuneloop_service(
        home,
        "generation",
        TUNELOOP_TINY="true",
        TUNELOOP_DEPLOY__SERVE_WORKERS="1",
        TUNELOOP_MAX_NEW_TOKENS="4",
        TUNELOOP_LIMITS__FEEDBACK_PER_USER=str(FEEDBACK_PER_USER),
    ) as base:
        with httpx.Client(base_url=base, timeout=10) as http:
            flood = service_attacks(http, issued, tally, LimitsConfig().max_body_bytes)
            pii = pii_inputs(http)
    notes = stack_attacks(tally)
    result = {
        "requests_tried": tally.tried,
        "refused": tally.refused,
        "wrongly_accepted": len(tally.wrongly_accepted),
        "wrongly_accepted_attacks": tally.wrongly_accepted,
        "errors": tally.errors,
        "slowest_refusal_ms": round(tally.slowest[0], 1),
        "slowest_refusal": tally.slowest[1],
        "flood": flood,
        "pii_pattern_inputs_answered": pii,
        "stack": notes,
        "attacks": tally.by_attack,
        "seconds": round(time.perf_counter() - began, 1),
        "service": "tiny generation model, 1 worker, 127.0.0.1",
    }
    print(
        f"hostile: {tally.tried} requests tried, {tally.refused} refused, {len(tally.wrongly_accepted)} wrongly accepted, "
        f"{len(tally.errors)} errors; slowest refusal {result['slowest_refusal_ms']} ms ({tally.slowest[1]})",
        flush=True,
    )
    print("8,000-character pattern inputs answered in " + ", ".join(f"{k} {v['ms']} ms" for k, v in pii.items()))
    for line in tally.wrongly_accepted + tally.errors:
        print(f"  ! {line}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "hostile.json")
    args = parser.parse_args(argv)
    result = run()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    if result["wrongly_accepted"] or result["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
