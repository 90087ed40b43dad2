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


TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders


def _read_raw(path: Path, *, indices: bool = False) -> tuple[np.ndarray, bool, bool]:
    """(pixels, whether the last axis holds channels: RGB samples or a TIFF channel axis, whether its last
    channel is transparency: PNG RGBA / grey + alpha, a TIFF's alpha extra sample).

    ``indices``: a palette (indexed) image gives its indices, not their colours: in a label mask saved
    as an indexed PNG (annotation tools, the PASCAL VOC format) the index is the cell's number."""
    if not path.is_file():
        raise InputError("file not found", path=path)
    if path.stat().st_size == 0:
        raise InputError("empty file", path=path)
    suffix = path.suffix.lower()
    with path.open("rb") as f:
        head = f.read(132)
    is_tiff = head[:4] in TIFF_MAGIC
    if head[128:132] == b"DICM":  # a valid file, just not an image format this command reads
        raise InputError(
            "a DICOM file: the cell commands read PNG, TIFF, JPEG and BMP images; export the image (or a "
            "tile of a DICOM whole-slide image) as TIFF or PNG",
            path=path,
        )
    try:
        # by content, not name: a PNG renamed .tif was refused as a corrupt TIFF, and a TIFF (an .svs
        # slide, a stack) named otherwise went to a reader that sees only its first page
        if is_tiff:
            return _tiff_planes(path, indices=indices)
        import imageio.v3 as iio
        from PIL import Image

        with Image.open(path) as im:  # the header only: which colour model the pixels are stored in
            mode = im.mode
            if indices and mode == "P":
                return np.asarray(im), False, False
        # CMYK (print / some scanner JPEGs), Lab, HSV: stored ink or colour coordinates, not RGB light; as
        # stored they would read as an inverted or meaningless colour image
        rgb = {"mode": "RGB"} if mode in ("CMYK", "LAB", "HSV", "YCbCr") else {}
        data = np.asarray(iio.imread(path, plugin="pillow", **rgb))
        channels = data.ndim == 3 and data.shape[-1] in (2, 3, 4)
        return data, channels, channels and data.shape[-1] in (2, 4)  # Pillow: LA, RGBA (P with transparency)
    except InputError:
        raise
    except Exception:  # decoders raise many types for corrupt files; --debug logs the decoder's words
        log.debug("%s: decoder error", path, exc_info=True)
        kind = (
            "TIF"
            if is_tiff
            else suffix.lstrip(".").upper().replace("TIFF", "TIF").replace("JPEG", "JPG") or "image"
        )
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


