"""The plain peft + torch loop on BANKING77, outside the product: what a user's own script does (LoRA on
every linear layer, pooler and head trained in full, AdamW with warm-up and linear decay, shuffled batches
padded to their longest row), with switches for the product's throughput pieces (length bucketing, threads)
and its recipe's parts (pooler, targets, rank, rates). Reports per-epoch test accuracy, training CPU-seconds
(time.process_time: every thread's CPU time, not wall time), and training and scoring examples per CPU-second.
``python -m bench banking77`` runs it beside the product; alone: python -m bench.router_study --help
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "banking77"


def read(name: str) -> list[tuple[str, str]]:
    with open(DATA / name, newline="") as f:
        return [(row["text"], row["category"]) for row in csv.DictReader(f)]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--head-lr", type=float, default=None)
    p.add_argument("--targets", default="all-linear")
    p.add_argument("--pooler", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--subset", type=int, default=0)
    p.add_argument("--bucket", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from tuneloop.modeling.models import resolve_base

    path = resolve_base("classification").path
    train, test = read("banking77_train.csv"), read("banking77_test.csv")
    rng = random.Random(0)
    rng.shuffle(train)
    if a.subset:
        train = train[: a.subset]
    labels = sorted({c for _, c in train} | {c for _, c in test})
    index = {c: i for i, c in enumerate(labels)}
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels))
    targets = a.targets if a.targets == "all-linear" else a.targets.split(",")
    cfg = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=a.rank,
        lora_alpha=2 * a.rank,
        lora_dropout=0.05,
        target_modules=targets,
        modules_to_save=["classifier", "pooler"] if a.pooler else None,
    )
    model = get_peft_model(model, cfg)
    head = [q for n, q in model.named_parameters() if q.requires_grad and "modules_to_save" in n]
    rest = [q for n, q in model.named_parameters() if q.requires_grad and "modules_to_save" not in n]
    groups = [{"params": rest}, {"params": head, "lr": a.head_lr or a.lr}]
    enc = tok([t for t, _ in train], truncation=True, max_length=64)["input_ids"]
    y = [index[c] for _, c in train]
    steps_per_epoch = -(-len(train) // a.batch)
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, steps_per_epoch * a.epochs // 10, steps_per_epoch * a.epochs)

    def batches(epoch: int) -> list[list[int]]:
        r = random.Random(epoch)
        order = list(range(len(train)))
        r.shuffle(order)
        if a.bucket:
            w = 50 * a.batch
            order = [i for s in range(0, len(order), w) for i in sorted(order[s : s + w], key=lambda i: len(enc[i]))]
        out = [order[i : i + a.batch] for i in range(0, len(order), a.batch)]
        r.shuffle(out)
        return out

    def pad(ids: list[list[int]]):
        width = max(map(len, ids))
        x = torch.zeros(len(ids), width, dtype=torch.long)
        m = torch.zeros_like(x)
        for i, s in enumerate(ids):
            x[i, : len(s)] = torch.tensor(s)
            m[i, : len(s)] = 1
        return x, m

    @torch.inference_mode()
    def evaluate() -> float:
        began = time.process_time()
        model.eval()
        ids = tok([t for t, _ in test], truncation=True, max_length=64)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        right = 0
        for s in range(0, len(order), 128):
            rows = order[s : s + 128]
            x, m = pad([ids[i] for i in rows])
            pred = model(input_ids=x, attention_mask=m).logits.argmax(-1).tolist()
            right += sum(p == index[test[i][1]] for p, i in zip(pred, rows))
        model.train()
        log["scoring_examples_per_cpu_s"] = round(len(test) / (time.process_time() - began), 1)
        return right / len(test)

    log = {"args": vars(a), "epochs": []}
    cpu, seen = 0.0, 0
    model.train()
    for epoch in range(a.epochs):
        c0, w0 = time.process_time(), time.perf_counter()
        for b in batches(epoch):
            x, m = pad([enc[i] for i in b])
            seen += len(b)
            loss = model(input_ids=x, attention_mask=m, labels=torch.tensor([y[i] for i in b])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        cpu += time.process_time() - c0
        acc = evaluate()
        log["epochs"].append(
            {
                "epoch": epoch + 1,
                "train_cpu_s": round(cpu, 1),
                "wall_s": round(time.perf_counter() - w0, 1),
                "test_accuracy": round(acc, 4),
                "train_examples_per_cpu_s": round(seen / cpu, 1),
            }
        )
        print(json.dumps(log["epochs"][-1]), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(log, indent=1))
    return log


if __name__ == "__main__":
    main()
