"""``data.source: synthetic`` — a small deterministic face set for the demo and the tests.

Each identity is a drawn, face-like portrait (skin-toned head, eyes with irises and pupils,
eyebrows, shaded nose, lips, hair, ears, neck and shoulders on a varied background), varied per
identity by a seeded RNG and drawn so that MTCNN finds the face. Each identity gets one real
image and one fake per generator, each fake being the real image with one kind of artefact:

* ``gen_blur``: the face region smoothed (detail lost, like an over-smoothed generator);
* ``gen_checker``: a faint periodic 2x2 checkerboard in the face (an upsampling artefact);
* ``gen_color``: a colour shift plus 8x8 blockiness in the face (colour/compression artefact).

All images of an identity share the group ``synthetic/<identity>``. ``bad_files`` writes the kinds
of broken or unusual files a real collection contains, for the tests.
"""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from core.params import DataParams
from sources.rawset import RawItem, store_all

SOURCE = "synthetic"
GENERATORS = ("gen_blur", "gen_checker", "gen_color")
SUPERSAMPLE = 3  # draw at 3x and downsample: anti-aliased edges look more like a photo
JPEG_QUALITY = 95


@dataclass(frozen=True)
class Face:
    """Where the face is in the image (pixels), so artefacts can target it."""

    cx: float
    cy: float
    rx: float
    ry: float


def _rgb(rng: random.Random, base: tuple[int, int, int], spread: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.randint(-spread, spread), 0, 255)) for c in base)  # type: ignore[return-value]


def _scale(c: tuple[int, int, int], f: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(v * f, 0, 255)) for v in c)  # type: ignore[return-value]


SKIN_TONES = ((236, 200, 170), (224, 172, 138), (198, 140, 104), (160, 110, 80), (110, 74, 52), (241, 210, 185))
HAIR_COLOURS = ((30, 22, 18), (60, 40, 25), (110, 75, 40), (170, 130, 80), (90, 90, 90), (20, 20, 20))
IRIS_COLOURS = ((70, 45, 25), (40, 80, 120), (60, 100, 60), (90, 70, 40))


def _luma(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _background(rng: random.Random, s: int, skin: tuple[int, int, int]) -> np.ndarray:
    """A vertical two-colour gradient whose brightness stays clear of the skin's."""
    cols = []
    for _ in range(2):
        c = _rgb(rng, (140, 140, 150), 80)
        if abs(_luma(c) - _luma(skin)) < 50:  # push away from the skin brightness
            c = _scale(c, 0.45) if _luma(skin) > 120 else _scale(c, 1.6)
        cols.append(np.array(c, dtype=np.float32))
    t = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
    return np.broadcast_to(cols[0] * (1 - t) + cols[1] * t, (s, s, 3)).copy()


def _bump(xx: np.ndarray, yy: np.ndarray, x: float, y: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-0.5 * (((xx - x) / sx) ** 2 + ((yy - y) / sy) ** 2))


def _shading(
    s: int,
    cx: float,
    cy: float,
    rx: float,
    ry: float,
    eyes: list[tuple[float, float]],
    nose_y: float,
    eye_y: float,
    light: tuple[float, float],
) -> np.ndarray:
    """Lambertian shading of a head-shaped height field (ellipsoid + nose, sockets, cheeks, chin)."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    u, v = (xx - cx) / rx, (yy - cy) / ry
    z = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, 1.0))
    z += 0.30 * _bump(xx, yy, cx, (eye_y + nose_y) / 2, rx * 0.10, ry * 0.22)  # nose ridge
    z += 0.15 * _bump(xx, yy, cx, nose_y, rx * 0.16, ry * 0.07)  # nose tip
    for ex, ey in eyes:
        z -= 0.16 * _bump(xx, yy, ex, ey, rx * 0.22, ry * 0.10)  # eye sockets
        z += 0.06 * _bump(xx, yy, ex, ey + ry * 0.30, rx * 0.25, ry * 0.12)  # cheekbones
    z -= 0.06 * _bump(xx, yy, cx, cy + ry * 0.72, rx * 0.35, ry * 0.05)  # under the lip
    gy, gx = np.gradient(z)
    nx, ny = np.clip(-gx * rx, -4, 4), np.clip(-gy * ry, -4, 4)
    norm = np.sqrt(nx * nx + ny * ny + 1.0)
    lx, ly = light
    lz = 1.0
    ln = np.sqrt(lx * lx + ly * ly + lz * lz)
    lambert = np.clip((nx * lx + ny * ly + lz) / (norm * ln), 0.0, 1.0)
    return 0.35 + 0.75 * lambert


def draw_face(rng: random.Random) -> tuple[Image.Image, Face]:
    """One portrait; every size, colour and position comes from ``rng``."""
    side = rng.choice((160, 192, 224, 256))
    s = side * SUPERSAMPLE
    skin = _rgb(rng, rng.choice(SKIN_TONES), 12)
    hair = _rgb(rng, rng.choice(HAIR_COLOURS), 10)
    cx = s * rng.uniform(0.46, 0.54)
    cy = s * rng.uniform(0.46, 0.52)
    rx = s * rng.uniform(0.20, 0.24)
    ry = rx * rng.uniform(1.25, 1.38)
    eye_y = cy - ry * rng.uniform(0.02, 0.10)
    eye_dx = rx * rng.uniform(0.38, 0.45)
    nose_y = cy + ry * rng.uniform(0.24, 0.30)
    mouth_y = cy + ry * rng.uniform(0.50, 0.58)
    light = (rng.uniform(-0.6, 0.6), rng.uniform(-0.5, -0.1))

    img = Image.fromarray(_background(rng, s, skin).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    cloth = _rgb(rng, (80, 80, 110), 60)
    d.ellipse([cx - rx * 2.4, cy + ry * 1.05, cx + rx * 2.4, cy + ry * 3.2], fill=cloth)
    if rng.random() < 0.4:  # long hair behind the head
        d.ellipse([cx - rx * 1.25, cy - ry * 1.2, cx + rx * 1.25, cy + ry * 1.1], fill=hair)

    # skin: head, ears and neck, Lambert-shaded
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    md.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    for sgn in (-1, 1):
        ex = cx + sgn * rx * 0.98
        md.ellipse([ex - rx * 0.14, cy - ry * 0.12, ex + rx * 0.14, cy + ry * 0.22], fill=255)
    neck = Image.new("L", (s, s), 0)
    ImageDraw.Draw(neck).rectangle([cx - rx * 0.45, cy + ry * 0.5, cx + rx * 0.45, cy + ry * 1.25], fill=255)
    eyes = [(cx - eye_dx, eye_y), (cx + eye_dx, eye_y)]
    shade = _shading(s, cx, cy, rx, ry, eyes, nose_y, eye_y, light)
    skin_arr = np.array(skin, dtype=np.float32)[None, None] * shade[..., None]
    neck_arr = np.array(skin, dtype=np.float32)[None, None] * 0.62 * np.ones_like(shade)[..., None]
    img.paste(Image.fromarray(np.clip(neck_arr, 0, 255).astype(np.uint8)), mask=neck)
    img.paste(Image.fromarray(np.clip(skin_arr, 0, 255).astype(np.uint8)), mask=mask)
    d = ImageDraw.Draw(img)

    # hair cap over the forehead
    d.chord(
        [cx - rx * 1.08, cy - ry * 1.12, cx + rx * 1.08, cy - ry * 0.05 + ry * rng.uniform(-0.15, 0.05)],
        180,
        360,
        fill=hair,
    )

    eye_w, eye_h = rx * rng.uniform(0.22, 0.27), ry * rng.uniform(0.075, 0.095)
    iris = _rgb(rng, rng.choice(IRIS_COLOURS), 15)
    brow = _scale(hair, 0.7)
    for sgn, (ex, ey) in zip((-1, 1), eyes):
        d.ellipse([ex - eye_w, ey - eye_h, ex + eye_w, ey + eye_h], fill=(235, 232, 225))
        ir = eye_h * 0.95
        d.ellipse([ex - ir, ey - ir, ex + ir, ey + ir], fill=iris)
        pr = ir * 0.5
        d.ellipse([ex - pr, ey - pr, ex + pr, ey + pr], fill=(10, 10, 10))
        hl = pr * 0.4
        d.ellipse([ex + pr * 0.2, ey - pr * 0.8, ex + pr * 0.2 + hl * 2, ey - pr * 0.8 + hl * 2], fill=(255, 255, 255))
        d.arc(
            [ex - eye_w, ey - eye_h * 1.2, ex + eye_w, ey + eye_h],
            180,
            360,
            fill=(30, 22, 22),
            width=max(2, int(eye_h * 0.35)),
        )
        by = ey - eye_h * rng.uniform(2.6, 3.2)
        d.line(
            [ex - sgn * eye_w * 1.1, by + eye_h * 0.5, ex, by - eye_h * 0.2, ex + sgn * eye_w * 1.2, by + eye_h * 0.3],
            fill=brow,
            width=max(3, int(eye_h * 0.9)),
            joint="curve",
        )

    nose_w = rx * rng.uniform(0.16, 0.22)
    for sgn in (-1, 1):
        nx = cx + sgn * nose_w * 0.45
        d.ellipse(
            [nx - nose_w * 0.22, nose_y - nose_w * 0.05, nx + nose_w * 0.22, nose_y + nose_w * 0.22],
            fill=_scale(skin, 0.45),
        )

    mouth_w = rx * rng.uniform(0.36, 0.48)
    lip = _rgb(rng, (175, 85, 85), 20)
    if _luma(skin) < 120:
        lip = _scale(_rgb(rng, (150, 80, 75), 15), 0.85)
    d.chord([cx - mouth_w, mouth_y - ry * 0.07, cx + mouth_w, mouth_y + ry * 0.03], 180, 360, fill=_scale(lip, 0.8))
    d.chord([cx - mouth_w * 0.9, mouth_y - ry * 0.05, cx + mouth_w * 0.9, mouth_y + ry * 0.09], 0, 180, fill=lip)
    d.line(
        [cx - mouth_w * 0.95, mouth_y, cx + mouth_w * 0.95, mouth_y],
        fill=_scale(lip, 0.4),
        width=max(2, int(ry * 0.02)),
    )

    small = img.resize((side, side), Image.Resampling.LANCZOS)
    arr = np.asarray(small).astype(np.float32)
    nrng = np.random.default_rng(rng.getrandbits(32))
    arr += nrng.normal(0, 3.0, arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(0.6))
    f = SUPERSAMPLE
    return out, Face(cx / f, cy / f, rx / f, ry / f)


def _face_mask(size: tuple[int, int], face: Face) -> np.ndarray:
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    return (((xx - face.cx) / face.rx) ** 2 + ((yy - face.cy) / face.ry) ** 2) <= 1.0


def _in_face(real: Image.Image, changed: Image.Image, face: Face) -> Image.Image:
    mask = Image.fromarray((_face_mask(real.size, face) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    return Image.composite(changed, real, mask)


def gen_blur(real: Image.Image, face: Face, rng: random.Random) -> Image.Image:
    return _in_face(real, real.filter(ImageFilter.GaussianBlur(rng.uniform(1.4, 2.0))), face)


def gen_checker(real: Image.Image, face: Face, rng: random.Random) -> Image.Image:
    arr = np.asarray(real).astype(np.float32)
    yy, xx = np.mgrid[0 : real.height, 0 : real.width]
    pattern = np.where((xx // 2 + yy // 2) % 2 == 0, 1.0, -1.0)[..., None] * rng.uniform(5.0, 8.0)
    return _in_face(real, Image.fromarray(np.clip(arr + pattern, 0, 255).astype(np.uint8)), face)


def gen_color(real: Image.Image, face: Face, rng: random.Random) -> Image.Image:
    arr = np.asarray(real).astype(np.float32)
    shift = np.array([rng.uniform(8, 16), rng.uniform(-6, 2), rng.uniform(-16, -8)], dtype=np.float32)
    shifted = Image.fromarray(np.clip(arr + shift, 0, 255).astype(np.uint8))
    w, h = real.size
    blocky = shifted.resize((w // 8, h // 8), Image.Resampling.BOX).resize((w, h), Image.Resampling.NEAREST)
    mixed = Image.blend(shifted, blocky, 0.35)
    return _in_face(real, mixed, face)


ARTEFACTS: dict[str, Callable[[Image.Image, Face, random.Random], Image.Image]] = {
    "gen_blur": gen_blur,
    "gen_checker": gen_checker,
    "gen_color": gen_color,
}


def jpeg_bytes(image: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def identity_images(seed: int, identity: int) -> dict[str, bytes]:
    """``{"real": jpeg, "gen_blur": jpeg, ...}`` for one identity (deterministic)."""
    rng = random.Random(f"{SOURCE}/{seed}/{identity}")
    real, face = draw_face(rng)
    out = {"real": jpeg_bytes(real)}
    for name in GENERATORS:
        out[name] = jpeg_bytes(ARTEFACTS[name](real, face, random.Random(f"{SOURCE}/{seed}/{identity}/{name}")))
    return out


def synthetic_items(identities: int) -> list[RawItem]:
    items = []
    for i in range(identities):
        for generator in ("real", *GENERATORS):
            key = f"{SOURCE}/{i:05d}/{generator}"
            items.append(
                RawItem(
                    key=key,
                    label="real" if generator == "real" else "fake",
                    generator=generator,
                    source=SOURCE,
                    group=f"{SOURCE}/{i:05d}",
                    origin=key,
                    ext=".jpg",
                )
            )
    return items


class _Generated:
    """Thread-safe: each identity is drawn once and kept until all its images were handed out."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._lock = threading.Lock()
        self._locks: dict[int, threading.Lock] = {}
        self._images: dict[int, dict[str, bytes]] = {}
        self._handed: dict[int, int] = {}

    def fetch(self, item: RawItem) -> bytes:
        _, number, generator = item.key.split("/")
        identity = int(number)
        with self._lock:
            lock = self._locks.setdefault(identity, threading.Lock())
        with lock:
            if identity not in self._images:
                self._images[identity] = identity_images(self.seed, identity)
            data = self._images[identity][generator]
            self._handed[identity] = self._handed.get(identity, 0) + 1
            if self._handed[identity] == 1 + len(GENERATORS):
                del self._images[identity]
        return data


def collect(params: DataParams, images_dir: Path) -> list[dict[str, Any]]:
    """Generate ``params.synthetic_identities`` identities x (1 real + 3 fakes) into ``images_dir``."""
    items = synthetic_items(params.synthetic_identities)
    return store_all(items, _Generated(params.seed).fetch, images_dir, params.min_side, params.workers, desc=SOURCE)


# ---- unusual and broken files, for tests of every source ------------------------------------


def _encoded(image: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def bad_files(seed: int = 0) -> dict[str, tuple[bytes, str, str]]:
    """``{file name: (bytes, expected status, expected reason fragment)}`` for the awkward cases."""
    rng = random.Random(f"bad/{seed}")
    face, _ = draw_face(rng)
    good_jpeg = jpeg_bytes(face)
    return {
        "corrupt.jpg": (b"\xff\xd8\xff\xe0" + bytes(rng.getrandbits(8) for _ in range(2000)), "skipped", "corrupt"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "skipped", "truncated"),
        "notes.txt": (b"not an image\n", "skipped", "not an image file"),
        "text_named.jpg": (b"hello, I am text pretending to be a JPEG\n", "skipped", "not an image"),
        "empty.png": (b"", "skipped", "empty file"),
        "tiny.jpg": (jpeg_bytes(face.resize((32, 32))), "skipped", "too small"),
        "cmyk.jpg": (_encoded(face.convert("CMYK"), "JPEG", quality=90), "converted", "CMYK->RGB at decode"),
        "gray.png": (_encoded(face.convert("L"), "PNG"), "converted", "L->RGB at decode"),
        "rgba.png": (_encoded(face.convert("RGBA"), "PNG"), "converted", "RGBA->RGB at decode"),
        "palette.png": (
            _encoded(face.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
            "converted",
            "P->RGB at decode",
        ),
    }


def write_bad_files(folder: Path, seed: int = 0) -> dict[str, tuple[str, str]]:
    """Write ``bad_files`` into ``folder``; return ``{name: (expected status, reason fragment)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for name, (data, status, reason) in bad_files(seed).items():
        (folder / name).write_bytes(data)
        expected[name] = (status, reason)
    return expected
