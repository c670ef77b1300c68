"""Your own base model: a third architecture given as ``base_model`` runs the whole loop, registers,
loads through the registry's pyfunc and serves; bad base, device and precision settings are refused
before any work starts, each naming the setting; and the training path imports no orchestration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import mlflow
import pandas as pd
import pytest
import torch
from conftest import TOKEN, constant_corrections, tiny_config

from devtools.localserver import tuneloop_service
from tuneloop.data.feedback import FeedbackStore
from tuneloop.data.sample_data import sample_feedback
from tuneloop.flows.loop import loop
from tuneloop.modeling.models import ModelError, lora_targets, preflight, resolve_base, resolve_device
from tuneloop.registry.versions import version_for
from tuneloop.release.flags import set_challenger_percent

ROOT = Path(__file__).resolve().parent.parent


def _save(model, tokenizer_dir: Path, out: Path) -> Path:
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory) -> Path:
    """A 2-layer random Qwen2 (not the bundled Llama shape) with the bundled SmolLM2 tokenizer and chat template."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    smol = Path(resolve_base("generation").path)
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        # 10x the default init: at 0.02 its tied embeddings give near-uniform logits that an
        # attention-only adapter cannot move within a test's few dozen steps
        initializer_range=0.2,
    )
    torch.manual_seed(0)
    return _save(Qwen2ForCausalLM(config), smol, tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory) -> Path:
    """A 2-layer random DistilBERT (its attention layers are q_lin/k_lin/v_lin, not BERT's) with MiniLM's vocabulary."""
    from transformers import DistilBertConfig, DistilBertModel

    minilm = Path(resolve_base("classification").path)
    config = DistilBertConfig(
        vocab_size=30522, dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=512
    )
    torch.manual_seed(0)
    return _save(DistilBertModel(config), minilm, tmp_path_factory.mktemp("tiny-distilbert"))


@pytest.mark.parametrize("kind", ["generation", "classification"])
def test_a_third_architecture_tunes_registers_loads_and_serves(kind, home, tiny_qwen2, tiny_distilbert):
    folder = tiny_qwen2 if kind == "generation" else tiny_distilbert
    config = tiny_config(home, kind, epochs=10 if kind == "classification" else 4).model_copy(
        update={"tiny": False, "base_model": str(folder), "max_new_tokens": 8}
    )
    records = sample_feedback(kind, small=True)  # the set a random 2-layer model can learn
    FeedbackStore(config.feedback_db).add_many_raw(
        constant_corrections(records, "Please ask Brightwell support.") if kind == "generation" else records, kind
    )
    info = preflight(config)
    assert info.revision == "local" and Path(info.path) == folder.resolve()

    result = loop(config)
    assert result.registered, result.report.reasons
    version = version_for(config.model_name, "challenger")
    assert version.tags["base_model_sha256"] == info.sha256 and version.tags["base_model_spec"] == str(folder)
    search = mlflow.get_run(result.tuned.search_run_id)
    assert search.data.params["base_model_sha256"] == info.sha256  # part of the study's identity

    loaded = mlflow.pyfunc.load_model(f"models:/{config.model_name}@challenger")
    inputs = ["What is the Nimbus Pro cost?", "where is my hub"]
    answers = loaded.predict(pd.DataFrame({"input": inputs}))
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    if kind == "classification":
        from tuneloop.data.sample_data import INTENTS, OUT_OF_SCOPE_LABEL

        assert set(answers) <= set(INTENTS) | {OUT_OF_SCOPE_LABEL}  # the sample data corrects some to it

    set_challenger_percent(config, 100)  # everyone on the new version: the service loads its own base from the registry
    with tuneloop_service(
        home, kind, TUNELOOP_API_TOKEN=TOKEN, TUNELOOP_DEPLOY__SERVE_WORKERS="1", TUNELOOP_MAX_NEW_TOKENS="8"
    ) as base:
        served = httpx.post(
            f"{base}/predict", json={"requests": [{"user_id": "u", "input": i} for i in inputs]}, timeout=120
        ).json()
    assert [a["model_version"] for a in served] == ["1", "1"]
    assert [a["output"] for a in served] == answers  # the same adapter on the same base as the pyfunc


def test_lora_targets_come_from_the_architecture(tiny_qwen2, tiny_distilbert):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    qwen = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    bert = AutoModelForSequenceClassification.from_pretrained(tiny_distilbert, num_labels=3)
    assert lora_targets(qwen, "attention") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_targets(bert, "qv") == ["q_lin", "v_lin"]
    assert lora_targets(bert, "attention") == ["q_lin", "k_lin", "v_lin", "out_lin"]
    assert lora_targets(bert, "all-linear") == "all-linear"
    assert lora_targets(qwen, "mlp") == ["gate_proj", "up_proj", "down_proj"]
    assert lora_targets(bert, "mlp") == ["lin1", "lin2"]


