"""The Flower ServerApp: Flower's FedAvg or FedProx (optionally wrapped in its central DP), the global
model validated after every round, per-client training metrics, and the best round kept.

Each round appends one row to the history (round, the global model's validation loss and ROC-AUC, the
clients' mean training loss) and one row per client (its training loss and ROC-AUC, images); a
``RoundSink`` writes them (results/federated/history.csv, clients.csv) and logs them to MLflow with
step = round. The round with the best validation ROC-AUC (the lower loss on ties) is the model kept,
as the central classifier keeps its best epoch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, NeighboringRelation, PrivacyConfig, SamplingMethod, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, FedProx, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from classifier.infer import infer_logits
from classifier.train import AUC_TOLERANCE, bce, safe_auc
from core.params import ClassifierParams, FederatedParams
from federated.client import RunConfig, model_of
from models.classifier import ArchSpec

RoundSink = Callable[[dict[str, Any], list[dict[str, Any]]], None]  # (round row, client rows) -> None


def sampled_clients(p: FederatedParams) -> int:
    """Clients trained per round: fraction_fit of them, at least one."""
    return max(1, int(p.num_clients * p.fraction_fit))


def make_strategy(p: FederatedParams, aggregate_metrics: Callable[[list[RecordDict], str], MetricRecord]) -> Strategy:
    n = sampled_clients(p)
    common: dict[str, Any] = {
        "fraction_train": p.fraction_fit,
        "fraction_evaluate": 0.0,  # the server validates the global model itself
        "min_train_nodes": n,
        "min_evaluate_nodes": 0,
        "min_available_nodes": p.num_clients,
        "train_metrics_aggr_fn": aggregate_metrics,
    }
    strategy: Strategy = FedProx(proximal_mu=p.proximal_mu, **common) if p.strategy == "fedprox" else FedAvg(**common)
    if p.dp == "server_clipping":
        from flwr.serverapp import RdpAccountant

        # No amplification by sampling is claimed: Flower's fixed-clipping accounting supports only that.
        accountant = RdpAccountant(
            PrivacyConfig(
                target_delta=p.dp_delta,
                population_size=p.num_clients,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy, p.dp_noise_multiplier, p.dp_clipping_norm, n, accountant=accountant
        )
    return strategy


@dataclass
class BestRound:
    """The best round so far by validation ROC-AUC (lower loss on ties), its weights and logits."""

    auc: float = -math.inf
    loss: float = math.inf
    round: int = -1
    state: dict[str, torch.Tensor] | None = None
    val_logits: np.ndarray | None = None

    def update(self, server_round: int, auc: float, loss: float, arrays: ArrayRecord, logits: np.ndarray) -> None:
        auc = auc if math.isfinite(auc) else -math.inf
        if auc > self.auc + AUC_TOLERANCE or (auc >= self.auc - AUC_TOLERANCE and loss < self.loss):
            self.auc, self.loss, self.round = max(auc, self.auc), loss, server_round
            self.state = copy.deepcopy(arrays.to_torch_state_dict())
            self.val_logits = logits


@dataclass
class GlobalValidation:
    """The server's view: the validation images, and what every round did."""

    recipe: ClassifierParams
    val_images: np.ndarray
    val_labels: np.ndarray
    sink: RoundSink
    best: BestRound = field(default_factory=BestRound)
    clients: list[dict[str, Any]] = field(default_factory=list)  # of the round being run
    epsilon: Callable[[], float | None] = lambda: None

    def client_metrics(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        """Flower's train-metrics aggregation, keeping each client's own metrics first."""
        for record in records:
            m = next(iter(record.metric_records.values()))
            self.clients.append(
                {
                    "client": int(m["client"]),  # type: ignore[arg-type]
                    "n": int(m[weight_key]),  # type: ignore[arg-type]
                    "train_loss": float(m["train_loss"]),  # type: ignore[arg-type]
                    "train_roc_auc": float(m["train_roc_auc"]),  # type: ignore[arg-type]
                }
            )
        return aggregate_metricrecords(records, weight_key)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Flower's evaluate_fn: the global model on the validation split (round 0 = the initial model)."""
        model = model_of(self.recipe, arrays)
        mean, std = ArchSpec.from_params(self.recipe).normalisation
        logits = infer_logits(
            model, self.val_images, 2 * self.recipe.batch_size, torch.device("cpu"), mean, std, progress=False
        )
        auc, loss = safe_auc(self.val_labels, logits), bce(logits, self.val_labels)
        clients, self.clients = sorted(self.clients, key=lambda c: c["client"]), []
        row = {
            "round": server_round,
            "val_loss": loss,
            "val_roc_auc": auc,
            "val_accuracy": float(np.mean((logits > 0) == (self.val_labels > 0.5))),
            "train_loss": float(np.mean([c["train_loss"] for c in clients])) if clients else math.nan,
            "clients_trained": len(clients),
            "epsilon": self.epsilon() if server_round > 0 else None,
        }
        if server_round > 0:
            self.best.update(server_round, auc, loss, arrays, logits)
        self.sink(row, [{"round": server_round, **c} for c in clients])
        return MetricRecord({"val_loss": loss, "val_roc_auc": auc if math.isfinite(auc) else -1.0})


def server_app(p: FederatedParams, config: RunConfig, initial: ArrayRecord, validation: GlobalValidation) -> ServerApp:
    """The ServerApp of one run: ``p.rounds`` rounds of the strategy from the ``initial`` weights."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = make_strategy(p, validation.client_metrics)
        if isinstance(strategy, DifferentialPrivacyServerSideFixedClipping):
            dp = strategy

            def spent() -> float | None:
                used = dp.privacy_spent()
                return None if used is None else float(used.epsilon)

            validation.epsilon = spent
        strategy.start(
            grid=grid,
            initial_arrays=initial,
            num_rounds=p.rounds,
            train_config=config.to_record(),
            evaluate_fn=validation,
        )

    return app
