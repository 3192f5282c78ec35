"""Column names and values of the manifests that stages hand to each other."""

from __future__ import annotations

REAL, FAKE = "real", "fake"  # the label column's values (classifier target 0 and 1)
LABELS = (REAL, FAKE)
REAL_GENERATOR = "real"  # the generator column of a real image

# file suffixes read as images: by the download sources (anything else is never read) and by predict
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})

# data/raw/manifest.csv — one row per file found, skipped files included
RAW_COLUMNS = [
    "id",
    "path",
    "label",
    "generator",
    "source",
    "group",
    "predefined_split",
    "width",
    "height",
    "bytes",
    "sha1",
    "mode",
    "status",
    "reason",
    "origin",
]
RAW_STATUSES = ("ok", "converted", "skipped")

# data/faces/manifest.csv — one row per usable raw image. box_*: the detected face, crop_*: the square
# actually cut (both in raw pixels); margin_used: the margin that square gives the face, which can be
# below faces.margin where the image is too small; grayscale: no | raw (the photo itself is grey) |
# matched (made grey by faces.grayscale: match).
FACE_COLUMNS = [
    "id",
    "path",
    "label",
    "generator",
    "source",
    "group",
    "predefined_split",
    "raw_path",
    "raw_width",
    "raw_height",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
    "prob",
    "crop_x1",
    "crop_y1",
    "crop_x2",
    "crop_y2",
    "margin_used",
    "grayscale",
    "status",
    "reason",
]
GRAYSCALE_VALUES = ("no", "raw", "matched")

# data/faces/views.csv — training views of each kept face (the photo framed tighter, cropped the same way)
VIEW_COLUMNS = ["id", "view", "path", "status", "reason", "margin_used", "grayscale"]
FACE_STATUSES = ("ok", "center", "dropped", "error")
FACE_KEPT = ("ok", "center")

# data/splits/{train,val,test}.csv — kept face rows plus the split name
SPLITS = ("train", "val", "calib", "test")  # calib: conformal calibration only (evaluate)
SPLIT_COLUMNS = FACE_COLUMNS + ["split"]
