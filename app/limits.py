"""What one request may bring: upload size, pixels per image, files per request; safe zip extraction."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image

from core.errors import InputError
from core.schema import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class AppLimits:
    max_upload_mb: int = 50  # per uploaded file (Gradio refuses larger ones before they reach the app)
    max_pixels: int = 40_000_000  # width x height of one image; larger ones are reported, never decoded
    max_files: int = 200  # images per request, zip members included
    concurrency: int = 2  # requests of one kind processed at once; the rest wait in the queue
    queue_size: int = 32  # waiting requests beyond which new ones are refused

    def __post_init__(self) -> None:
        for name in ("max_upload_mb", "max_pixels", "max_files", "concurrency", "queue_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def pixel_count(path: Path) -> int | None:
    """Width x height from the image header (nothing decoded); None when the header is unreadable."""
    try:
        with Image.open(path) as image:
            return image.width * image.height
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The image members of ``archive``; a member whose path leaves the archive's folder is refused."""
    members = []
    for info in archive.infolist():
        name = PurePosixPath(info.filename.replace("\\", "/"))
        if name.is_absolute() or ".." in name.parts or (name.parts and name.parts[0].endswith(":")):
            raise InputError(f"zip member {info.filename!r} points outside the archive", "upload a plain zip of images")
        if info.is_dir() or name.name.startswith(".") or name.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        members.append(info)
    return members


def extract_zip(path: Path, dest: Path, limits: AppLimits) -> list[Path]:
    """The image files of the zip at ``path``, extracted under ``dest`` (a folder of the app's own)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{path.name}: not a readable zip ({e})") from None
    with archive:
        members = safe_members(archive)
        if len(members) > limits.max_files:
            raise InputError(f"{path.name} holds {len(members)} images; the app takes {limits.max_files} per request")
        total = sum(m.file_size for m in members)
        if total > limits.max_upload_bytes * 4:  # a zip bomb unpacks to far more than it weighs
            raise InputError(
                f"{path.name} unpacks to {total / 2**20:.0f} MB; the app takes up to "
                f"{limits.max_upload_mb * 4} MB unpacked"
            )
        root = dest.resolve()
        out = []
        for info in members:
            target = (root / info.filename).resolve()
            if not target.is_relative_to(root):  # the check above, once more on the resolved path
                raise InputError(f"zip member {info.filename!r} points outside the archive")
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src:
                target.write_bytes(src.read(limits.max_upload_bytes * 4 + 1))
            out.append(target)
    return out
