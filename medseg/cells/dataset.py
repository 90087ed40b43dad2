"""Training pairs from folders (or the synthetic generator), with per-pair checks.

A pair that cannot be used (unreadable, a stack, mask size differs from the image) is skipped
with its reason; training goes on with the rest and the reasons land in the summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cells.io import list_images, normalise, read_image, read_mask
from medseg.cells.weights import instances_from_mask
from medseg.errors import InputError, OutputExistsError

log = logging.getLogger("medseg.cells")

MASK_TAGS = ("_mask", "_masks", "_labels", "_label", "_gt", "")


def find_pairs(images_dir: str | Path, masks_dir: str | Path) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """Match each image to a mask by name; images without a mask are reported, not fatal."""
    masks = {p.stem: p for p in list_images([masks_dir])}
    pairs, missing = [], []
    for image in list_images([images_dir]):
        mask = next((masks[image.stem + tag] for tag in MASK_TAGS if image.stem + tag in masks), None)
        if mask is None:
            missing.append({"image": str(image), "error": "no mask with a matching name"})
        else:
            pairs.append((image, mask))
    return pairs, missing


def load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(normalised 2D image, instance labels); refuses stacks and size mismatches."""
    planes, _ = read_image(image_path, allow_stack=False)
    mask = read_mask(mask_path)
    if mask.shape != planes.shape[1:]:
        raise InputError(f"mask {mask_path.name} is {mask.shape[0]}x{mask.shape[1]} but the image is "
                         f"{planes.shape[1]}x{planes.shape[2]}", path=image_path)
    return normalise(planes[0]), instances_from_mask(mask)


def load_pairs(images_dir: str | Path, masks_dir: str | Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, str]]]:
    pairs, skipped = find_pairs(images_dir, masks_dir)
    loaded = []
    for image_path, mask_path in pairs:
        try:
            loaded.append(load_pair(image_path, mask_path))
        except InputError as exc:
            log.warning("skipping pair: %s", exc)
            skipped.append({"image": str(image_path), "error": str(exc)})
    return loaded, skipped


def train_cli(out_dir: str | Path, *, config, images_dir: str | Path | None = None, masks_dir: str | Path | None = None,
              synthetic: int | None = None, device: str = "auto", resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """What ``medseg cells-train`` does: gather pairs, then :func:`medseg.cells.train.train`."""
    from medseg.cells.train import train
    from medseg.engine.runtime import select_device

    out_dir = Path(out_dir)
    if (synthetic is None) == (images_dir is None or masks_dir is None):
        raise InputError("give either --images and --masks, or --synthetic N")
    if not resume and (out_dir / "state.pt").exists() and not overwrite:
        raise OutputExistsError("a training run exists here (use --resume or --overwrite)", path=out_dir)
    skipped: list[dict[str, str]] = []
    if synthetic is not None:
        from medseg.synthetic.cells import synthetic_batch

        pairs = synthetic_batch(config.seed + 1, synthetic)
        config.training_data = (f"SYNTHETIC ONLY: medseg.synthetic.cells seed {config.seed + 1}, {synthetic} images; "
                                "not for clinical use")
    else:
        pairs, skipped = load_pairs(images_dir, masks_dir)
        config.training_data = config.training_data or f"images {images_dir}, masks {masks_dir} ({len(pairs)} pairs)"
    if not pairs:
        reasons = "; ".join(s["error"] for s in skipped[:3])
        raise InputError(f"no usable image/mask pairs{': ' + reasons if reasons else ''}")
    summary = train(pairs, out_dir, config=config, device=select_device(device), resume=resume)
    summary["skipped"] = skipped
    return summary
