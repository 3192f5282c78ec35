"""Write N generated face images (PNG) from a trained generator's EMA weights.

    python -m stages.sample --n 64 --out samples/ [--checkpoint results/generator/model.pt] [--seed 0]

The same seed gives the same images. ``--out`` must not exist or be empty unless ``--force`` is
given (then it is replaced as a whole, atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from core.device import DEVICE_CHOICES, pick_device
from core.errors import ArgumentParser, positive_int, run_cli
from core.io import atomic_output_dir, atomic_write_bytes
from generator.sampling import generate, load_generator, png_bytes

DEFAULT_CHECKPOINT = Path("results/generator/model.pt")
EPILOG = (
    "Reads no params block: image size and latent size come from the checkpoint. Writes --out/sample_*.png.\n"
    "A problem you can fix is one line on stderr and exit code 2."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = ArgumentParser("sample", __doc__, EPILOG)
    ap.add_argument("--n", type=positive_int, required=True, help="number of images to write (>= 1)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (created)")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help=f"default {DEFAULT_CHECKPOINT}")
    ap.add_argument("--seed", type=int, default=0, help="latent noise seed (default 0)")
    ap.add_argument("--batch-size", type=positive_int, default=64, help="(>= 1, default %(default)s)")
    ap.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} exists and is not a directory")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.force:
        ap.error(f"--out {args.out} is not empty; pass --force to replace it")
    return args


def write_samples(
    checkpoint: Path, n: int, out: Path, seed: int = 0, batch_size: int = 64, device: str = "auto"
) -> list[Path]:
    dev = pick_device(device)
    net, arch, _ = load_generator(checkpoint, dev)
    images = generate(net, n, arch.noise_dim, seed, batch_size, dev)
    width = max(5, len(str(n - 1)))
    with atomic_output_dir(out) as tmp:
        for i, image in enumerate(tqdm(images, desc="writing samples", unit="img", leave=False)):
            atomic_write_bytes(tmp / f"sample_{i:0{width}d}.png", png_bytes(image))
    return sorted(out.glob("sample_*.png"))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    files = write_samples(args.checkpoint, args.n, args.out, args.seed, args.batch_size, args.device)
    print(f"wrote {len(files)} images to {args.out} (checkpoint {args.checkpoint}, seed {args.seed})")


if __name__ == "__main__":
    run_cli("sample", main)
