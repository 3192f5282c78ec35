"""Split protocols: groups never cross splits, strata follow the fractions, params are honoured."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from core.io import read_csv
from core.params import ParamsError, SplitParams, parse_block
from core.schema import FACE_COLUMNS, SPLITS
from sources.split import SplitError, split_faces, summarise
from tests.helpers import set_params

GENERATORS = ("gen_a", "gen_b", "gen_c")


def faces_frame(n_groups: int = 60, seed: int = 0, predefined: bool = False) -> pd.DataFrame:
    """Each group: one real and one fake per generator, plus a random extra real sometimes."""
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        members = [("real", "real")] + [("fake", gen) for gen in GENERATORS]
        if rng.random() < 0.3:
            members.append(("real", "real"))
        given = ["train", "valid", "test"][g % 3] if predefined else ""
        for i, (label, gen) in enumerate(members):
            rows.append(
                {c: "" for c in FACE_COLUMNS}
                | {
                    "id": f"g{g}-{i}",
                    "path": f"data/faces/images/g{g}-{i}.png",
                    "label": label,
                    "generator": gen,
                    "group": f"grp{g}",
                    "predefined_split": given,
                    "status": "ok",
                }
            )
    return pd.DataFrame(rows)


def groups_crossing(frame: pd.DataFrame) -> int:
    return int((frame.groupby("group")["split"].nunique() > 1).sum())


@pytest.mark.parametrize(
    "protocol,extra",
    [
        ("random", {}),
        ("predefined", {}),
        ("leave_one_generator_out", {"holdout_generator": "gen_b"}),
    ],
)
def test_every_protocol_keeps_groups_whole(protocol: str, extra: dict) -> None:
    frame = faces_frame(predefined=True)
    # a group that the dataset itself spread over two splits must still end up in one
    grp0 = frame.index[frame["group"] == "grp0"]
    frame.loc[grp0, "predefined_split"] = "train"
    frame.loc[grp0[0], "predefined_split"] = "test"
    params = SplitParams(protocol=protocol, **extra)
    out, facts = split_faces(frame, params)
    assert groups_crossing(out) == 0
    assert set(out["split"]) == set(SPLITS)
    assert summarise(out, facts)["groups_crossing_splits"] == 0


def test_random_split_follows_fractions_per_stratum() -> None:
    frame = faces_frame(n_groups=200)
    out, _ = split_faces(frame, SplitParams(train=0.6, val=0.2, seed=3))
    for (label, gen), part in out.groupby(["label", "generator"]):
        share = part["split"].value_counts(normalize=True)
        assert abs(share["train"] - 0.6) < 0.05, (label, gen, share.to_dict())
        assert abs(share["val"] - 0.2) < 0.05, (label, gen, share.to_dict())


def test_random_split_is_seeded() -> None:
    frame = faces_frame()
    a, _ = split_faces(frame, SplitParams(seed=1))
    b, _ = split_faces(frame, SplitParams(seed=1))
    c, _ = split_faces(frame, SplitParams(seed=2))
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_leave_one_generator_out_keeps_holdout_in_test_only() -> None:
    out, facts = split_faces(faces_frame(), SplitParams(protocol="leave_one_generator_out", holdout_generator="gen_c"))
    held = out[out["generator"] == "gen_c"]
    assert not held.empty and set(held["split"]) == {"test"}
    assert facts["holdout_rows_excluded_from_train_val"] > 0
    assert {"gen_a", "gen_b"} <= set(out.loc[out["split"] == "train", "generator"])


def test_leave_one_generator_out_names_the_generators_present() -> None:
    with pytest.raises(SplitError, match="gen_a, gen_b, gen_c"):
        split_faces(faces_frame(), SplitParams(protocol="leave_one_generator_out", holdout_generator="nope"))


def test_predefined_requires_a_predefined_layout() -> None:
    with pytest.raises(SplitError, match="protocol: random"):
        split_faces(faces_frame(predefined=False), SplitParams(protocol="predefined"))


def test_split_params_are_validated() -> None:
    with pytest.raises(ParamsError, match="split.protocol.*'random', 'predefined', 'leave_one_generator_out'"):
        parse_block("split", SplitParams, {"protocol": "kfold"})
    with pytest.raises(ParamsError, match="must be < 1"):
        parse_block("split", SplitParams, {"train": 0.9, "val": 0.2})
    with pytest.raises(ParamsError, match="holdout_generator: required"):
        parse_block("split", SplitParams, {"protocol": "leave_one_generator_out"})


def test_split_stage_writes_lists_and_summary(in_tmp_project) -> None:
    from stages import split

    faces = faces_frame()
    faces.loc[0, "status"] = "dropped"
    (in_tmp_project / "data/faces").mkdir(parents=True)
    faces.to_csv(in_tmp_project / "data/faces/manifest.csv", index=False)
    set_params(in_tmp_project / "params.yaml", "split", seed=5)
    split.main()
    parts = {s: read_csv(in_tmp_project / f"data/splits/{s}.csv") for s in SPLITS}
    ids = [i for p in parts.values() for i in p["id"]]
    assert len(ids) == len(set(ids)) == len(faces) - 1  # the dropped face is not split
    assert faces.loc[0, "id"] not in ids
    summary = json.loads((in_tmp_project / "data/splits/summary.json").read_text())
    assert summary["groups_crossing_splits"] == 0
    assert sum(summary["total"].values()) == len(ids)
    assert summary["counts"]["test"]["fake"]["gen_a"] == int((parts["test"]["generator"] == "gen_a").sum())
