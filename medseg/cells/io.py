"""Microscopy image I/O: PNG/TIFF, 8/16-bit, grayscale or RGB, 2D or multi-page stacks.

Readers return ``(pages, metadata)`` where ``pages`` is a float32 array (P, H, W) of grayscale
planes; RGB(A) is converted to luminance (the cell models take one channel). Intensities are
normalised per plane by percentiles, so 8-bit, 16-bit and float inputs look alike to the net.
Every page of a multi-page TIFF is a plane (also when each page is its own TIFF series, as in files
written page by page); pages of different sizes are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import InputError
from medseg.io.atomic import atomic_path

log = logging.getLogger("medseg.cells")

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
PERCENTILES = (1.0, 99.8)  # per-plane normalisation (low, high); stored in every weights file


def _read_raw(path: Path) -> tuple[np.ndarray, bool]:
    """(pixels, whether the last axis holds channels: RGB samples or a TIFF channel axis)."""
    if not path.is_file():
        raise InputError("file not found", path=path)
    if path.stat().st_size == 0:
        raise InputError("empty file", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            data, axes = _read_tiff(path)
            for ax in "SC":  # samples (RGB) or channels last, wherever stored
                if ax in axes and data.ndim == len(axes):
                    return np.moveaxis(data, axes.index(ax), -1), True
            return data, False
        import imageio.v3 as iio

        data = np.asarray(iio.imread(path, plugin="pillow"))
        return data, data.ndim == 3 and data.shape[-1] in (2, 3, 4)
    except InputError:
        raise
    except Exception:  # decoders raise many types for corrupt files; --debug logs the decoder's words
        log.debug("%s: decoder error", path, exc_info=True)
        kind = suffix.lstrip(".").upper().replace("TIFF", "TIF").replace("JPEG", "JPG") or "image"
        raise InputError(
            f"cannot read image: not a valid {kind} file (corrupt or truncated?)", path=path
        ) from None


# tifffile's series kinds for plain TIFFs, where each further series is one more page (plane) of the
# image: files written page by page, or by tools without stack metadata
STACKABLE_SERIES = ("shaped", "generic", "uniform")


def _stack_series(tif, path: Path) -> list:
    """The TIFF series that form the image's planes, refusing pages of different sizes in words.

    A TIFF written page by page (``tifffile.imwrite(..., append=True)``, many microscope exports)
    holds one *series* per page: all of them are planes, not only the first. Reduced-resolution
    pages (thumbnails, pyramid levels) are skipped. Pages of different sizes (or pixel types) cannot
    form one stack; reads page headers only.
    """
    series = [s for s in tif.series if not getattr(s.keyframe, "is_reduced", False)] or tif.series[:1]
    if len(series) == 1:
        return series
    if any(getattr(s, "kind", "") not in STACKABLE_SERIES for s in series):
        # a format whose further series are other images (slide thumbnail, label, macro), not planes
        log.warning(
            "%s: %s file holding %d images: only the first (%s) is segmented, not %s",
            path.name,
            series[0].kind.upper(),
            len(series),
            " x ".join(map(str, series[0].shape)),
            ", ".join(s.name or f"image {k}" for k, s in enumerate(series[1:], start=2)),
        )
        return series[:1]
    first_page, kinds = 1, []
    for s in series:
        kinds.append((first_page, tuple(int(n) for n in s.shape), s.axes, s.dtype))
        first_page += max(1, len(s))
    if len({k[1:] for k in kinds}) > 1:
        odd = next(k for k in kinds if k[1:] != kinds[0][1:])
        described = [
            f"page {k[0]}: {' x '.join(map(str, k[1]))}{'' if k[3] == kinds[0][3] else f' {k[3]}'}"
            for k in (kinds[0], odd)
        ]
        raise InputError(
            f"pages of different sizes in one TIFF ({', '.join(described)}; {len(kinds)} pages): a stack "
            "is segmented plane by plane into one multi-page output, so its pages must share one size "
            "and type; save pages of another size as their own images",
            path=path,
        )
    return series


def _read_tiff(path: Path) -> tuple[np.ndarray, str]:
    """Every page of a TIFF as one array and its axes (tifffile's letters; ``I`` for stacked series)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = _stack_series(tif, path)
        if len(series) == 1:
            return np.asarray(series[0].asarray()), series[0].axes
        log.debug("%s: %d TIFF series of %s stacked as pages", path, len(series), series[0].shape)
        return np.stack([np.asarray(s.asarray()) for s in series]), "I" + series[0].axes


def check_pages(path: str | Path) -> None:
    """Pre-flight for one image: a TIFF whose pages differ in size is refused (InputError), headers only.

    Anything the headers cannot tell (a corrupt file) is left to the reader, which names it.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            _stack_series(tif, path)
    except InputError:
        raise
    except Exception:  # unreadable: read_image gives the error
        log.debug("%s: TIFF headers unreadable in pre-flight", path, exc_info=True)


def _to_gray(a: np.ndarray) -> np.ndarray:
    """(..., H, W, 3|4) RGB(A) -> luminance (..., H, W), in the raw units (float input is not rescaled)."""
    from skimage.color import rgb2gray

    return rgb2gray(a[..., :3].astype(np.float32)).astype(np.float32, copy=False)


def read_image(
    path: str | Path, *, allow_stack: bool = True, channel: int | None = None, keep_color: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image as float32 planes (P, H, W), not yet normalised.

    ``channel``: take that channel of a multi-channel image (an error when there is none).
    ``keep_color``: RGB(A) stays (P, H, W, 3) for stain handling; otherwise it becomes luminance.
    """
    path = Path(path)
    raw, channels_last = _read_raw(path)
    meta: dict[str, Any] = {"path": str(path), "dtype": str(raw.dtype), "raw_shape": list(raw.shape)}
    if raw.size == 0:
        raise InputError("image has no pixels", path=path)
    if raw.dtype == bool:
        raw = raw.astype(np.uint8)
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise InputError(f"unsupported pixel type {raw.dtype}", path=path)
    channels_last = channels_last or (raw.ndim >= 3 and raw.shape[-1] in (3, 4) and raw.shape[-2] > 4)
    n_channels = int(raw.shape[-1]) if channels_last else 1
    rgb = channels_last and n_channels in (3, 4) and channel is None
    if channel is not None:
        if not 0 <= channel < n_channels:
            have = f"{n_channels} channels (0..{n_channels - 1})" if n_channels > 1 else "one channel"
            raise InputError(f"--channel {channel} is out of range: the image has {have}", path=path)
        if channels_last:
            raw = raw[..., channel]
    elif channels_last and not rgb:  # gray + alpha, or two channels: the first one
        if (
            n_channels > 2
            or not np.issubdtype(raw.dtype, np.integer)
            or raw[..., 1].min() != raw[..., 1].max()
        ):
            log.warning("%s: %d channels, using channel 0 (choose one with --channel)", path, n_channels)
        raw = raw[..., 0]
    if rgb and keep_color:
        planes = raw[..., :3].astype(np.float32)
    else:
        planes = _to_gray(raw) if rgb else raw.astype(np.float32)
    meta["color"] = "rgb" if rgb else "gray"
    meta["channels"] = n_channels
    if channel is not None:
        meta["channel"] = channel
    if rgb and keep_color:
        planes = planes[None] if planes.ndim == 3 else planes
        if planes.ndim != 4:
            raise InputError(f"expected a 2D image or a stack of 2D planes, got shape {raw.shape}", path=path)
        if not np.all(np.isfinite(planes)):
            raise InputError("image contains NaN or infinite values", path=path)
        meta["pages"] = int(planes.shape[0])
        meta["height"], meta["width"] = int(planes.shape[1]), int(planes.shape[2])
        return planes, meta
    if planes.ndim == 2:
        planes = planes[None]
    elif planes.ndim == 3:
        if not allow_stack:
            raise InputError(
                f"expected a 2D image, got a stack of {planes.shape[0]} planes {planes.shape[1:]} "
                "(split it into 2D files)",
                path=path,
            )
    else:
        raise InputError(f"expected a 2D image or a stack of 2D planes, got shape {raw.shape}", path=path)
    if min(planes.shape[1:]) < 1:
        raise InputError("image has no pixels", path=path)
    if not np.all(np.isfinite(planes)):
        raise InputError("image contains NaN or infinite values", path=path)
    meta["pages"] = int(planes.shape[0])
    meta["height"], meta["width"] = int(planes.shape[1]), int(planes.shape[2])
    return planes, meta


def check_positive(value: float | str | None, option: str) -> None:
    """A size option (``--diameter``, ``--pixel-size``) must be a positive, finite number (or None/'auto').

    NaN passes every ``<=`` test and would scale the image by NaN: refused here too, for library calls
    that do not come through the CLI's own checks.
    """
    if value is None or value == "auto":
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{option} must be a positive number, got {value!r}") from None
    if not (np.isfinite(number) and number > 0):
        raise InputError(f"{option} must be a positive, finite number, got {value!r}")


def normalise(plane: np.ndarray, *, low: float = PERCENTILES[0], high: float = PERCENTILES[1]) -> np.ndarray:
    """Percentile-normalise a plane to about [0, 1]; constant planes become all zero."""
    from medseg.cells.stain import percentile_normalise

    return percentile_normalise(plane, low=low, high=high)


def read_mask(path: str | Path) -> np.ndarray:
    """A 2D instance or binary mask as int32 (RGB masks are refused: ambiguous)."""
    path = Path(path)
    raw, _ = _read_raw(path)
    if raw.ndim != 2:
        raise InputError(f"mask must be a 2D label image, got shape {raw.shape}", path=path)
    if not np.issubdtype(raw.dtype, np.integer) and raw.dtype != bool:
        if not np.all(raw == np.round(raw)):
            raise InputError("mask has non-integer values", path=path)
    return raw.astype(np.int64).astype(np.int32)


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    """Instance labels as 16-bit TIFF (32-bit when there are more than 65535 cells); stacks multi-page."""
    import tifffile

    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")
    return Path(path)


def write_float_tiff(path: str | Path, array: np.ndarray) -> Path:
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, array.astype(np.float32), compression="zlib")
    return Path(path)


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """8-bit gray (H, W) or RGB (H, W, 3) PNG, or 16-bit gray."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        # zlib level 3 instead of Pillow's 6: a 512^2 overlay in 0.024 s instead of 0.064 s, 3 % larger
        iio.imwrite(tmp, array, extension=".png", compress_level=3)
    return Path(path)


def to_uint8(plane: np.ndarray) -> np.ndarray:
    return (np.clip(plane, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay_outlines(plane: np.ndarray, labels: np.ndarray, *, color=(255, 60, 0)) -> np.ndarray:
    """RGB uint8 overlay: the (normalised) image in gray with cell outlines in ``color``."""
    from skimage.segmentation import find_boundaries

    gray = to_uint8(plane)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[find_boundaries(labels, mode="inner")] = color
    return rgb


def list_images(inputs: list[str | Path]) -> list[Path]:
    """Expand directories into their image files (sorted); keep files as given.

    Pre-flight: a path that does not exist is an input error (a typo stops the run before any work).
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(
                f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
            )
        elif p.exists():
            out.append(p)
        else:
            raise InputError("input not found", path=p)
    return out
