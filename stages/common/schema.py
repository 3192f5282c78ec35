"""Column names of the manifests that stages hand to each other."""
from __future__ import annotations

LABELS = ("real", "fake")
REAL_GENERATOR = "real"  # the generator column of a real image

# data/raw/manifest.csv — one row per file found, skipped files included
RAW_COLUMNS = [
    "id", "path", "label", "generator", "source", "group", "predefined_split",
    "width", "height", "bytes", "sha1", "mode", "status", "reason", "origin",
]
RAW_STATUSES = ("ok", "converted", "skipped")

# data/faces/manifest.csv — one row per usable raw image
FACE_COLUMNS = [
    "id", "path", "label", "generator", "source", "group", "predefined_split", "raw_path",
    "box_x1", "box_y1", "box_x2", "box_y2", "prob", "status", "reason",
]
FACE_STATUSES = ("ok", "center", "dropped", "error")
FACE_KEPT = ("ok", "center")

# data/splits/{train,val,test}.csv — kept face rows plus the split name
SPLITS = ("train", "val", "test")
SPLIT_COLUMNS = FACE_COLUMNS + ["split"]
