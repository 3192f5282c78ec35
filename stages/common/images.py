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
    mode: str           # the file's original PIL mode
    note: str           # "" or what was converted, e.g. "CMYK->RGB"


def decode_rgb(source: Path | bytes) -> DecodedImage:
    """Fully decode an image file to RGB, applying its EXIF orientation.

    Raises ImageDecodeError with a short reason for non-images, truncated or corrupt files.
    """
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp) as im:
            im.load()
            mode = im.mode
            im = ImageOps.exif_transpose(im)
            rgb = _to_rgb(im)
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"corrupt or truncated image ({e})") from None
    note = "" if mode == "RGB" else f"{mode}->RGB"
    return DecodedImage(rgb, mode, note)


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
        image.save(buf, format="PNG", optimize=False, compress_level=6)
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

