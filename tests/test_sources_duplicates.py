"""Identical bytes: one group across every copy (transitively); conflicting labels skip every copy."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd

from core.io import read_csv
from sources.rawset import CONFLICT_REASON, merge_duplicates
from tests.helpers import noise_jpeg, set_params, write_file


def _row(name: str, label: str, group: str, sha1: str, status: str = "ok") -> dict[str, Any]:
    return {
        "id": name,
        "path": f"data/raw/images/{name}.jpg" if status != "skipped" else "",
        "label": label,
        "generator": "real" if label == "real" else "g",
        "source": "s",
        "group": group,
        "predefined_split": "",
        "width": 80,
        "height": 80,
        "bytes": 10,
        "sha1": sha1,
        "mode": "RGB",
        "status": status,
        "reason": "",
        "origin": f"col/{name}.jpg",
    }


def test_merge_is_transitive_order_independent_and_skips_conflicts(tmp_path: Path) -> None:
    rows = [
        _row("a", "real", "G5", "s1"),
        _row("b", "real", "G2", "s1"),  # a = b: G5 + G2
        _row("c", "real", "G2", "s2"),
        _row("d", "real", "G9", "s2"),  # c = d: G2 + G9 -> a, b, c, d one group
        _row("e", "real", "G7", "s3"),
        _row("f", "fake", "G8", "s3"),  # e = f, real vs fake: both skipped
        _row("g", "fake", "G3", "s4"),  # unique: untouched
        _row("h", "fake", "G4", "s5", status="skipped"),  # skipped rows never merge
        _row("i", "fake", "G6", "s5"),
    ]
    images = tmp_path / "images"
    images.mkdir()
    for r in rows:
        if r["path"]:
            (images / Path(r["path"]).name).write_bytes(b"x")
    out, stats = merge_duplicates(rows, images)
    by = {r["id"]: r for r in out}
    assert {by[k]["group"] for k in "abcd"} == {"G2"}  # the smallest id of the merged groups
    assert by["g"]["group"] == "G3" and by["i"]["group"] == "G6" and by["h"]["group"] == "G4"
    for k, other in (("e", "col/f.jpg"), ("f", "col/e.jpg")):
        assert by[k]["status"] == "skipped" and by[k]["path"] == ""
        assert by[k]["reason"] == f"{CONFLICT_REASON} (also {other})"
        assert not (images / f"{k}.jpg").exists()
    assert (images / "a.jpg").exists() and (images / "b.jpg").exists()  # same-label copies are both kept
    assert stats.conflict_skips == 2 and stats.groups_merged == 3  # G5, G9 and G8 (or G7) absorbed
    assert stats.sha1_sets == 2
    assert rows[0]["group"] == "G5"  # the input is not modified

    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    again, _ = merge_duplicates(shuffled, images)
    assert {r["id"]: r["group"] for r in again} == {r["id"]: r["group"] for r in out}


def test_three_copies_with_conflict_name_the_others(tmp_path: Path) -> None:
    rows = [_row("a", "real", "A", "s"), _row("b", "fake", "B", "s"), _row("c", "fake", "C", "s")]
    out, stats = merge_duplicates(rows, tmp_path)
    assert all(r["status"] == "skipped" for r in out) and stats.conflict_skips == 3
    assert out[0]["reason"] == f"{CONFLICT_REASON} (also col/b.jpg and 1 more)"


def test_download_stage_merges_duplicate_groups_and_counts_them(in_tmp_project: Path) -> None:
    from stages import download

    col = in_tmp_project / "col"
    same, clash = noise_jpeg(1), noise_jpeg(2)
    write_file(col / "real" / "a.jpg", same)
    write_file(col / "real" / "copies" / "a_again.jpg", same)  # same label: kept, one group
    write_file(col / "fake" / "g" / "b.jpg", noise_jpeg(3))
    write_file(col / "fake" / "g" / "b_near.jpg", noise_jpeg(4))  # a near-duplicate of b (manifest group)
    write_file(col / "real" / "b_near_copy.jpg", noise_jpeg(4))
    write_file(col / "real" / "clash.jpg", clash)  # real here ...
    write_file(col / "fake" / "g" / "clash.jpg", clash)  # ... fake there: both skipped
    pd.DataFrame({"file": ["fake/g/b.jpg", "fake/g/b_near.jpg"], "near_dup_group": ["NB", "NB"]}).to_csv(
        col / "manifest.csv", index=False
    )
    set_params(in_tmp_project / "params.yaml", "data", source="folder:col", per_source="all")

    download.main()

    frame = read_csv(Path("data/raw/manifest.csv"))
    group = dict(zip(frame["origin"].str.split("col/").str[1], frame["group"]))
    assert group["real/a.jpg"] == group["real/copies/a_again.jpg"]
    clash = frame[frame["origin"].str.endswith("clash.jpg")]
    assert (clash["status"] == "skipped").all() and clash["reason"].str.startswith(CONFLICT_REASON).all()
    assert set(clash["path"]) == {""}
    # b and b_near share a manifest group; b_near's bytes are also under real/ (a conflict: both skipped),
    # and the groups are merged all the same: b, b_near and b_near_copy end up in one group
    near = frame[frame["origin"].str.contains("b_near")]
    assert (near["status"] == "skipped").all()
    assert group["fake/g/b.jpg"] == group["fake/g/b_near.jpg"] == group["real/b_near_copy.jpg"]
    kept = frame[frame["status"] != "skipped"]
    assert len(list(Path("data/raw/images").iterdir())) == len(kept) == 3
    summary = json.loads(Path("data/raw/summary.json").read_text())
    assert summary["conflicting_label_skips"] == 4
    assert summary["duplicate_sha1_files"] == 2 and summary["duplicate_sha1_sets"] == 1
    assert summary["duplicate_groups_merged"] == 3  # a_again, clash (one side), b_near_copy
    assert summary["reasons"][CONFLICT_REASON] == 4
