"""Regenerate sample_data/cells (a few synthetic images + masks) and the demo weights
medseg/weights/cells/demo_unet2015.safetensors (package data).

    python scripts/make_sample_data_cells.py              # images + demo weights (~8 min, 1 CPU thread)
    python scripts/make_sample_data_cells.py --no-train   # images only

Training data: synthetic seeds 1000..1000+N-1 (TRAIN_SEED=1), validation seed 2, sample
images seed 3; the quality test uses seed 7, which the weights never saw.
The demo weights are a narrow unet2015 (base 8 channels, batch norm) trained on synthetic
images only: NOT for clinical or research use on real data.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "sample_data" / "cells"
TRAIN_SEED, VAL_SEED, SAMPLE_SEED = 1, 2, 3


def write_samples(out: Path) -> None:
    import tifffile

    from medseg.cells.io import to_uint8, write_labels, write_png
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    specs = [
        ("fluo_01", "fluorescence", 256, 256, "png8"),
        ("phase_01", "phase", 256, 256, "png8"),
        ("fluo_02", "fluorescence", 300, 220, "tif16"),
        ("phase_02", "phase", 240, 320, "rgb"),
    ]
    for i, (name, modality, h, w, kind) in enumerate(specs):
        image, labels = synthetic_cells(
            SAMPLE_SEED * 1000 + i, SyntheticCellsConfig(height=h, width=w, modality=modality)
        )
        if kind == "png8":
            write_png(out / "images" / f"{name}.png", to_uint8(image))
        elif kind == "rgb":  # a tinted RGB rendering
            rgb = np.stack([image, image * 0.9, image * 0.7], axis=-1)
            write_png(out / "images" / f"{name}.png", to_uint8(rgb))
        else:
            tifffile.imwrite(out / "images" / f"{name}.tif", (image * 60000 + 500).astype(np.uint16))
        write_labels(out / "masks" / f"{name}_mask.tif", labels)


def train_demo(weights_out: Path, *, minutes: float, count: int) -> None:
    """Train the demo net with the shared trainer; ship its best epoch as float16 (half the size)."""
    import torch

    from medseg.cells.model import CellModelConfig
    from medseg.cells.stain import prepare_plane
    from medseg.cells.train import CellsTrainConfig, train_pairs
    from medseg.engine.checkpoint import load_weights, save_weights
    from medseg.synthetic.cells import synthetic_batch

    def prepared(seed: int, n: int) -> list:
        """Synthetic pairs normalised as cells-segment normalises (fluo / phase alternate)."""
        return [
            (prepare_plane(image, "fluo" if i % 2 == 0 else "phase")[0], labels)
            for i, (image, labels) in enumerate(synthetic_batch(seed, n))
        ]

    torch.set_num_threads(1)
    pairs = prepared(TRAIN_SEED, count)
    val = prepared(VAL_SEED, 2)
    config = CellsTrainConfig(
        model=CellModelConfig(arch="unet2015", base_channels=8, batch_norm=True, dropout=0.1),
        epochs=16,
        steps_per_epoch=40,
        batch_size=4,
        tile=316,
        lr=2e-3,
        seed=TRAIN_SEED,
        max_minutes=minutes,
        training_data=(
            f"SYNTHETIC ONLY: medseg.synthetic.cells seed {TRAIN_SEED} ({count} images 256x256, "
            "fluorescence + phase). Demo weights, not for clinical use."
        ),
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = train_pairs(pairs, tmp, config, val_pairs=val, device="cpu", progress=True)
        state, meta = load_weights(result.best_weights)
        weights_out.parent.mkdir(parents=True, exist_ok=True)
        save_weights(
            weights_out, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, meta
        )
    logging.getLogger("medseg.cells").info(
        "demo weights %s: best validation IoU %.4f at epoch %d of %d",
        weights_out,
        result.best_metric,
        result.best_epoch,
        result.epochs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-train", action="store_true", help="only write the sample images and masks")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--count", type=int, default=24, help="synthetic training images")
    parser.add_argument("--out", type=Path, default=OUT, help="sample images folder")
    parser.add_argument(
        "--weights-out",
        type=Path,
        default=None,
        help="demo weights file (default: the package's medseg/weights/cells/)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    write_samples(args.out)
    if not args.no_train:
        from medseg.cells.model import DEMO_WEIGHTS
        from medseg.engine.weights import demo_weights_path

        train_demo(
            args.weights_out or demo_weights_path(DEMO_WEIGHTS), minutes=args.minutes, count=args.count
        )


if __name__ == "__main__":
    main()
