"""``faces.grayscale``: keep grey photos from carrying the label.

In DeepFakeFace about 10% of the real photos are greyscale and no fake is, so "no colour" alone
says "real". The faces stage records for every crop whether it is grey (``grayscale: raw``); this
module then decides, per source, which crops to change so that every class (real, and each fake
generator) has the same share of grey crops:

* ``match`` (default): the classes with fewer grey crops get grey copies (``grayscale: matched``)
  until their share equals the greyest class's. Crops in a group that already holds a grey image of
  the other label go first (DFF: the fakes made from a grey real photo at the same path), then
  the rest in a fixed pseudo-random order (a hash of the image id), so the choice is reproducible.
* ``drop``: grey crops are dropped, with the reason recorded.
* ``keep``: nothing changes (the crop audit in ``evaluate`` then shows the cue, if any).
"""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from core.images import decode_rgb, encode
from core.io import stable_hash
from core.schema import FACE_KEPT

DROP_REASON = "greyscale image (faces.grayscale: drop)"


def _class_of(frame: pd.DataFrame) -> pd.Series:
    return frame["label"].where(frame["label"] == "real", "fake/" + frame["generator"].astype(str))


def _order(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=lambda i: stable_hash(f"grayscale/{i}", 16))


def rows_to_gray(faces: pd.DataFrame) -> list[int]:
    """Index labels of the kept colour crops to turn grey so each class of a source has the same grey share."""
    kept = faces[faces["status"].isin(FACE_KEPT)]
    chosen: list[int] = []
    for _, source in kept.groupby("source", sort=True):
        classes = _class_of(source)
        gray = source["grayscale"] == "raw"
        shares = gray.groupby(classes).mean()
        target = float(shares.max())
        if target == 0.0:
            continue
        for cls in sorted(shares.index):
            members = source[classes == cls]
            need = round(target * len(members)) - int(gray[classes == cls].sum())
            if need <= 0:
                continue
            other_label_gray_groups = set(source.loc[gray & (source["label"] != members["label"].iloc[0]), "group"])
            colour = members[~gray[classes == cls]]
            paired = colour[colour["group"].isin(other_label_gray_groups)]
            rest = colour[~colour["group"].isin(other_label_gray_groups)]
            by_id = {row_id: idx for idx, row_id in zip(colour.index, colour["id"])}
            ranked = _order(paired["id"]) + _order(rest["id"])
            chosen.extend(by_id[i] for i in ranked[:need])
    return sorted(chosen)


def apply_policy(faces: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The faces manifest after the grayscale policy (rows to make grey get ``grayscale: matched``)."""
    out = faces.copy()
    if mode == "match":
        out.loc[rows_to_gray(out), "grayscale"] = "matched"
    elif mode == "drop":
        gray = out["status"].isin(FACE_KEPT) & (out["grayscale"] == "raw")
        out.loc[gray, ["status", "reason", "path"]] = ["dropped", DROP_REASON, ""]
    return out


def gray_copy(crop: bytes, encoding: str, jpeg_quality: int) -> bytes:
    """The crop's luma as an RGB image, encoded like every other crop."""
    image = decode_rgb(crop).image.convert("L").convert("RGB")
    return encode(image, encoding, jpeg_quality)


def views_after_policy(views: pd.DataFrame, faces: pd.DataFrame) -> pd.DataFrame:
    """A face's training views follow its crop: grey where the crop was made grey, dropped where it was."""
    out = views.copy()
    state = dict(zip(faces["id"], zip(faces["status"], faces["grayscale"], faces["reason"])))
    kept = out["status"].isin(FACE_KEPT)
    matched = kept & out["id"].map(lambda i: state[i][1] == "matched")
    out.loc[matched, "grayscale"] = "matched"
    dropped = kept & out["id"].map(lambda i: state[i][0] not in FACE_KEPT)
    out.loc[dropped, "status"] = "dropped"
    out.loc[dropped, "reason"] = out.loc[dropped, "id"].map(lambda i: state[i][2])
    out.loc[dropped, "path"] = ""
    return out
