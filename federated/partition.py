"""Clients of the train split: which rows each federated client holds.

The unit is the group (core.schema ``group``: a person, a source photo): a group lands whole at one
client, so no client sees a face another client holds. Three schemes (``federated.partition``):

- ``by_generator``: one client per fake generator (``num_clients`` does not apply), each holding that
  generator's fakes and a share of the real images. A group goes to the client of one of its generators
  (the one furthest below its share); the group's fakes of *other* generators are left out (counted in
  ``dropped``): each organisation has met one kind of fake only. Real-only groups are dealt to balance the reals.
- ``iid``: groups shuffled and dealt so every client gets about the same number of rows.
- ``dirichlet``: per stratum (the group's first fake generator, or real), client shares drawn from
  Dirichlet(``dirichlet_alpha``): small alpha = skewed clients, large alpha = close to iid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.errors import InputError
from core.params import FederatedParams
from core.schema import REAL_GENERATOR


@dataclass(frozen=True)
class Partition:
    """Row indices (into the train split) per client, and the rows no client holds."""

    clients: list[np.ndarray]
    names: list[str]  # by_generator: the client's generator; else client_<k>
    dropped: int

    def table(self, frame: pd.DataFrame) -> pd.DataFrame:
        """One row per held image: client, its name, the split row, id, label, generator, group."""
        parts = [
            pd.DataFrame(
                {
                    "client": k,
                    "client_name": self.names[k],
                    "row": rows,
                    "id": frame["id"].to_numpy()[rows],
                    "label": frame["label"].to_numpy()[rows],
                    "generator": frame["generator"].to_numpy()[rows],
                    "group": frame["group"].to_numpy()[rows],
                }
            )
            for k, rows in enumerate(self.clients)
        ]
        return pd.concat(parts, ignore_index=True)


def fake_generators(frame: pd.DataFrame) -> list[str]:
    return sorted(set(frame["generator"].astype(str)) - {REAL_GENERATOR})


def _groups(frame: pd.DataFrame, rng: np.random.Generator) -> list[np.ndarray]:
    """Row indices per group, in a seeded random order."""
    codes, _ = pd.factorize(frame["group"].astype(str))
    groups = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)] if len(codes) else []
    order = rng.permutation(len(groups))
    return [groups[i] for i in order]


def by_generator(frame: pd.DataFrame, rng: np.random.Generator) -> Partition:
    gens = fake_generators(frame)
    generator = frame["generator"].astype(str).to_numpy()
    is_real = generator == REAL_GENERATOR
    held: list[list[int]] = [[] for _ in gens]
    fakes_of = np.array([np.sum(generator == g) for g in gens], dtype=float)
    taken_fakes, taken_reals = np.zeros(len(gens)), np.zeros(len(gens))
    dropped = 0
    for rows in _groups(frame, rng):
        present = [i for i, g in enumerate(gens) if np.any(generator[rows] == g)]
        if present:  # the client of one of its generators, the furthest below its share of that generator
            k = min(present, key=lambda i: (taken_fakes[i] / fakes_of[i], taken_reals[i]))
        else:  # a real-only group: the client with the fewest reals
            k = int(np.argmin(taken_reals))
        keep = rows[is_real[rows] | (generator[rows] == gens[k])]
        dropped += len(rows) - len(keep)
        taken_fakes[k] += int(np.sum(~is_real[keep]))
        taken_reals[k] += int(np.sum(is_real[keep]))
        held[k].extend(keep.tolist())
    return Partition([np.sort(np.asarray(h, dtype=int)) for h in held], gens, dropped)


def iid(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> Partition:
    held: list[list[int]] = [[] for _ in range(n)]
    for rows in _groups(frame, rng):
        held[int(np.argmin([len(h) for h in held]))].extend(rows.tolist())
    return Partition([np.sort(np.asarray(h, dtype=int)) for h in held], [f"client_{k}" for k in range(n)], 0)


def dirichlet(frame: pd.DataFrame, n: int, alpha: float, rng: np.random.Generator) -> Partition:
    generator = frame["generator"].astype(str).to_numpy()
    strata: dict[str, list[np.ndarray]] = {}
    for rows in _groups(frame, rng):
        fakes = sorted(set(generator[rows]) - {REAL_GENERATOR})
        strata.setdefault(fakes[0] if fakes else REAL_GENERATOR, []).append(rows)
    held: list[list[int]] = [[] for _ in range(n)]
    for name in sorted(strata):
        groups = strata[name]
        shares = rng.dirichlet(np.full(n, alpha))
        cuts = np.round(np.cumsum(shares)[:-1] * len(groups)).astype(int)
        for k, part in enumerate(np.split(np.arange(len(groups)), cuts)):
            for g in part:
                held[k].extend(groups[g].tolist())
    return Partition([np.sort(np.asarray(h, dtype=int)) for h in held], [f"client_{k}" for k in range(n)], 0)


def partition(frame: pd.DataFrame, p: FederatedParams) -> Partition:
    """The clients of ``frame`` (the train split) as ``federated.partition`` says; every client non-empty."""
    rng = np.random.default_rng(p.seed)
    if p.partition == "by_generator":  # one client per fake generator in train: num_clients does not apply
        if not fake_generators(frame):
            raise InputError(
                "federated.partition by_generator makes one client per fake generator: the train split has none",
                "re-split so that train holds fakes",
            )
        part = by_generator(frame, rng)
    elif p.partition == "iid":
        part = iid(frame, p.num_clients, rng)
    else:
        part = dirichlet(frame, p.num_clients, p.dirichlet_alpha, rng)
    empty = [part.names[k] for k, rows in enumerate(part.clients) if len(rows) < 2]
    if empty:
        raise InputError(
            f"federated clients {empty} hold fewer than 2 training images ({len(frame)} rows, "
            f"{p.num_clients} clients, partition {p.partition})",
            "use fewer clients, more data, or a larger federated.dirichlet_alpha",
        )
    return part
