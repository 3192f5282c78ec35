"""Group-aware, stratified train/val/test assignment.

Groups (an identity, a near-duplicate cluster, a DFF real/fake path family) are never split: every
row of a group lands in one split. Within that constraint, each split gets close to its fraction
of every (label, generator) stratum.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from core.errors import PipelineError
from core.params import SplitParams
from core.schema import LABELS, SPLITS

# a group spread over several predefined splits goes to the latest
SPLIT_RANK = {"train": 0, "val": 1, "calib": 2, "test": 3}
PREDEFINED_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


class SplitError(PipelineError, ValueError):
    """The faces manifest cannot be split as params.yaml asks."""


def assign_random(frame: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Split name per row; whole groups assigned greedily to the split furthest below its target (splits
    with fraction 0 get none)."""
    names = [s for s in SPLITS if fractions.get(s, 0.0) > 0]
    strata = frame["label"] + "/" + frame["generator"]
    group_strata = strata.groupby(frame["group"]).value_counts()
    groups = list(frame["group"].unique())
    np.random.default_rng(seed).shuffle(groups)

    # Running balance: each group goes to the split whose share of the group's strata is furthest
    # below target so far, so every (label, generator) stratum tracks the fractions all along.
    filled: dict[str, dict[str, int]] = {s: defaultdict(int) for s in SPLITS}
    seen: dict[str, int] = defaultdict(int)
    choice: dict[str, str] = {}
    for group in groups:
        members = group_strata[group].to_dict()
        for k, n in members.items():
            seen[k] += n

        def added_error(split: str, members: dict[str, int] = members) -> float:  # bound now, not late
            err = 0.0
            for k, n in members.items():
                target = fractions[split] * seen[k]
                err += ((filled[split][k] + n - target) ** 2 - (filled[split][k] - target) ** 2) / seen[k]
            return err

        best = min(names, key=lambda s: (added_error(s), -fractions[s]))
        choice[group] = best
        for k, n in members.items():
            filled[best][k] += n
    return frame["group"].map(choice)


def assign_predefined(frame: pd.DataFrame) -> tuple[pd.Series, int]:
    """Use the dataset's own split; a group found in several splits is moved whole to the latest one."""
    given = frame["predefined_split"].astype(str).str.lower().map(PREDEFINED_ALIASES)
    missing = int(given.isna().sum())
    if missing:
        raise SplitError(
            f"split.protocol is 'predefined' but {missing} of {len(frame)} faces have no predefined split "
            "(the source is not laid out train|valid|test/{real,fake}); use split.protocol: random"
        )
    latest = given.map(SPLIT_RANK).groupby(frame["group"]).transform("max")
    inverse = {v: k for k, v in SPLIT_RANK.items()}
    assigned = latest.map(inverse)
    return assigned, int((assigned != given).sum())


def carve_calib(frame: pd.DataFrame, split: pd.Series, share_of_val: float, seed: int) -> pd.Series:
    """Predefined splits have no calibration split: ``share_of_val`` of the val groups (drawn by ``seed``) become it."""
    if share_of_val <= 0:
        return split
    val_groups = sorted(frame.loc[(split == "val").to_numpy(), "group"].unique())
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(val_groups)[: int(round(share_of_val * len(val_groups)))])
    return split.where(~frame["group"].isin(chosen).to_numpy(), "calib")


def split_faces(frame: pd.DataFrame, params: SplitParams) -> tuple[pd.DataFrame, dict]:
    """Return the frame with a ``split`` column and a dict of facts for the summary."""
    if frame.empty:
        raise SplitError("no usable faces to split: check data/faces/metrics.json for the drop rate")
    present = set(frame["label"])
    if missing := [label for label in LABELS if label not in present]:
        raise SplitError(
            f"the faces hold no {missing[0]} face ({len(frame)} faces, all "
            f"{'/'.join(sorted(present))}); a real-vs-fake split needs both labels",
            f"give data.source {missing[0]} images (and check data/faces/metrics.json for drops)",
        )
    facts: dict = {"protocol": params.protocol, "seed": params.seed}
    test = round(1.0 - params.train - params.val - params.calib, 10)
    fractions = {"train": params.train, "val": params.val, "calib": params.calib, "test": test}
    if params.protocol == "predefined":
        split, moved = assign_predefined(frame)
        split = carve_calib(frame, split, params.calib / (params.val + params.calib), params.seed)
        facts["rows_moved_to_keep_groups_whole"] = moved
        facts["calib_share_of_predefined_val"] = params.calib / (params.val + params.calib)
    else:
        split = assign_random(frame, fractions, params.seed)
        facts["fractions"] = fractions
    out = frame.assign(split=split.values)
    if params.protocol == "leave_one_generator_out":
        generators = sorted(set(frame.loc[frame["label"] == "fake", "generator"]))
        if params.holdout_generator not in generators:
            raise SplitError(
                f"split.holdout_generator: {params.holdout_generator!r} is not in the data; "
                f"fake generators present: {', '.join(generators)}"
            )
        unseen = (out["generator"] == params.holdout_generator) & (out["split"] != "test")
        facts["holdout_generator"] = params.holdout_generator
        facts["holdout_rows_excluded_from_train_val"] = int(unseen.sum())
        out = out[~unseen]
    check_both_labels(out, params, [s for s in SPLITS if s != "calib" or params.calib > 0])
    return out, facts


def check_both_labels(out: pd.DataFrame, params: SplitParams, splits: list[str]) -> None:
    """Every split must hold both labels: training, the validation threshold, the class-conditional conformal
    calibration and the test metrics need them."""
    counts = out.groupby(["split", "label"]).size()
    for split in splits:
        for label in LABELS:
            if counts.get((split, label), 0) == 0:
                table = "; ".join(
                    f"{s}: " + ", ".join(f"{counts.get((s, lb), 0)} {lb}" for lb in LABELS) for s in SPLITS
                )
                hint = (
                    "give the source's own split folders both labels, or use split.protocol: random"
                    if params.protocol == "predefined"
                    else "use more faces (data.per_source) or other fractions (split.train, split.val, "
                    "split.calib; test is the rest)"
                )
                raise SplitError(
                    f"split {split!r} would hold no {label} face ({table}); every split needs both labels", hint
                )


def summarise(split_frame: pd.DataFrame, facts: dict) -> dict:
    counts: dict = {}
    for (split, label, generator), n in split_frame.groupby(["split", "label", "generator"]).size().items():
        counts.setdefault(split, {}).setdefault(label, {})[generator] = int(n)
    crossing = int((split_frame.groupby("group")["split"].nunique() > 1).sum())
    totals = {s: int((split_frame["split"] == s).sum()) for s in SPLITS}
    groups = {s: int(split_frame.loc[split_frame["split"] == s, "group"].nunique()) for s in SPLITS}
    return {**facts, "counts": counts, "total": totals, "groups": groups, "groups_crossing_splits": crossing}
