r"""Serving benchmark: the tuneloop service vs a plain transformers pipeline behind FastAPI on the same
model (throughput, p50/p95 per number of clients, and whether both give the same answers); the
routing+attribution overhead; and the time from a rollback to the first answer by the champion under
load, with failed requests counted.

CPU (default): both task kinds on the bundled real weights, at 1/4/16 clients:
    python -m bench serve [--quick] [--kind classification generation] [--rounds 2]   -> bench/results/serve.json
GPU (issue 11): generation on a SmolLM2-135M-shaped base with random weights (``--base random-smollm2-135m``,
built from the published config in ``bench/gpu.py`` and saved in bf16 with the SmolLM2 tokenizer), both
servers on the GPU in bf16 (the service's adapter bank reads ``TUNELOOP_DEVICE``/``TUNELOOP_PRECISION``;
one service worker per GPU), 24 new tokens, at 1/16/64 clients, plus the reference the target is set
against: plain HF ``generate`` of the same merged model at batch 1/16/64 in the same run. Target: the
service at 64 clients >= 0.9 x the batch-64 reference (54.8 requests/s on one H100, 2026-11-23).
    python -m bench serve --device cuda   -> bench/results/serve_gpu.json
The same path runs on the CPU (slowly) with ``--device cpu --base random-smollm2-135m``.

Load generators run as separate processes against 127.0.0.1, each bounded in time. Each load level
runs ``--rounds`` times per server, service and plain app alternating, and the rounds are pooled.
The service's mean batch size per level is read off its /metrics (``tuneloop_batch_size``).

On a GPU machine without a package index, which has torch and transformers but not the
service's stack (BentoML, MLflow, OpenFeature, SQLAlchemy, pydantic, ...) nor the bundled SmolLM2 wheel:
here, in the repo root, once:
    echo /.whl/ >> .git/info/exclude; echo /.bench-gpu/ >> .git/info/exclude
    .venv/bin/python -m bench.serve --export-tokenizer .bench-gpu/tokenizer   # 3.5 MB, the SmolLM2 tokenizer
    .venv/bin/python -m bench.serve --device-wheels        # prints the pip download command (into .whl); run it
(check ``du -sh .whl`` stays under the 64 MiB a call carries), then ``run`` with carry [".whl", ".bench-gpu"]:
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .whl/*.whl && export PYTHONPATH=/tmp/site && python3 -m pip install -q --no-index --no-deps \
      --no-build-isolation -e . || exit; PYTHONUNBUFFERED=1 python3 -m bench serve --device cuda \
      --tokenizer .bench-gpu/tokenizer --out $OUT/serve_gpu.json
The editable install maps ``tuneloop.serving`` (and the other layers) onto their folders, as here;
the service runs as ``python -m bentoml serve tuneloop.serving.service:Tuneloop``. About 6 minutes:
3 levels x 2 rounds x 2 servers x 20 s, plus start-up (``--quick``: 10 s levels, 1 round).
Not yet verified on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from devtools.localserver import free_port, server_process, tuneloop_service

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RANDOM_BASE = "random-smollm2-135m"


def _load(url: str, clients: int, seconds: float, style: str, work: Path) -> dict:
    out = work / f"load-{style}-{clients}-{time.monotonic_ns()}.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            url,
            "--clients",
            str(clients),
            "--seconds",
            str(seconds),
            "--style",
            style,
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        timeout=seconds + 120,
    )
    return json.loads(out.read_text())


def _summary(*runs: dict) -> dict:
    """Throughput and latency percentiles over one or more runs at one load level (pooled)."""
    latencies = sorted(r[1] for run in runs for r in run["records"] if r[2])
    pct = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else None  # noqa: E731
    seconds = sum(run["seconds"] for run in runs)
    return {
        "clients": runs[0]["clients"],
        "requests": sum(run["requests"] for run in runs),
        "failed": sum(run["failed"] for run in runs),
        "throughput_rps": round(len(latencies) / seconds, 2),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "rounds_rps": [round(sum(r[2] for r in run["records"]) / run["seconds"], 2) for run in runs],
    }


def _register_versions(config) -> str:
    """Champion v1 and challenger v2 on the configured base: fresh LoRA adapters (serving cost does not
    depend on the adapter's values, so no training is needed to measure it), each with the
    ``tuneloop.json`` that tells the service's adapter bank which base and prompting it needs."""
    from tuneloop.data.sample_data import INTENTS
    from tuneloop.modeling.adapters import write_meta
    from tuneloop.modeling.models import DEFAULT_TARGETS, base_of, load_base, lora_targets, save_labels
    from tuneloop.modeling.training import add_adapter
    from tuneloop.registry.versions import log_adapter, move_alias

    info = base_of(config)
    labels = sorted(INTENTS) if config.kind == "classification" else None
    for version, alias in (("1", "champion"), ("2", "challenger")):
        adapter = config.work_dir / f"bench-{config.kind}-adapter-{version}"
        base = load_base(info, config.kind, labels)  # on the CPU: only the adapter's files are kept
        add_adapter(
            base, config.kind, 8, seed=int(version), targets=lora_targets(base, DEFAULT_TARGETS[config.kind])
        ).save_pretrained(adapter)
        write_meta(adapter, config, info)
        if labels:
            save_labels(adapter, labels)
        mv = log_adapter(config, adapter, {"note": "bench", **info.tags()})
        move_alias(config.model_name, alias, str(mv.version), "bench", config=config)
    return str(config.work_dir / f"bench-{config.kind}-adapter-1")


def _same_answers(service: str, plain: str) -> dict:
    """Both servers answer the load's prompts alike (the champion is the plain app's model)."""
    from bench.loadgen import TEXTS

    agree = 0
    for i, text in enumerate(TEXTS):
        a = httpx.post(
            f"{service}/predict", json={"requests": [{"user_id": f"check-{i}", "input": text}]}, timeout=120
        ).json()[0]
        b = httpx.post(f"{plain}/predict", json={"text": text}, timeout=120).json()
        agree += a["output"] == b["output"]
    return {"prompts": len(TEXTS), "same_answer": agree}


def routing_overhead(config, n: int = 5000) -> dict:
    """Per-request cost of routing (flag evaluation) and attribution (version lookup, answer object)."""
    from tuneloop.access.receipts import sign
    from tuneloop.release.flags import Router
    from tuneloop.serving.models import AdapterBank
    from tuneloop.serving.service import Answer

    router, bank = Router(config), AdapterBank.__new__(AdapterBank)
    bank.served = {"champion": "1", "challenger": "2"}
    key, timings = b"k" * 32, []
    for i in range(n):
        began = time.perf_counter()
        version = bank.version_of(router.variant(f"user-{i}", bank.served["challenger"]))
        Answer(
            request_id=f"r{i}",
            output="x",
            model_version=version,
            variant="champion",
            receipt=sign(key, f"r{i}", version, f"user-{i}", config.kind),
        )
        timings.append(time.perf_counter() - began)
    timings.sort()
    return {"n": n, "p50_ms": timings[n // 2] * 1000, "p95_ms": timings[int(n * 0.95)] * 1000}


def rollback_under_load(base: str, config, work: Path, clients: int = 4) -> dict:
    """All users on the challenger, load running; roll back and time the first champion answer."""
    from tuneloop.release.flags import set_challenger_percent

    set_challenger_percent(config, 100)
    time.sleep(1)
    out = work / "rollback-load.json"
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            f"{base}/predict",
            "--clients",
            str(clients),
            "--seconds",
            "8",
            "--style",
            "service",
            "--out",
            str(out),
        ],
        cwd=ROOT,
    )
    time.sleep(3)
    issued = time.time()
    r = httpx.post(
        f"{base}/v1/admin/rollback", headers={"Authorization": f"Bearer {os.environ['TUNELOOP_API_TOKEN']}"}, timeout=10
    )
    r.raise_for_status()
    load.wait(timeout=120)
    run = json.loads(out.read_text())
    ends = [(start + latency, version) for start, latency, ok, version in run["records"] if ok]
    first_champion = min(end for end, v in ends if v == "1" and end > issued)
    last_challenger = max((end for end, v in ends if v == "2"), default=issued)
    return {
        "requests": run["requests"],
        "failed": run["failed"],
        "seconds_to_first_champion_answer": round(first_champion - issued, 3),
        "seconds_to_last_challenger_answer": round(max(0.0, last_challenger - issued), 3),
    }


MODELS = {
    "classification": "all-MiniLM-L6-v2 + LoRA r=8 (6 labels)",
    "generation": "SmolLM2-135M-Instruct + LoRA r=8, greedy, {n} new tokens",
    RANDOM_BASE: "SmolLM2-135M shape, random weights, bf16 on the GPU (fp32 on the CPU) + LoRA r=8, greedy, {n} new tokens",
}
STACK_BATCH64_RPS = (
    54.8  # plain batch-64 greedy generation of 24 tokens, SmolLM2-135M shape, bf16, one H100, 2026-11-23
)


def _batch_counts(service: str) -> tuple[float, float] | None:
    """(sum, count) of the service's ``tuneloop_batch_size`` histogram, all workers; None if unreadable."""
    try:
        text = httpx.get(f"{service}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for part in total:
            if line.startswith(f"tuneloop_batch_size_{part}"):
                total[part] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]


def _service_run(service: str, clients: int, seconds: float, work: Path) -> dict:
    before = _batch_counts(service)
    run = _load(f"{service}/predict", clients, seconds, "service", work)
    after = _batch_counts(service)
    if before and after and after[1] > before[1]:
        run["mean_batch"] = round((after[0] - before[0]) / (after[1] - before[1]), 1)
    return run


def bench_kind(
    kind: str,
    seconds: float,
    work: Path,
    max_new_tokens: int,
    rounds: int = 2,
    clients_levels=(1, 4, 16),
    device: str = "cpu",
    base_folder: Path | None = None,
    challenger_percent: int = 10,
    reference_batches: list[int] | None = None,
) -> dict:
    """Service vs plain pipeline at each number of clients for one task kind (champion = plain app's model)."""
    from tuneloop.config import LoopConfig
    from tuneloop.release.flags import set_challenger_percent

    precision = "auto"  # bf16 on a GPU that has it, fp32 on the CPU: the service's own default
    config = LoopConfig(
        kind=kind,
        home=work,
        max_new_tokens=max_new_tokens,
        device=device,
        precision=precision,
        base_model=str(base_folder) if base_folder else None,
    )
    adapter = _register_versions(config)
    results: dict = {
        "model": MODELS[RANDOM_BASE if base_folder else kind].format(n=max_new_tokens),
        "device": device,
        "seconds_per_level": seconds,
        "rounds": rounds,
        "challenger_percent": challenger_percent,
        "levels": [],
    }
    plain_args = ["--kind", kind, "--max-new-tokens", str(max_new_tokens), "--device", device, "--precision", precision]
    if reference_batches:  # plain generate of the merged champion, no server: what batching can reach
        out = work / f"reference-{kind}.json"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.plain_app",
                adapter,
                *plain_args,
                "--reference",
                *map(str, reference_batches),
                "--reference-out",
                str(out),
            ],
            cwd=ROOT,
            check=True,
            timeout=1200,
        )
        results["reference_generate"] = json.loads(out.read_text())
        print(json.dumps({"kind": kind, "reference_generate": results["reference_generate"]}), flush=True)
    plain_port = free_port()
    plain = f"http://127.0.0.1:{plain_port}"
    env = dict(
        TUNELOOP_TINY="false",
        TUNELOOP_MAX_NEW_TOKENS=str(max_new_tokens),
        TUNELOOP_DEVICE=device,
        TUNELOOP_PRECISION=precision,
        **({"TUNELOOP_BASE_MODEL": str(base_folder)} if base_folder else {}),
    )
    set_challenger_percent(config, 0)  # the answer check pins users to the champion, the plain app's model
    with tuneloop_service(work, kind, **env) as service:
        with server_process(
            [sys.executable, "-m", "bench.plain_app", adapter, *plain_args, "--port", str(plain_port)],
            dict(os.environ),
            f"{plain}/docs",
            work / f"plain-{kind}.log",
        ):
            results["answers"] = _same_answers(service, plain)
            set_challenger_percent(config, challenger_percent)
            time.sleep(0.5)
            for clients in clients_levels:
                runs: dict[str, list] = {"service": [], "plain": []}
                for _ in range(rounds):  # alternating, so a noisy neighbour hits both alike
                    runs["service"].append(_service_run(service, clients, seconds, work))
                    runs["plain"].append(_load(f"{plain}/predict", clients, seconds, "plain", work))
                s, p = _summary(*runs["service"]), _summary(*runs["plain"])
                s["mean_batch"] = [r.get("mean_batch") for r in runs["service"]]
                level = {
                    "clients": clients,
                    "service": s,
                    "plain": p,
                    "throughput_ratio": round(s["throughput_rps"] / p["throughput_rps"], 2)
                    if p["throughput_rps"]
                    else None,
                }
                reference = (results.get("reference_generate") or {}).get(str(clients))
                if reference:
                    level["service_over_reference_batch"] = round(s["throughput_rps"] / reference["requests_per_s"], 3)
                results["levels"].append(level)
                print(json.dumps({"kind": kind, **level}), flush=True)
        if (
            kind == "classification" and device == "cpu"
        ):  # the rollback path is the same for both kinds; time it where answers are fast
            results["routing_overhead"] = routing_overhead(config)
            results["rollback"] = rollback_under_load(service, config, work)
    top = results["levels"][-1] if results["levels"] else None
    if base_folder and top:  # the target: the service at the most clients vs plain batch-N generate
        reference = (results.get("reference_generate") or {}).get(str(top["clients"]))
        results["target"] = {
            "clients": top["clients"],
            "service_rps": top["service"]["throughput_rps"],
            "reference_batch_rps": reference and reference["requests_per_s"],
            "ratio": top.get("service_over_reference_batch"),
            "goal": 0.9,
            "stack_h100_batch64_rps": STACK_BATCH64_RPS,
            "ratio_vs_stack_h100": round(top["service"]["throughput_rps"] / STACK_BATCH64_RPS, 3),
        }
    return results


