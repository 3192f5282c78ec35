"""Stage train_federated: the real-vs-fake classifier trained by Flower clients that never pool their images.

Reads params block ``federated``, data/splits/{train,val,test}.csv and the face crops. The train split
is partitioned into clients (federated.partition); Flower's simulation engine (Ray, federated.cpus
cores) runs the ClientApp (federated.client) and the ServerApp (federated.server) for federated.rounds
rounds of FedAvg or FedProx. After every round the global model is validated: history.csv and MLflow
(step = round), the clients' own training metrics in clients.csv. The best round's model gets its
temperature and threshold on validation and is saved as a classifier checkpoint (model.pt; predict
loads it). With federated.baselines it also trains centrally and on each client alone, same recipe
and epochs. Everything is scored on the test split into metrics.json and comparison.csv.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.entities import Metric

from classifier.checkpoint import ClassifierCheckpoint, save_checkpoint
from classifier.data import SplitData, load_split
from core.errors import InputError, require, run_stage
from core.io import write_csv, write_json
from core.params import FederatedParams, as_dict, load_block
from core.pretrained import find_weights
from core.tracking import flatten_numeric, stage_run
from federated.client import RunConfig, model_of, recipe
from federated.partition import Partition, partition
from federated.run import Scored, baseline, score, simulate
from federated.server import GlobalValidation
from models.classifier import ArchSpec, build_classifier
from stages.train_classifier import crop_params, raw_min_side

SPLITS_DIR = Path("data/splits")
OUT_DIR = Path("results/federated")


def round_sink(run_id: str) -> Any:
    """Writes history.csv / clients.csv and logs the round to MLflow (step = round) as rounds finish."""
    rounds: list[dict[str, Any]] = []
    clients: list[dict[str, Any]] = []
    tracker = mlflow.tracking.MlflowClient()

    def sink(row: dict[str, Any], client_rows: list[dict[str, Any]]) -> None:
        rounds.append(row)
        clients.extend(client_rows)
        write_csv(OUT_DIR / "history.csv", pd.DataFrame(rounds))
        write_csv(OUT_DIR / "clients.csv", pd.DataFrame(clients, columns=["round", "client", "n", *CLIENT_METRICS]))
        now, step = int(time.time() * 1000), int(row["round"])
        values = {k: v for k, v in row.items() if k != "round"}
        values.update({f"client_{c['client']}.{k}": c[k] for c in client_rows for k in CLIENT_METRICS})
        metrics = [Metric(k, float(v), now, step) for k, v in flatten_numeric(values).items()]
        tracker.log_batch(run_id, metrics=metrics)  # the ServerApp's thread has no active MLflow run
        print(
            f"round {step}: val loss {row['val_loss']:.4f} ROC-AUC {row['val_roc_auc']:.3f}, "
            f"{row['clients_trained']} clients trained (loss {row['train_loss']:.4f})"
        )

    return sink


CLIENT_METRICS = ("train_loss", "train_roc_auc")


def client_summary(part: Partition, train: SplitData) -> list[dict[str, Any]]:
    return [
        {
            "client": k,
            "name": part.names[k],
            "n": len(rows),
            "n_fake": int(train.labels[rows].sum()),
            "n_real": int(len(rows) - train.labels[rows].sum()),
            "generators": sorted(set(train.generators[rows])),
        }
        for k, rows in enumerate(part.clients)
    ]


def comparison(results: dict[str, Scored]) -> pd.DataFrame:
    """One row per model: test ROC-AUC, balanced accuracy, EER, and ROC-AUC per fake generator."""
    rows = []
    for name, s in results.items():
        row = {"model": name, **{k: s.test.get(k) for k in ("roc_auc", "balanced_accuracy", "eer", "ece")}}
        row.update({f"roc_auc.{g}": m.get("roc_auc") for g, m in s.per_generator.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = load_block("federated", FederatedParams)
    faces = crop_params()
    torch.set_num_threads(p.cpus)
    torch.manual_seed(p.seed)
    weights = find_weights(p.arch) if p.init == "imagenet" else None
    train_csv = require(SPLITS_DIR / "train.csv", "split")
    train = load_split(train_csv, p.image_size)  # the pixel cache every client then memory-maps
    val = load_split(require(SPLITS_DIR / "val.csv", "split"), p.image_size)
    test = load_split(require(SPLITS_DIR / "test.csv", "split"), p.image_size)
    if len(np.unique(val.labels)) < 2:
        raise InputError("the validation split needs real and fake images", "re-split with more data")
    part = partition(train.frame, p)
    if len(part.clients) != p.num_clients:  # by_generator: the clients are the generators found in train
        print(f"train_federated: {len(part.clients)} clients, one per fake generator ({', '.join(part.names)})")
        p = replace(p, num_clients=len(part.clients))
    write_csv(OUT_DIR / "partitions.csv", part.table(train.frame))
    local = recipe(p, p.local_epochs)
    spec = ArchSpec.from_params(local)
    initial = build_classifier(spec, weights.path if weights else None)
    initial_state = {k: v.detach().clone() for k, v in initial.state_dict().items()}
    started = time.monotonic()

    with stage_run(stage="train_federated", block="federated", params=p, manifest=train_csv) as run:
        validation = GlobalValidation(local, val.images, val.labels, round_sink(run.info.run_id))
        simulate(p, RunConfig(p, OUT_DIR / "partitions.csv", train_csv, Path.cwd()), initial_state, validation)
        best = validation.best
        assert best.state is not None and best.val_logits is not None
        model = model_of(local, best.state).eval()
        results = {f"federated_{p.strategy}": score(model, best.val_logits, val, test, local)}
        federated_seconds = time.monotonic() - started
        history = pd.read_csv(OUT_DIR / "history.csv")
        epsilon = history["epsilon"].dropna().iloc[-1] if history["epsilon"].notna().any() else None
        mean, std = spec.normalisation
        save_checkpoint(
            OUT_DIR / "model.pt",
            ClassifierCheckpoint(
                state_dict=model.state_dict(),
                arch=spec.to_dict(),
                temperature=results[f"federated_{p.strategy}"].temperature,
                threshold=results[f"federated_{p.strategy}"].threshold,
                threshold_rule=p.threshold_rule,
                mean=list(mean),
                std=list(std),
                image_size=p.image_size,
                faces=as_dict(faces),
                info={
                    "trained_by": "train_federated",
                    "strategy": p.strategy,
                    "best_round": best.round,
                    "best_val_roc_auc": best.auc,
                    "init": p.init,
                    "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "min_side": raw_min_side(),
                },
            ),
        )
        if p.baselines:
            everyone = np.arange(len(train))
            alone = [(f"alone_{n}", r) for n, r in zip(part.names, part.clients)] if len(part.clients) > 1 else []
            for name, rows in [("central", everyone), *alone]:  # one client alone would repeat central
                if len(np.unique(train.labels[rows])) < 2:
                    print(f"train_federated: baseline {name} skipped (its rows hold one class)")
                    continue
                torch.manual_seed(p.seed)
                fresh = build_classifier(spec)
                fresh.load_state_dict(initial_state)
                print(f"train_federated: baseline {name} ({len(rows)} images, {p.rounds * p.local_epochs} epochs)")
                results[name] = baseline(fresh, train, rows, val, test, p)
        table = comparison(results)
        summary = {
            "strategy": p.strategy,
            "partition": p.partition,
            "rounds": p.rounds,
            "local_epochs": p.local_epochs,
            "best_round": best.round,
            "best_val_roc_auc": best.auc,
            "clients": client_summary(part, train),
            "rows_left_out": part.dropped,
            "federated_seconds": round(federated_seconds, 1),
            "seconds": round(time.monotonic() - started, 1),
            "dp": {
                "mode": p.dp,
                "epsilon": epsilon,
                "delta": p.dp_delta if p.dp != "none" else None,
                "noise_multiplier": p.dp_noise_multiplier if p.dp != "none" else None,
                "clipping_norm": p.dp_clipping_norm if p.dp != "none" else None,
            },
            "models": {name: s.summary() for name, s in results.items()},
        }
        write_json(OUT_DIR / "metrics.json", summary)
        write_csv(OUT_DIR / "comparison.csv", table)
        mlflow.log_metrics(flatten_numeric({name: {"test": s.test} for name, s in results.items()}))
        mlflow.log_metrics({"best_round": best.round, "seconds": time.monotonic() - started})
        for name in ("history.csv", "clients.csv", "metrics.json", "comparison.csv", "partitions.csv"):
            mlflow.log_artifact(str(OUT_DIR / name))
    pd.set_option("display.width", 200)
    print(table.round(3).to_string(index=False))
    print(f"train_federated: best round {best.round}/{p.rounds} -> {OUT_DIR / 'model.pt'}")


if __name__ == "__main__":
    run_stage(
        "train_federated",
        main,
        __doc__,
        "federated",
        ["results/federated/{model.pt,history.csv,clients.csv,partitions.csv,metrics.json,comparison.csv}"],
    )
