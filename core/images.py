"""The one decode and encode path every image goes through, real or fake."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

Image.MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs with a clear error


class ImageDecodeError(ValueError):
    """A file that cannot be used as an image; the message is the manifest's reason."""


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # always RGB
    mode: str  # the file's original PIL mode
    note: str  # "" or what was converted, e.g. "CMYK->RGB"


def decode_rgb(source: Path | bytes) -> DecodedImage:
    """Fully decode an image file to RGB, applying its EXIF orientation.

    High-bit-depth single-channel images (``I;16*``, ``I``, ``F``: 16-bit PNG/TIFF greyscale,
    32-bit and float TIFFs) are scaled to 8 bits, not clipped (see ``_to_8bit``); the note says how.
    Raises ImageDecodeError with a short reason for non-images, truncated or corrupt files.
    """
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp) as opened:
            opened.load()
            mode = opened.mode
            im: Image.Image = ImageOps.exif_transpose(opened)
            scaled = ""
            if im.mode in HIGH_DEPTH_MODES:
                im, scaled = _to_8bit(im)
            rgb = _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"corrupt or truncated image ({e})") from None
    note = "" if mode == "RGB" else f"{mode}->RGB"
    if scaled:
        note += f" ({scaled})"
    return DecodedImage(rgb, mode, note)


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _to_8bit(im: Image.Image) -> tuple[Image.Image, str]:
    """An ``L`` image from a high-bit-depth single-channel one (16-bit ints, 32-bit ints, floats),
    scaled to 0..255 instead of clipped (PIL's own ``convert`` clips: a 16-bit photo turns white).

    16-bit modes: value / 257 (so 65535 -> 255). ``I``/``F``: by the values' actual range, read as
    8-bit (0..255), 16-bit (0..65535), float 0..1, or else stretched from [min, max]. Returns the
    image and a note of what was done. Raises ImageDecodeError when no pixel value is finite.
    """
    values = np.asarray(im).astype(np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        raise ImageDecodeError(f"no finite pixel values (mode {im.mode})")
    values = np.where(finite, values, 0.0)
    lo, hi = float(values.min()), float(values.max())
    if im.mode.startswith("I;16"):
        scale, note = 65535.0, "16-bit scaled to 8 bits"
    elif lo >= 0 and hi <= 1 and im.mode == "F":
        scale, note = 1.0, "float 0..1 scaled to 8 bits"
    elif lo >= 0 and hi <= 255:
        scale, note = 255.0, "8-bit values"
    elif lo >= 0 and hi <= 65535:
        scale, note = 65535.0, "16-bit values scaled to 8 bits"
    else:
        span = hi - lo if hi > lo else 1.0
        values, scale, note = values - lo, span, f"values {lo:g}..{hi:g} stretched to 8 bits"
    pixels = np.clip(np.rint(values * (255.0 / scale)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels), note  # 2-D uint8: mode L


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return im.convert("RGB")


def encode(image: Image.Image, encoding: str, jpeg_quality: int = 95) -> bytes:
    """Encode RGB pixels the same way for every image (so the file format carries no label)."""
    buf = io.BytesIO()
    if encoding == "png":
        # zlib level 1: the same pixels, files ~5% larger, encoding ~2.5x faster (it was an eighth of the faces
        # stage's CPU time at level 6)
        image.save(buf, format="PNG", optimize=False, compress_level=1)
    elif encoding == "jpeg":
        image.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0, optimize=False)
    else:
        raise ValueError(f"unknown encoding {encoding!r}; allowed: 'png', 'jpeg'")
    return buf.getvalue()


def extension(encoding: str) -> str:
    return {"png": ".png", "jpeg": ".jpg"}[encoding]


def square_pixels(image: Image.Image, size: int) -> np.ndarray:
    """(3, size, size) uint8 pixels of an RGB crop, resized (bicubic) only when its side differs.

    The one resize path from stored face crops to network input, for training, evaluation,
    prediction and the generators.
    """
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1))