# -- the random base and what a GPU machine needs -------------------------------------------------------


def random_base(folder: Path, tokenizer_dir: Path | None) -> Path:
    """A SmolLM2-135M-shaped causal LM with random weights (the published config in ``bench/gpu.py``),
    saved in bf16 with the SmolLM2 tokenizer and chat template: a base ``TUNELOOP_BASE_MODEL`` can name."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.gpu import model_config

    if (folder / "model.safetensors").exists():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or _bundled_tokenizer())
    config = model_config("smollm2-135m")
    config.use_cache = True  # generation
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.eos_token_id
    )
    tmp = folder.with_name(folder.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)
    return folder


def _bundled_tokenizer() -> Path:
    from tuneloop.modeling.models import ModelError, resolve_base

    try:
        return Path(resolve_base("generation").path)
    except ModelError as err:
        sys.exit(
            f"no SmolLM2 tokenizer here ({err}). On a GPU machine: export it where the model wheel is installed "
            "(python -m bench.serve --export-tokenizer .bench-gpu/tokenizer), carry it, and pass --tokenizer."
        )


def export_tokenizer(target: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(_bundled_tokenizer()).save_pretrained(target)
    print(f"wrote {target} ({sum(f.stat().st_size for f in target.iterdir()) / 2**20:.1f} MB)")


def device_wheels() -> str:
    """The pip download command for what the GPU serving run imports that the GPU machine's image lacks:
    the distributions that the service, the plain app and this benchmark load, with their requirements
    (closure, extras left out), at the versions installed here; less the packages KINDS.md lists for
    the machine's image (when readable), less ``mlflow`` itself (its UI: ``mlflow-skinny`` holds the
    client and the SQL stores)."""
    import importlib.metadata as md
    import re

    from packaging.markers import Marker

    import bench.loadgen  # noqa: E401, F401
    import tuneloop.data.migrations
    import tuneloop.modeling.adapters  # noqa: E401, F401
    import tuneloop.registry.versions
    import tuneloop.release.operations
    import tuneloop.serving.live  # noqa: E401, F401

    norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    env = {
        "python_version": "3.12",
        "python_full_version": "3.12.3",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    found = md.packages_distributions()
    todo = sorted({d for m in list(sys.modules) for d in found.get(m.split(".")[0], [])})
    pinned: dict[str, str] = {}
    while todo:
        try:
            dist = md.distribution(todo.pop())
        except md.PackageNotFoundError:
            continue
        name = norm(dist.metadata["Name"])
        if name in pinned or name in ("tuneloop", "mlflow"):
            continue
        pinned[name] = dist.version
        for requirement in dist.requires or []:
            spec, _, marker = requirement.partition(";")
            if marker and not Marker(marker).evaluate(env):
                continue
            todo.append(re.split(r"[ <>=!~\[(]", spec.strip(), maxsplit=1)[0])
    kinds = Path("/work/.library/device/KINDS.md")
    image = set()
    if kinds.exists() and "Packages: " in kinds.read_text():
        image = {
            norm(p.strip().rstrip(".")) for p in kinds.read_text().split("Packages: ", 1)[1].splitlines()[0].split(",")
        }
    wanted = sorted(
        f"{n}=={v}" for n, v in pinned.items() if n not in image and not n.startswith(("torch", "nvidia-", "triton"))
    )
    return (
        "python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "
        "--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 "
        "--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "
        + " ".join(wanted)
        + ("" if image else "\n# KINDS.md not found: the list includes what the GPU image may already have")
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter load levels and one round")
    parser.add_argument(
        "--kind",
        nargs="*",
        choices=["classification", "generation"],
        default=None,
        help="default: both on the bundled bases; generation alone on a random base",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both servers run the model")
    parser.add_argument(
        "--base",
        choices=["bundled", RANDOM_BASE],
        default=None,
        help=f"bundled weights (default on cpu) or {RANDOM_BASE} (default on cuda; generation only)",
    )
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="SmolLM2 tokenizer folder for the random base (default: the bundled model's)",
    )
    parser.add_argument(
        "--clients", type=int, nargs="+", default=None, help="load levels (default 1 4 16; cuda: 1 16 64)"
    )
    parser.add_argument("--seconds", type=float, default=None, help="seconds per load level and round")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer length for generation (default 16; cuda: 24)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="alternating service/plain runs per load level, pooled")
    parser.add_argument(
        "--challenger-percent", type=int, default=10, help="users routed to the challenger during the load"
    )
    parser.add_argument(
        "--reference",
        type=int,
        nargs="*",
        default=None,
        help="batch sizes of the plain-generate reference (default on a random base: the load levels)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--export-tokenizer", type=Path, metavar="DIR", help="write the bundled SmolLM2 tokenizer to DIR and exit"
    )
    parser.add_argument(
        "--device-wheels", action="store_true", help="print the pip download command for a GPU machine and exit"
    )
    args = parser.parse_args(argv)
    if args.export_tokenizer:
        export_tokenizer(args.export_tokenizer)
        return {}
    if args.device_wheels:
        print(device_wheels())
        return {}
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            sys.exit(
                "bench serve --device cuda: CUDA is not available here (torch.cuda.is_available() is False); "
                "run it on a GPU machine (see the module docstring) or exercise the path with --device cpu "
                f"--base {RANDOM_BASE}."
            )
    random = (args.base or (RANDOM_BASE if cuda else "bundled")) == RANDOM_BASE
    kinds = args.kind or (["generation"] if random else ["classification", "generation"])
    if random and kinds != ["generation"]:
        parser.error(f"--base {RANDOM_BASE} is a generation base: use --kind generation")
    clients = args.clients or ([1, 16, 64] if cuda else [1, 4, 16])
    max_new_tokens = args.max_new_tokens or (24 if cuda or random else 16)
    rounds = 1 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="tuneloop-bench-serve-"))
    os.environ.update(
        TUNELOOP_HOME=str(work), MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}", TUNELOOP_API_TOKEN="bench-token"
    )
    from tuneloop.config import apply_environment

    apply_environment(work)
    base_folder = random_base(work / RANDOM_BASE, args.tokenizer) if random else None
    results: dict = {"cpu_cores": os.cpu_count(), "load_average_at_start": os.getloadavg()[0], "device": args.device}
    for kind in kinds:
        seconds = args.seconds or (
            (10 if args.quick else 20)
            if cuda
            else (5 if args.quick else 15)
            if kind == "classification"
            else (12 if args.quick else 30)
        )
        reference = args.reference if args.reference is not None else (clients if random else [])
        results[kind] = bench_kind(
            kind,
            seconds,
            work,
            max_new_tokens,
            rounds,
            clients,
            args.device,
            base_folder,
            args.challenger_percent,
            reference,
        )
    path = args.out or RESULTS / ("serve_gpu.json" if cuda else "serve_random_base.json" if random else "serve.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # one kind updates its part of the last run
        results = {**json.loads(path.read_text()), **results}
    path.write_text(json.dumps(results, indent=2))
    print(
        json.dumps(
            {
                k: {kk: vv for kk, vv in v.items() if kk != "levels"} if isinstance(v, dict) else v
                for k, v in results.items()
            },
            indent=2,
        )
    )
    return results


if __name__ == "__main__":
    main()
