"""decode_rgb on high-bit-depth images: 16-bit / 32-bit / float greyscale is scaled to 8 bits, not clipped."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from core.images import ImageDecodeError, decode_rgb
from core.params import DataParams
from sources import folder as source_folder
from sources.rawset import check_image

SIDE = 96


def _gradient16() -> np.ndarray:
    """A left-to-right 16-bit ramp 0..65535, the same on every row."""
    return np.tile(np.linspace(0, 65535, SIDE).round().astype(np.uint16), (SIDE, 1))


def _save(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot create 48-bit RGB): grey (H, W) or RGB (H, W, 3)."""
    colour_type = 0 if pixels.ndim == 2 else 2
    height, width = pixels.shape[:2]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _cases() -> dict[str, tuple[bytes, str]]:
    g = _gradient16()
    return {
        "png_I;16": (_save(Image.frombytes("I;16", (SIDE, SIDE), g.astype("<u2").tobytes()), "PNG"), "I;16"),
        "tiff_I;16B": (_save(Image.frombytes("I;16B", (SIDE, SIDE), g.astype(">u2").tobytes()), "TIFF"), "I;16B"),
        "tiff_F_0_1": (_save(Image.fromarray(g.astype(np.float32) / 65535), "TIFF"), "F"),
        "tiff_I_wide": (_save(Image.fromarray(g.astype(np.int32) * 1000 - 70000), "TIFF"), "I"),
        "png_rgb16": (png16(np.stack([g, g, g], axis=-1)), "RGB"),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_high_bit_depth_decodes_to_a_gradient_not_white(name: str) -> None:
    data, mode = _cases()[name]
    decoded = decode_rgb(data)
    assert decoded.mode == mode
    pixels = np.asarray(decoded.image)
    assert decoded.image.mode == "RGB" and pixels.shape == (SIDE, SIDE, 3)
    row = pixels[SIDE // 2, :, 0].astype(int)
    assert row[0] <= 1 and row[-1] >= 254  # the full range, black to white
    assert np.all(np.diff(row) >= 0) and len(set(row.tolist())) > SIDE // 2  # a ramp, not a flat image
    assert abs(pixels.mean() - 127.5) < 3  # clipping would make it nearly all white (mean ~ 254)
    assert (pixels[..., 0] == pixels[..., 2]).all()


def test_16_bit_values_map_by_257() -> None:
    g = _gradient16()
    decoded = decode_rgb(_save(Image.frombytes("I;16", (SIDE, SIDE), g.astype("<u2").tobytes()), "PNG"))
    expected = np.rint(g / 257.0).astype(np.uint8)
    assert np.array_equal(np.asarray(decoded.image)[..., 1], expected)
    assert decoded.note == "I;16->RGB (16-bit scaled to 8 bits)"


def test_raw_check_marks_16_bit_as_converted_with_the_scaling() -> None:
    data, _ = _cases()["png_I;16"]
    verdict = check_image(data, ".png", min_side=64)
    assert verdict.status == "converted" and verdict.mode == "I;16"
    assert verdict.reason == "I;16->RGB (16-bit scaled to 8 bits) at decode"
    assert (verdict.width, verdict.height) == (SIDE, SIDE)


def test_float_image_without_finite_values_is_a_decode_error() -> None:
    data = _save(Image.fromarray(np.full((SIDE, SIDE), np.nan, dtype=np.float32)), "TIFF")
    with pytest.raises(ImageDecodeError, match="no finite pixel values"):
        decode_rgb(data)
    verdict = check_image(data, ".tif", min_side=8)
    assert verdict.status == "skipped" and "no finite pixel values" in verdict.reason


def test_folder_source_keeps_a_16_bit_png_as_converted(tmp_path: Path) -> None:
    col = tmp_path / "col"
    (col / "real").mkdir(parents=True)
    (col / "fake" / "g").mkdir(parents=True)
    (col / "real" / "deep.png").write_bytes(_cases()["png_I;16"][0])
    (col / "fake" / "g" / "deep16.tif").write_bytes(_cases()["tiff_I;16B"][0])
    rows = pd.DataFrame(
        source_folder.collect(DataParams(source=f"folder:{col}", per_source="all"), tmp_path / "images")
    )
    assert (rows["status"] == "converted").all()
    assert set(rows["reason"]) == {
        "I;16->RGB (16-bit scaled to 8 bits) at decode",
        "I;16B->RGB (16-bit scaled to 8 bits) at decode",
    }