def _refused(config, *words: str) -> None:
    with pytest.raises(ModelError) as err:
        preflight(config)
    for word in words:
        assert word in str(err.value), str(err.value)
    with pytest.raises(ModelError):  # the loop refuses it before any work: no MLflow run is started
        loop(config)
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_bad_base_models_are_refused_before_any_work_naming_the_setting(home, tmp_path, tiny_qwen2):
    base = tiny_config(home, "generation")
    _refused(
        base.model_copy(update={"base_model": str(tmp_path / "no-such-model")}), "TUNELOOP_BASE_MODEL", "no such folder"
    )
    (tmp_path / "empty").mkdir()
    _refused(base.model_copy(update={"base_model": str(tmp_path / "empty")}), "no config.json")
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_qwen2, no_tokenizer, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json"))
    _refused(base.model_copy(update={"base_model": str(no_tokenizer)}), "has no tokenizer")
    _refused(
        base.model_copy(update={"base_model": "someone/not-downloaded-model"}), "not in the local Hugging Face cache"
    )


def test_a_classifier_base_without_a_sequence_classification_head_is_refused(home, tmp_path):
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "vit"
    ViTModel(
        ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(folder)
    config = tiny_config(home, "classification").model_copy(update={"tiny": False, "base_model": str(folder)})
    _refused(config, "TUNELOOP_BASE_MODEL", "sequence-classification head")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusals on a machine without CUDA")
def test_cuda_and_quantization_without_cuda_are_refused(home):
    base = tiny_config(home, "generation")
    _refused(base.model_copy(update={"device": "cuda"}), "TUNELOOP_DEVICE=cuda", "set TUNELOOP_DEVICE=auto or cpu")
    _refused(base.model_copy(update={"quantization": "4bit"}), "TUNELOOP_QUANTIZATION=4bit", "needs a CUDA GPU")
    _refused(base.model_copy(update={"quantization": "8bit", "device": "cpu"}), "TUNELOOP_QUANTIZATION=8bit")
    _refused(base.model_copy(update={"precision": "fp16", "device": "cpu"}), "TUNELOOP_PRECISION=fp16")
    assert resolve_device("auto").type == "cpu"


def test_the_training_path_imports_no_orchestration_or_tracking():
    """An accelerator machine may have torch, transformers and peft only: training must import there."""
    code = (
        "import sys, tuneloop.modeling.training, tuneloop.modeling.models, tuneloop.modeling.adapters; "
        "print(sorted(m for m in ('mlflow', 'prefect', 'optuna', 'bentoml', 'fastapi', 'sqlalchemy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind", ["generation", "classification"])
def test_adapters_on_the_top_layers_train_there_and_nowhere_else(kind, home):
    """``tune.adapter_layers``: a trial's adapter sits in the top share of the layers (generation's
    default: half) and trains there; the layers below get none (classification: every layer)."""
    from tuneloop.flows.trial import build_model
    from tuneloop.modeling.batches import collate
    from tuneloop.modeling.training import loss_of

    config = tiny_config(home, kind, adapter_layers=0.5)
    if kind == "classification":
        config.tune.adapter_layers = None  # the kind's default: every layer
    info = resolve_base(kind, tiny=True)
    pairs = [("What is the Nimbus Pro price?", "The Nimbus Pro costs 189 euros.")] * 4
    data = SimpleNamespace(
        base=info, labels=["billing", "returns"] if kind == "classification" else []
    )  # of a TrialData

    model = build_model(
        config,
        data,
        {"rank": 4, "alpha_ratio": 2.0, "dropout": 0.0, "target_modules": "attention"},
        torch.device("cpu"),
    )
    layers = model.get_base_model().config.num_hidden_layers
    adapted = {int(n.split(".layer")[1].split(".")[1]) for n, p in model.named_parameters() if "lora_A" in n}
    expected = set(range(layers // 2, layers)) if kind == "generation" else set(range(layers))
    assert adapted == expected
    if kind == "generation":
        from tuneloop.modeling.batches import encode
        from tuneloop.modeling.models import load_tokenizer

        tokenizer = load_tokenizer(info)
        loss_of(model, collate(encode(kind, tokenizer, pairs, [], 32), tokenizer.pad_token_id)).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        assert grads and all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)


@pytest.mark.parametrize("kind", ["generation", "classification"])
def test_every_linear_layer_of_the_top_layers_only_leaves_the_output_layer_alone(kind):
    """``all-linear`` in some layers (peft takes the name only for all of them): every Linear inside the
    adapted layers, nothing below them, and not the output layer, the head or the pooler."""
    from tuneloop.modeling.models import load_base
    from tuneloop.modeling.training import add_adapter, top_layers

    info = resolve_base(kind, None, tiny=True)
    base = load_base(info, kind, ["a", "b"] if kind == "classification" else None)
    layers = top_layers(base, 0.5)
    model = add_adapter(base, kind, 4, 0, targets=lora_targets(base, "all-linear"), layers=layers)
    adapted = {n.split(".lora_A")[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert adapted and all(f".{layers[0]}." in n for n in adapted)
    assert not [n for n in adapted if any(part in n for part in ("lm_head", "classifier", "pooler", "score"))]
    assert len(adapted) == (7 if kind == "generation" else 6)  # q, k, v, o (+ gate, up, down | + two dense)
