"""Training pairs from folders (or the synthetic generator), with per-pair checks.

A pair that cannot be used (unreadable, a stack, mask size differs from the image) is skipped
with its reason; training goes on with the rest and the reasons land in the training result.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cells.io import list_images, read_image, read_mask
from medseg.cells.stain import prepare_plane
from medseg.cells.weights import instances_from_mask
from medseg.errors import InputError

log = logging.getLogger("medseg.cells")

MASK_TAGS = ("_mask", "_masks", "_labels", "_label", "_gt", "")
MIN_MEAN_AREA = 4  # px per label: fewer is noise or an image, not cells
MAX_FRAGMENTS = 3  # connected fragments per label: more is an image, not instance labels


def find_pairs(
    images_dir: str | Path, masks_dir: str | Path
) -> tuple[list[tuple[Path, Path]], list[dict[str, str]]]:
    """Match each image to a mask by name; images without a mask are reported, not fatal.

    Images and masks may share one folder (``a.png`` next to ``a_mask.tif``): a file that is another
    image's mask is not an image too, and no file is its own mask (each mask was also trained on as an
    "image" paired with itself before).
    """
    masks = {p.stem: p for p in list_images([masks_dir])}
    images = list_images([images_dir])
    tagged = {
        image: next((masks[image.stem + t] for t in MASK_TAGS if t and image.stem + t in masks), None)
        for image in images
    }
    taken = {m.resolve() for m in tagged.values() if m is not None}
    pairs, missing = [], []
    for image in images:
        if image.resolve() in taken:
            continue
        bare = masks.get(image.stem)
        mask = tagged[image] or (bare if bare is not None and bare.resolve() != image.resolve() else None)
        if mask is None:
            missing.append({"image": str(image), "reason": "no mask with a matching name"})
        else:
            pairs.append((image, mask))
    return pairs, missing


def check_label_mask(mask: np.ndarray, path: Path) -> np.ndarray:
    """Refuse, in words, a mask that cannot be instance labels: empty, or a raw image saved as the mask.

    An instance mask has few labels for its size, each mostly one connected region; a grey image
    passed as the mask has hundreds of values scattered over thousands of fragments (or tiny
    "objects"). Binary masks (one label, many components) are fine: components become instances.
    """
    from skimage.measure import label as connected

    if mask.min(initial=0) < 0:
        raise InputError("mask has negative values: not instance labels", path=path)
    values = np.unique(mask)
    values = values[values > 0]
    if values.size == 0:
        raise InputError("mask is empty (no labelled cells)", path=path)
    if values.size > 2:
        area = (mask > 0).sum()
        if area / values.size < MIN_MEAN_AREA:
            raise InputError(
                f"mask has {values.size} labels for {area} labelled pixels (under {MIN_MEAN_AREA} px per "
                "cell): an image saved as the mask, not instance labels",
                path=path,
            )
        regions = int(connected(mask, background=0, connectivity=2).max())
        if regions > MAX_FRAGMENTS * values.size:
            raise InputError(
                f"mask's {values.size} labels fall into {regions} separate fragments: an image saved as "
                "the mask, not instance labels",
                path=path,
            )
    return mask


def images_stain(
    images_dir: str | Path, *, stain: str = "auto", channel: int | None = None, look: int = 5
) -> str:
    """The stain of a training folder: ``stain`` when given, else the most common ``--stain auto``
    decision over its first ``look`` readable images ("fluo" when none can be read): which shipped
    demo weights ``cells-train --init demo`` starts from."""
    from collections import Counter

    from medseg.cells.stain import detect_stain

    if stain != "auto":
        return stain
    seen: Counter[str] = Counter()
    for path in list_images([images_dir]):
        try:
            planes, _ = read_image(path, allow_stack=False, channel=channel, keep_color=True)
            seen[detect_stain(planes[0], path=path).stain] += 1
        except InputError:
            continue
        if sum(seen.values()) >= look:
            break
    return seen.most_common(1)[0][0] if seen else "fluo"


def load_pair(
    image_path: Path,
    mask_path: Path,
    *,
    stain: str = "auto",
    channel: int | None = None,
    local: bool = True,
    he_plane: str = "hematoxylin",
) -> tuple[np.ndarray, np.ndarray]:
    """(normalised 2D nuclear plane, instance labels); refuses stacks and size mismatches.

    The image goes through the same stain handling and normalisation as at inference.
    """
    planes, _ = read_image(image_path, allow_stack=False, channel=channel, keep_color=True)
    mask = read_mask(mask_path)
    if mask.shape != planes.shape[1:3]:  # RGB planes are (1, H, W, 3): compare the plane's H, W
        raise InputError(
            f"mask {mask_path.name} is {mask.shape[0]}x{mask.shape[1]} but the image is "
            f"{planes.shape[1]}x{planes.shape[2]}",
            path=image_path,
        )
    check_label_mask(mask, mask_path)
    prepared = prepare_plane(planes[0], stain, path=image_path, local=local, he_plane=he_plane)[0]
    return prepared, instances_from_mask(mask)


def load_pairs(
    images_dir: str | Path, masks_dir: str | Path, **options: Any
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[dict[str, str]]]:
    """:func:`load_named_pairs` without the names: (image, labels) pairs and the skipped ones."""
    loaded, _names, skipped = load_named_pairs(images_dir, masks_dir, **options)
    return loaded, skipped


def load_named_pairs(
    images_dir: str | Path,
    masks_dir: str | Path,
    *,
    stain: str = "auto",
    channel: int | None = None,
    local: bool = True,
    he_plane: str = "hematoxylin",
) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str], list[dict[str, str]]]:
    """The usable (image, labels) pairs of two folders, the image file name of each (to record the split
    by name) and the pairs skipped, with their reason."""
    pairs, skipped = find_pairs(images_dir, masks_dir)
    loaded, names = [], []
    for image_path, mask_path in pairs:
        try:
            loaded.append(
                load_pair(image_path, mask_path, stain=stain, channel=channel, local=local, he_plane=he_plane)
            )
            names.append(Path(image_path).name)
        except InputError as exc:
            where = f"{exc.path.name}: " if exc.path is not None and exc.path != image_path else ""
            skipped.append({"image": str(image_path), "reason": where + exc.message})
    return loaded, names, skipped
