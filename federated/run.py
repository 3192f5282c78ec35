"""One federated run under Flower's simulation engine (Ray), the baselines, and the test scoring.

Ray gets ``federated.cpus`` CPUs (each client one), an object store of ``federated.object_store_mb``
and no dashboard, and is shut down when the run ends, also on errors. The baselines train with the
classifier's own ``train_loop`` and the same recipe for rounds x local_epochs epochs: on the whole
train split (central) and on each client's rows alone. Every model gets its temperature and threshold
on validation and is scored on the test split with evaluate's metrics (per generator included).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import torch
from flwr.app import ArrayRecord

from classifier.data import SplitData
from classifier.infer import infer_logits
from classifier.metrics import (
    binary_metrics,
    calibrated,
    choose_threshold_from_logits,
    fit_temperature_with_reason,
    per_generator_metrics,
)
from classifier.train import train_loop
from core.params import ClassifierParams, FederatedParams
from federated.client import RunConfig, client_app, recipe
from federated.server import GlobalValidation, server_app
from models.classifier import ArchSpec, DeepfakeClassifier


def backend_config(p: FederatedParams) -> dict[str, Any]:
    """Ray: the stage's cores only (one per client at a time), a small object store, no dashboard."""
    return {
        "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": p.cpus,
            "num_gpus": 0,
            "object_store_memory": p.object_store_mb * 2**20,
            "include_dashboard": False,
            "logging_level": "warning",
        },
    }


def stop_leftovers(processes: set[psutil.Process], grace_s: float = 10.0) -> list[int]:
    """Wait for Ray's processes of this run to exit after ray.shutdown; terminate those that linger
    (a worker busy in a task notices the shutdown late). Returns the pids that had to be stopped."""
    _, alive = psutil.wait_procs(list(processes), timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for proc in still:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    return [proc.pid for proc in alive]


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def simulate(
    p: FederatedParams, config: RunConfig, initial: dict[str, torch.Tensor], validation: GlobalValidation
) -> None:
    """``p.rounds`` rounds with ``p.num_clients`` simulated SuperNodes; Ray and its workers are gone afterwards."""
    import ray
    from flwr.simulation import run_simulation

    started: set[psutil.Process] = set()  # Ray's processes (children of this one), seen after each round
    record = validation.sink

    def sink(row: dict[str, Any], clients: list[dict[str, Any]]) -> None:
        started.update(psutil.Process().children(recursive=True))
        record(row, clients)

    validation.sink = sink
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit) if on_main else None  # a killed stage still stops Ray
    try:
        run_simulation(
            server_app=server_app(p, config, ArrayRecord(initial), validation),
            client_app=client_app(),
            num_supernodes=p.num_clients,
            backend_config=backend_config(p),
        )
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)
        started.update(psutil.Process().children(recursive=True))
        if ray.is_initialized():
            ray.shutdown()
        stopped = stop_leftovers(started)
        if stopped:
            print(f"train_federated: stopped {len(stopped)} Ray processes that outlived ray.shutdown")
    if validation.best.state is None:
        raise RuntimeError("the federated run finished no round (see Flower's log above)")


@dataclass(frozen=True)
class Scored:
    """A trained model with its validation-fitted temperature and threshold, and its scores."""

    temperature: float
    temperature_reason: str
    threshold: float
    val: dict[str, Any]
    test: dict[str, Any]
    per_generator: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "temperature_reason": self.temperature_reason,
            "threshold": self.threshold,
            "val": self.val,
            "test": self.test,
            "per_generator": self.per_generator,
        }


def score(
    model: DeepfakeClassifier, val_logits: np.ndarray, val: SplitData, test: SplitData, p: ClassifierParams
) -> Scored:
    """Temperature and threshold from validation (as train_classifier), then evaluate's test metrics."""
    fit = fit_temperature_with_reason(val_logits, val.labels)
    threshold = choose_threshold_from_logits(val.labels, val_logits, fit.temperature, p.threshold_rule)
    mean, std = ArchSpec.from_params(p).normalisation
    logits = infer_logits(model, test.images, 2 * p.batch_size, torch.device("cpu"), mean, std, desc="test")
    p_test = calibrated(logits, fit.temperature)
    return Scored(
        fit.temperature,
        fit.reason,
        threshold,
        binary_metrics(val.labels, calibrated(val_logits, fit.temperature), threshold),
        binary_metrics(test.labels, p_test, threshold),
        per_generator_metrics(test.labels, p_test, test.generators, threshold),
    )


def baseline(
    model: DeepfakeClassifier, train: SplitData, rows: np.ndarray, val: SplitData, test: SplitData, p: FederatedParams
) -> Scored:
    """The classifier's train_loop on ``rows`` of the train split for rounds x local_epochs epochs."""
    recipe_p = recipe(p, p.rounds * p.local_epochs)
    mean, std = ArchSpec.from_params(recipe_p).normalisation
    result = train_loop(
        model,
        np.asarray(train.images[rows]),
        train.labels[rows],
        val.images,
        val.labels,
        recipe_p,
        torch.device("cpu"),
        mean,
        std,
    )
    return score(result.model, result.val_logits, val, test, recipe_p)
