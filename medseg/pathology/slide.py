"""Open whole-slide images (any reader backend), read their scale, find tissue on a low-resolution level.

Nothing here ever reads a whole level-0 image: tissue detection reads the smallest level that is
fine enough, and when a slide has no pyramid that level is read in strips and reduced on the fly.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg.errors import InputError
from medseg.pathology.readers import SlideReader

log = logging.getLogger("medseg.pathology")

# level-0 scales a brightfield slide can have: finer than 0.05 um/px is below any scanner's optics
# (a wrong unit or a broken tag); coarser than 1.5x the target means upsampling blurred pixels
MIN_PLAUSIBLE_MPP = 0.05
MAX_UPSAMPLE = 1.5
TISSUE_DOWNSAMPLE = 32  # level-0 pixels per tissue-mask pixel (about 16 um at 0.5 um/px)
_STRIP = 2048


@dataclass
class Slide:
    """An open slide: its reader (:class:`~medseg.pathology.readers.SlideReader`) plus the facts the
    pipeline needs. ``handle`` is the reader (OpenSlide-like: ``get_best_level_for_downsample``)."""

    path: Path
    handle: SlideReader
    width: int
    height: int
    mpp: float  # level-0 microns per pixel
    mpp_source: str  # "metadata", "--slide-mpp" or "ImagedVolumeWidth/Height" (DICOM without PixelSpacing)
    vendor: str
    backend: str = "openslide"

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(self.handle.level_downsamples)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.handle.level_dimensions)

    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro and thumbnail images where the file has them."""
        return self.handle.associated_images()

    def read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 region; pixels outside the slide or transparent become white."""
        try:
            return self.handle.read_region(location, level, size)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend has its own decode errors
            first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            raise InputError(
                f"cannot decode slide region (corrupt or truncated file?): {first}", path=self.path
            ) from None

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_slide(path: str | Path, *, slide_mpp: float | None = None, reader: str = "auto") -> Slide:
    """Open ``path`` with the reader ``reader`` names (``auto``: OpenSlide, then tifffile, then the
    DICOM readers); InputError (one line) for anything that is not a usable slide, saying whether the
    file is corrupt/truncated or valid but unsupported."""
    from medseg.pathology.readers import open_reader, sniff

    path = Path(path)
    if not path.exists():
        raise InputError("slide not found", path=path)
    if not path.is_file() and path.suffix.lower() != ".mrxs":
        raise InputError("not a file", path=path)
    if slide_mpp is not None and not (math.isfinite(slide_mpp) and slide_mpp > 0):
        raise InputError(f"--slide-mpp must be a finite number > 0, got {slide_mpp}")
    handle = open_reader(path, reader)
    try:
        width, height = handle.dimensions
        if width <= 0 or height <= 0:
            raise InputError("slide has zero size", path=path)
        mpp, source = None, "metadata"
        if handle.mpp is not None:
            mx, my = handle.mpp
            mpp = (mx + my) / 2
            if slide_mpp is None and max(mx, my) > 1.1 * min(mx, my):  # averaged, PTCs would be stretched
                raise InputError(
                    f"pixels are not square in the slide's metadata ({mx:g} x {my:g} um): tiles would be "
                    "stretched; if the metadata is wrong, pass --slide-mpp",
                    path=path,
                )
        if slide_mpp is not None:
            mpp, source = float(slide_mpp), "--slide-mpp"
        if mpp is None and sniff(path) == "dicom":
            from medseg.pathology.readers_dicom import volume_mpp

            found = volume_mpp(path)
            if found is not None:
                mpp, source = (found[0] + found[1]) / 2, "ImagedVolumeWidth/Height"
                log.warning("%s: %s", path.name, found[2])
        if mpp is None:
            what = (
                f"slide's microns-per-pixel metadata is not a usable scale ({handle.mpp_note})"
                if handle.mpp_note
                else "slide has no microns-per-pixel metadata"
            )
            raise InputError(f"{what}; pass --slide-mpp (e.g. 0.25 for 40x, 0.5 for 20x)", path=path)
    except BaseException:
        handle.close()
        raise
    return Slide(path, handle, width, height, mpp, source, handle.vendor, handle.backend)


def check_scale(slide: Slide, target_mpp: float, *, fine: bool = True, coarse: bool = True) -> None:
    """Refuse a level-0 scale that cannot be analysed at ``target_mpp`` (InputError naming the file):
    one finer than any scanner resolves (wrong metadata: tiles would cover huge level-0 regions) or
    one so coarse that tiles would be upsampled, where capillaries are a few blurred pixels and a
    detector still answers (a slide whose MPP said 5 came out "C4d3" from 178 phantom PTCs).
    ``fine`` / ``coarse`` pick the two checks (scoring checks the fine limit before any read and
    the coarse one after the stain QC, so an H&E overview is still called an H&E)."""
    source = "--slide-mpp" if slide.mpp_source == "--slide-mpp" else f"the slide's {slide.mpp_source}"
    fix = "pass --slide-mpp with the true scale" if slide.mpp_source != "--slide-mpp" else "check --slide-mpp"
    if fine and slide.mpp < MIN_PLAUSIBLE_MPP:
        raise InputError(
            f"level-0 scale {slide.mpp:g} um/px (from {source}) is finer than any slide scanner "
            f"(about 0.1 um/px at most): the scale is wrong; {fix}",
            path=slide.path,
        )
    side = min(slide.width, slide.height) * slide.mpp / target_mpp
    if fine and side < 64:  # a strip or a crop: tissue detection and the stain QC would contradict
        raise InputError(
            f"the image is only {slide.width} x {slide.height} px ({slide.width * slide.mpp / 1000:.3g} x "
            f"{slide.height * slide.mpp / 1000:.3g} mm): too small to be a slide section",
            path=slide.path,
        )
    if coarse and slide.mpp > target_mpp * MAX_UPSAMPLE:
        raise InputError(
            f"level-0 scale {slide.mpp:g} um/px (from {source}) is {slide.mpp / target_mpp:.3g}x coarser "
            f"than the {target_mpp:g} um/px the analysis needs: capillaries (5-15 um) would be a few "
            f"blurred pixels; scan at {target_mpp:g} um/px or finer (20x or 40x), or {fix}",
            path=slide.path,
        )


def read_downsampled(slide: Slide, downsample: float) -> tuple[np.ndarray, float]:
    """RGB image of the whole slide at about ``downsample``; returns (image, actual downsample).

    Uses the coarsest pyramid level at most 1.5x coarser than asked for, and reduces it in strips
    so memory is bounded by the output size even for slides without a pyramid.
    """
    from PIL import Image

    dss = slide.level_downsamples
    # the coarsest level at most 1.5x coarser than asked (decoding a finer level costs time)
    level = max((i for i, d in enumerate(dss) if d <= downsample * 1.5), key=lambda i: dss[i], default=0)
    lds = dss[level]
    lw, lh = slide.level_dimensions[level]
    factor = max(1, int(round(downsample / lds)))
    ow, oh = max(1, lw // factor), max(1, lh // factor)
    out = np.empty((oh, ow, 3), np.uint8)
    strip = max(factor, (_STRIP // factor) * factor)
    for y in range(0, oh * factor, strip):
        h = min(strip, oh * factor - y)
        for x in range(0, ow * factor, strip):
            w = min(strip, ow * factor - x)
            region = slide.read_rgb((int(x * lds), int(y * lds)), level, (w, h))
            if factor > 1:
                region = np.asarray(Image.fromarray(region).resize((w // factor, h // factor), Image.BOX))
            out[y // factor : (y + h) // factor, x // factor : (x + w) // factor] = region
    return out, lds * factor


_OD_LUT = (-np.log10(np.clip(np.arange(256, dtype=np.float32), 1.0, 255.0) / 255.0)).astype(np.float32)


def tissue_mask_from_rgb(
    rgb: np.ndarray, *, od_threshold: float = 0.15, sat_threshold: float = 0.05, min_area_px: int = 16
) -> np.ndarray:
    """Tissue = optical density or saturation above a threshold, not black, cleaned by morphology.

    Works on single-channel float32 maps (optical density through a lookup table), so the
    temporaries are a few bytes per mask pixel.
    """
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_objects

    od = _OD_LUT[rgb[..., 0]] + _OD_LUT[rgb[..., 1]] + _OD_LUT[rgb[..., 2]]
    mx = rgb.max(-1)
    sat = (mx - rgb.min(-1)).astype(np.float32) / np.maximum(mx, 1).astype(np.float32)
    od = ndi.uniform_filter(od, size=3)
    sat = ndi.uniform_filter(sat, size=3)
    # scanner padding outside the scanned area is black (absorbs "everything"): not tissue
    mask = ((od > od_threshold) | ((sat > sat_threshold) & (mx < 250))) & (
        ndi.uniform_filter(mx, size=3) >= 20
    )
    del od, sat, mx
    mask = ndi.binary_opening(mask, iterations=1)
    mask = ndi.binary_closing(mask, iterations=2)
    mask = ndi.binary_fill_holes(mask)
    # keep components of at least min_area_px pixels (max_size: the largest size that is removed)
    return remove_small_objects(mask, max_size=max(0, min_area_px - 1))


@dataclass
class TissueMap:
    """Tissue mask of a slide and its scale (level-0 pixels per mask pixel)."""

    mask: np.ndarray
    downsample: float
    thumbnail: np.ndarray

    def fraction(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Fraction of tissue in the level-0 rectangle [x0, x1) x [y0, y1)."""
        d = self.downsample
        i0, i1 = int(max(0, y0 // d)), int(min(self.mask.shape[0], math.ceil(y1 / d)))
        j0, j1 = int(max(0, x0 // d)), int(min(self.mask.shape[1], math.ceil(x1 / d)))
        if i1 <= i0 or j1 <= j0:
            return 0.0
        return float(self.mask[i0:i1, j0:j1].mean())

    def area_mm2(self, mpp: float) -> float:
        return float(self.mask.sum()) * (self.downsample * mpp * 1e-3) ** 2


def detect_tissue(slide: Slide, *, downsample: float = TISSUE_DOWNSAMPLE, max_side: int = 2048) -> TissueMap:
    """Tissue map from a low-resolution read; InputError when no tissue is found.

    The map is at most ``max_side`` px on its long side (coarser for huge slides), so its memory
    does not grow with the slide.
    """
    downsample = max(downsample, max(slide.width, slide.height) / max_side)
    rgb, ds = read_downsampled(slide, downsample)
    mask = tissue_mask_from_rgb(rgb)
    if not mask.any():
        raise InputError("no tissue found on the slide", path=slide.path)
    log.debug("tissue: %.1f %% of %s at downsample %.1f", 100 * mask.mean(), slide.path.name, ds)
    return TissueMap(mask, ds, rgb)


SLIDE_EXTENSIONS = {
    ".svs",
    ".ndpi",
    ".mrxs",
    ".tif",
    ".tiff",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".dcm",
    ".dicom",
    ".btf",
    ".tf8",
    ".qptiff",
}
_DICOM_SUFFIXES = {".dcm", ".dicom", ""}
_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage


def _read_list(path: Path) -> list[Path]:
    """A CSV list of slides: a ``path``/``slide``/``file`` column, or the first column without a header."""
    import csv

    out: list[Path] = []
    try:
        # utf-8-sig: Excel's "CSV UTF-8" starts with a byte-order mark, which would make the header
        # "\ufeffpath" and a slide of that name; ";" and tab: Excel in many locales
        with path.open(newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            try:
                dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:  # one column: nothing to sniff
                dialect = csv.excel
            reader = csv.reader(fh, dialect)
            header = next(reader, [])
            names = [h.strip().lower() for h in header]
            # "path" first: a scores.csv of an earlier run has "slide" (a name) before "path"
            col = next((names.index(k) for k in ("path", "slide", "file") if k in names), None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the slide list: {exc}", path=path) from None
    if col is None:  # no header: first column, first row included
        col, rows = 0, [header, *rows]
    for r in rows:
        if len(r) > col and r[col].strip():
            q = Path(r[col].strip())
            out.append(q if q.is_absolute() else path.parent / q)
    return out


def expand_inputs(inputs) -> list[Path]:
    """Slides from paths, folders (their slide files) and CSV lists (a ``path``/``slide`` column or the first).

    A path that does not exist stays in the list: it becomes that slide's failed item, not a stop.
    """
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # hidden files are left out: macOS writes "._slide.svs" resource forks (4 kB, not a
            # slide) beside every file it copies to a USB or network drive
            files = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            out += [q for q in files if q.suffix.lower() in SLIDE_EXTENSIONS - _DICOM_SUFFIXES]
            out += _dicom_slides([q for q in files if q.suffix.lower() in _DICOM_SUFFIXES])
        elif p.suffix.lower() == ".csv" and p.is_file():
            out += _read_list(p)
        else:
            out.append(p)
    unique: dict[Path, Path] = {}
    for p in out:  # a folder and one of its files, or a list and a file: scored once, not as "a_2"
        key = p.resolve()
        if key in unique:
            log.warning("%s: given more than once, taken once", p)
        unique.setdefault(key, p)
    return list(unique.values())


def _dicom_slides(files: list[Path]) -> list[Path]:
    """One file per DICOM series (its largest level): a multi-instance slide is one slide, not one per
    level. Files that are not DICOM are left out (a folder may hold notes)."""
    import pydicom

    best: dict[str, tuple[int, Path]] = {}
    for q in files:
        try:
            with q.open("rb") as fh:
                fh.seek(128)
                if fh.read(4) != b"DICM":
                    continue
            h = pydicom.dcmread(
                q, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "TotalPixelMatrixColumns"]
            )
        except Exception:  # noqa: BLE001 - unreadable: keep it so it becomes that slide's failed row
            best[str(q)] = (0, q)
            continue
        if q.name.upper() == "DICOMDIR" or str(h.file_meta.get("MediaStorageSOPClassUID", "")) == _DICOMDIR:
            continue  # the index of an exported disc or folder, never a slide
        key = str(h.get("SeriesInstanceUID") or q)
        width = int(h.get("TotalPixelMatrixColumns") or 0)
        if key not in best or width > best[key][0]:
            best[key] = (width, q)
    return sorted(p for _w, p in best.values())


_ANNOTATION_SUFFIXES = (".geojson", ".json")


def slide_stem(path: str | Path) -> str:
    """A slide's name without its extensions: ``a.svs``, ``a.ome.tiff`` and the annotations
    ``a.geojson`` or ``a.svs.geojson`` (QuPath's "image name + .geojson") all give ``a``.

    Only known extensions go, so dots inside a name stay (``S12-345.2 C4d.svs`` and DICOM files
    named by their UID, ``1.2.826.0.1.3680043.8.498.1.dcm``, keep their whole name; cutting at the
    first dot made every UID-named slide ``1``, ``1_2``, ...).
    """
    name = Path(path).name
    for group in (
        _ANNOTATION_SUFFIXES,
        (".ome.tiff", ".ome.tif", ".ome.btf", ".ome.tf8", ".ome.tf2", ".ome"),
    ):
        low = name.lower()
        cut = next((e for e in group if low.endswith(e) and len(name) > len(e)), None)
        if cut is None and group is not _ANNOTATION_SUFFIXES:
            suffix = Path(name).suffix.lower()
            cut = suffix if suffix in SLIDE_EXTENSIONS and len(name) > len(suffix) else None
        if cut:
            name = name[: -len(cut)]
    return name


def unique_names(paths: list[Path]) -> list[str]:
    """One safe, unique output folder name per slide (``a``, ``a_2``, ... for equal stems)."""
    from medseg.io.atomic import safe_name

    names: list[str] = []
    taken: set[str] = set()  # lower case: "A" and "a" are one folder on macOS / Windows / SMB shares
    for p in paths:
        base = safe_name(slide_stem(p), default="slide")
        name, n = base, 1
        while name.lower() in taken:  # also when "a_2" is itself a slide's name
            n += 1
            name = f"{base}_{n}"
        taken.add(name.lower())
        names.append(name)
    return names
