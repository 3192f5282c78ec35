"""The Flower ClientApp: one organisation's local training, with the classifier's own training epoch.

A client receives the global weights (an ArrayRecord) and the run's settings (a ConfigRecord: the
federated params as JSON, the partition table and split CSV paths), trains ``local_epochs`` passes of
``classifier.train.train_epoch`` on the rows of its partition (``partition-id`` of its node), and
replies with its weights and a MetricRecord (``num-examples`` weighs it in FedAvg, plus its own
training loss and ROC-AUC). FedProx: the server's ``proximal-mu`` adds (mu / 2) ||w - w_global||^2.

The same app runs under Flower's simulation (federated.run) and its deployment engine (SuperNodes
on other machines; README "train_federated"): everything it needs travels in the message or is a
path on the node.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from classifier.augment import NO_AUGMENTATION, AugmentConfig, Augmenter
from classifier.data import load_split
from classifier.train import (
    Deadline,
    Optimiser,
    TrainBatches,
    class_weights,
    make_scheduler,
    safe_auc,
    smoothed_bce,
    train_epoch,
)
from core.distributed import World
from core.io import read_csv
from core.params import ClassifierParams, FederatedParams
from core.pixels import CACHE_DIR
from models.classifier import ArchSpec, DeepfakeClassifier, build_classifier


def recipe(p: FederatedParams, epochs: int) -> ClassifierParams:
    """The classifier's training recipe for federated, central and client-alone training: the network and
    optimiser keys of block ``federated``, the rest ClassifierParams' defaults (= params.yaml's classifier
    defaults); no frozen-backbone warm-up, no time budget, no early stopping, one CPU thread."""
    return dataclasses.replace(
        ClassifierParams(),
        arch=p.arch,
        init=p.init,
        image_size=p.image_size,
        cnn_depth=p.cnn_depth,
        cnn_width=p.cnn_width,
        batch_size=p.batch_size,
        lr=p.lr,
        weight_decay=p.weight_decay,
        threshold_rule=p.threshold_rule,
        epochs=epochs,
        freeze_backbone_epochs=0,
        max_minutes=0.0,
        early_stopping_patience=0,
        device="cpu",
        threads=1,
        seed=p.seed,
        **({} if p.augment else NO_AUGMENTATION),
    )


def model_of(p: ClassifierParams, weights: ArrayRecord | dict[str, torch.Tensor]) -> DeepfakeClassifier:
    """The recipe's network holding ``weights`` (Flower's ArrayRecord or a state dict)."""
    model = build_classifier(ArchSpec.from_params(p))
    model.load_state_dict(weights.to_torch_state_dict() if isinstance(weights, ArrayRecord) else weights)
    return model


def weights_for(labels: np.ndarray, mode: str) -> tuple[float, float]:
    """The classifier's class weights; equal weights for a client holding one class only."""
    return class_weights(labels, mode) if len(np.unique(labels)) == 2 else (1.0, 1.0)


def proximal_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    base: functools.partial[torch.Tensor],
    model: torch.nn.Module,
    anchor: list[torch.Tensor],
    mu: float,
) -> torch.Tensor:
    """The classifier's loss plus FedProx's (mu / 2) ||w - w_global||^2 over the trainable weights."""
    loss = base(logits, y)
    if mu > 0:
        params = [w for w in model.parameters() if w.requires_grad]
        loss = loss + 0.5 * mu * sum(((w - a) ** 2).sum() for w, a in zip(params, anchor))
    return loss


@dataclasses.dataclass(frozen=True)
class LocalResult:
    state: dict[str, torch.Tensor]
    n: int
    loss: float
    roc_auc: float


def train_locally(
    model: DeepfakeClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    p: ClassifierParams,
    mu: float,
    seed: int,
    progress: bool = False,
) -> LocalResult:
    """``p.epochs`` passes of the classifier's ``train_epoch`` over one client's images."""
    device = torch.device("cpu")
    mean, std = ArchSpec.from_params(p).normalisation
    data = TrainBatches(
        images,
        torch.from_numpy(labels.astype(np.float32)),
        None,
        p.batch_size,
        world=World(),
        augment=Augmenter(AugmentConfig.from_params(p), torch.Generator().manual_seed(seed), device),
        order=torch.Generator().manual_seed(seed + 1),
        view_picks=torch.Generator().manual_seed(seed + 2),
        device=device,
        mean=mean,
        std=std,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    optimiser = Optimiser(
        opt, make_scheduler(opt, p, len(data) * p.epochs), torch.amp.GradScaler("cuda", enabled=False)
    )
    anchor = [w.detach().clone() for w in model.parameters() if w.requires_grad]
    base = functools.partial(smoothed_bce, weights=weights_for(labels, p.class_weighting), smoothing=p.label_smoothing)
    loss_fn = functools.partial(proximal_loss, base=base, model=model, anchor=anchor, mu=mu)
    loss_sum, seen, logits, targets = 0.0, 0, [], []
    for epoch in range(1, p.epochs + 1):
        stats = train_epoch(model, data, optimiser, loss_fn, False, Deadline.after(0), f"local {epoch}", progress)
        loss_sum, seen = loss_sum + stats.loss_sum, seen + stats.seen
        logits, targets = [stats.logits], [stats.targets]  # the last pass's
    model.eval()
    return LocalResult(
        {k: v.detach().cpu() for k, v in model.state_dict().items()},
        len(labels),
        loss_sum / max(1, seen),
        safe_auc(np.concatenate(targets), np.concatenate(logits)),
    )


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every client needs, sent by the server in each message's ConfigRecord."""

    params: FederatedParams
    partitions: Path  # results/federated/partitions.csv
    train_csv: Path
    root: Path  # the project folder (absolute: Ray workers have their own working directory)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                "params": json.dumps(dataclasses.asdict(self.params)),
                "partitions": str(self.partitions),
                "train-csv": str(self.train_csv),
                "root": str(self.root),
            }
        )

    @classmethod
    def from_record(cls, record: Any) -> RunConfig:
        raw = json.loads(str(record["params"]))
        paths = (Path(str(record[k])) for k in ("partitions", "train-csv", "root"))
        return cls(FederatedParams(**raw), *paths)


def client_rows(config: RunConfig, client: int) -> np.ndarray:
    table = read_csv(config.root / config.partitions)
    return table.loc[table["client"] == client, "row"].to_numpy(dtype=int)


def train(msg: Message, context: Context) -> Message:
    """Flower train handler: local epochs on this node's partition from the received global weights."""
    torch.set_num_threads(1)  # one Ray CPU per client
    settings: dict[str, Any] = dict(msg.content.config_records["config"])
    config = RunConfig.from_record(settings)
    client = int(str(context.node_config["partition-id"]))
    server_round = int(settings["server-round"])
    p = recipe(config.params, config.params.local_epochs)
    split = load_split(
        config.root / config.train_csv, p.image_size, config.root / CACHE_DIR, root=config.root, progress=False
    )
    rows = client_rows(config, client)
    mu = float(settings.get("proximal-mu", 0.0))
    torch.manual_seed(config.params.seed + 1000 * server_round + client)
    model = model_of(p, msg.content.array_records["arrays"])
    result = train_locally(
        model, np.asarray(split.images[rows]), split.labels[rows], p, mu, config.params.seed + 7919 * server_round
    )
    metrics = MetricRecord(
        {
            "num-examples": result.n,
            "client": client,
            "train_loss": result.loss,
            "train_roc_auc": result.roc_auc if np.isfinite(result.roc_auc) else -1.0,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(result.state), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def client_app() -> ClientApp:
    app = ClientApp()
    app.train()(train)
    return app