def _read_tiff(path: Path) -> tuple[np.ndarray, str, int, bool]:
    """Every page of a TIFF as one array, its axes (tifffile's letters; ``I`` for stacked series), the
    first page's photometric interpretation (tifffile.PHOTOMETRIC value) and whether its last extra
    sample is alpha."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = _stack_series(tif, path)
        photometric = int(series[0].keyframe.photometric)
        extra = tuple(int(e) for e in (getattr(series[0].keyframe, "extrasamples", None) or ()))
        alpha = bool(extra) and extra[-1] in (1, 2)  # EXTRASAMPLE.ASSOCALPHA, UNASSALPHA
        if len(series) == 1:
            return np.asarray(series[0].asarray()), series[0].axes, photometric, alpha
        log.debug("%s: %d TIFF series of %s stacked as pages", path, len(series), series[0].shape)
        stacked = np.stack([np.asarray(s.asarray()) for s in series])
        return stacked, "I" + series[0].axes, photometric, alpha


MAX_CHANNELS = 8  # a trailing axis this short after two long ones is channels, not image columns


def _tiff_planes(path: Path, *, indices: bool = False) -> tuple[np.ndarray, bool, bool]:
    """A TIFF's pixels with the plane axes (Y, X) before a channel axis, if any, and whether there is one.

    Singleton axes other than Y/X are dropped: an (H, W, 1) array saved by tifffile (axes ``YXQ``) is a
    2D image, not H pages of W x 1 px. An (H, W, C) array with 2 or 5-8 channels saved without
    channel metadata is stored as H pages of W x C px: read as H x W with C channels. Inverted grey
    (MINISWHITE, 8 bits and more: 1-bit files are what tifffile writes for any bool array) is turned
    into light values and CMYK ink (SEPARATED) into RGB, as viewers show them; not for ``indices``
    (label masks: their stored numbers are the labels).
    """
    import tifffile

    data, axes, photometric, alpha = _read_tiff(path)
    channels = False
    if data.ndim == len(axes):  # (stacked series of another layout than the first stay as read)
        keep = [k for k, (ax, n) in enumerate(zip(axes, data.shape)) if n != 1 or ax in "YX"]
        if 2 <= len(keep) < data.ndim:
            data = data.reshape([data.shape[k] for k in keep])
            axes = "".join(axes[k] for k in keep)
        for ax in "SC":  # samples (RGB) or channels last, wherever stored
            if ax in axes:
                data, channels = np.moveaxis(data, axes.index(ax), -1), True
                break
        else:
            n = data.shape[-1] if data.ndim == 3 else 0
            if 1 < n <= MAX_CHANNELS < min(data.shape[:2]) and n not in (3, 4):
                log.warning(
                    "%s: stored as %d pages of %d x %d px: read as one %d x %d image with %d channels",
                    path.name,
                    *data.shape,
                    *data.shape,
                )
                channels = True
    alpha = alpha and channels
    if indices:  # a label mask: the stored numbers are the labels, whatever a viewer would show
        return data, channels, alpha
    if photometric == tifffile.PHOTOMETRIC.SEPARATED and channels and data.shape[-1] >= 3:
        data = _ink_to_rgb(data)
    elif photometric == tifffile.PHOTOMETRIC.MINISWHITE and np.issubdtype(data.dtype, np.unsignedinteger):
        data = np.iinfo(data.dtype).max - data
    return data, channels, alpha


def _ink_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """CMYK ink coverage (integer samples, full scale = no light) -> RGB light in the same type."""
    top = float(np.iinfo(cmyk.dtype).max) if np.issubdtype(cmyk.dtype, np.integer) else 1.0
    ink = cmyk.astype(np.float32) / top
    black = ink[..., 3:4] if cmyk.shape[-1] >= 4 else 0.0
    rgb = (1 - ink[..., :3]) * (1 - black) * top
    return rgb.round().astype(cmyk.dtype) if np.issubdtype(cmyk.dtype, np.integer) else rgb.astype(cmyk.dtype)


def check_pages(path: str | Path) -> None:
    """Pre-flight for one image: a TIFF whose pages differ in size is refused (InputError), headers only.

    Anything the headers cannot tell (a corrupt file) is left to the reader, which names it.
    """
    path = Path(path)
    if not path.is_file():
        return
    with path.open("rb") as f:
        if f.read(4) not in TIFF_MAGIC:  # by content, as the reader decides
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


MIN_EDGE = 8  # px: a plane narrower than this cannot hold a cell (the default --min-size is 40 px)


def _check_planes(planes: np.ndarray, path: Path) -> None:
    """Refuse planes that cannot be segmented: no pixels, too small to hold a cell, NaN or infinity."""
    height, width = planes.shape[1:3]
    if min(height, width) < 1:
        raise InputError("image has no pixels", path=path)
    if min(height, width) < MIN_EDGE:
        raise InputError(
            f"image is only {height} x {width} px: too small to hold a cell (at least {MIN_EDGE} px a side)",
            path=path,
        )
    if not np.all(np.isfinite(planes)):
        raise InputError("image contains NaN or infinite values", path=path)


def _fill_transparent(raw: np.ndarray, path: Path) -> np.ndarray:
    """RGBA or grey + alpha with fully transparent pixels: those hold no image (a slide tile read past
    the slide's edge by OpenSlide is transparent black there). They get the image's background colour
    (the most common value of each channel over the visible pixels: glass for brightfield, dark for
    fluorescence), so that a half-empty H&E tile is not taken for a dark fluorescence image, and the
    alpha channel is dropped. Images without transparent pixels are returned as they are."""
    if not np.issubdtype(raw.dtype, np.integer):
        return raw
    alpha = raw[..., -1]
    hole = alpha == 0
    if not hole.any():
        return raw
    top = np.iinfo(raw.dtype).max
    if raw.shape[-1] == 2 and np.count_nonzero(alpha == top) + np.count_nonzero(hole) != alpha.size:
        return raw  # a second channel of data, not a transparency mask
    if hole.all():
        raise InputError(
            "image is fully transparent (its alpha channel is 0 everywhere): no image data", path=path
        )
    colour = raw[..., :-1]
    seen = colour[~hole]
    fill = [
        np.bincount(seen[:, c].astype(np.int64) - int(seen[:, c].min())).argmax() + int(seen[:, c].min())
        for c in range(colour.shape[-1])
    ]
    filled = colour.copy()
    filled[hole] = np.asarray(fill, dtype=raw.dtype)
    log.warning(
        "%s: %.0f %% of the image is transparent (no image data): filled with its background colour %s",
        path.name,
        100 * hole.mean(),
        tuple(int(v) for v in fill),
    )
    return filled[..., 0] if filled.shape[-1] == 1 else filled


def read_image(
    path: str | Path, *, allow_stack: bool = True, channel: int | None = None, keep_color: bool = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image as float32 planes (P, H, W), not yet normalised.

    ``channel``: take that channel of a multi-channel image (an error when there is none).
    ``keep_color``: RGB(A) stays (P, H, W, 3) for stain handling; otherwise it becomes luminance.
    """
    path = Path(path)
    raw, channels_last, alpha = _read_raw(path)
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
    if channel is None and alpha and n_channels in (2, 4):
        filled = _fill_transparent(raw, path)
        if filled is not raw:  # alpha dropped: RGB, or grey without a channel axis
            raw, channels_last = filled, n_channels == 4
            n_channels = 3 if channels_last else 1
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
        _check_planes(planes, path)
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
    _check_planes(planes, path)
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


SPARSE_LABELS = 2**16  # masks with labels from this up are renumbered 1..N


def read_mask(path: str | Path, *, allow_stack: bool = False) -> np.ndarray:
    """A 2D instance or binary mask as int32 (RGB masks are refused: ambiguous); with ``allow_stack`` a
    multi-page mask (P, H, W) as well (a stack's labels as ``cells-segment`` writes them)."""
    path = Path(path)
    raw, channels, _alpha = _read_raw(path, indices=True)
    if raw.ndim == 3 and channels and raw.shape[-1] in (3, 4):
        raise InputError(
            "mask is a colour (RGB) image: give instance labels as a one-channel 8/16/32-bit image "
            "(0 = background, 1, 2, ... one number per cell)",
            path=path,
        )
    if raw.ndim != 2 and not (allow_stack and raw.ndim == 3 and not channels):
        raise InputError(f"mask must be a 2D label image, got shape {raw.shape}", path=path)
    if not np.issubdtype(raw.dtype, np.integer) and raw.dtype != bool:
        if not np.all(raw == np.round(raw)):
            raise InputError("mask has non-integer values", path=path)
    if raw.dtype == bool:
        return raw.astype(np.int32)
    labels = raw.astype(np.int64) if np.issubdtype(raw.dtype, np.integer) else raw.astype(np.float64)
    low = labels.min(initial=0)
    if low < 0:
        raise InputError(
            f"mask has negative labels (lowest {low:g}): labels are 0 (background) and 1, 2, ... per cell",
            path=path,
        )
    if labels.max(initial=0) >= SPARSE_LABELS:
        # large or scattered cell numbers (32-bit ids from other tools): renumbered 1..N in their order,
        # which keeps every cell; matching and training only need the cells apart, not their numbers
        labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape) + (low > 0)
    return labels.astype(np.int32)


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
                f
                for f in p.iterdir()
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and f.is_file()
            )
        elif p.exists():
            out.append(p)
        else:
            raise InputError("input not found", path=p)
    # a file given twice (a folder and a file in it, a symlink to it) is one image, not two items
    seen: set[Path] = set()
    unique = []
    for f in out:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique
