"""One slide-reader interface over every format a scanner or an export writes.

Backends, tried in this order by ``reader="auto"``:

- **openslide**: SVS, NDPI, MRXS, SCN, BIF, Philips TIFF, generic tiled TIFF and the DICOM it supports;
- **tifffile** (+ zarr): OME-TIFF and tiled/pyramidal TIFFs OpenSlide rejects (pyramid from SubIFDs or
  series levels; mpp from OME ``PhysicalSizeX/Y`` with units, or the resolution tags);
- **dicom**: ``wsidicom`` for DICOM VL Whole Slide Microscopy images OpenSlide rejects (single- or
  multi-instance, TILED_FULL and TILED_SPARSE), then pydicom frame by frame where both refuse a file
  pydicom can decode (e.g. a missing ImageType). See :mod:`medseg.pathology.readers_dicom`.

Every backend reads regions tile by tile (never a whole level 0), and a failure says whether the file
is valid but unsupported or corrupt/truncated, so the user knows whether to convert or to re-export.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from medseg.errors import InputError

log = logging.getLogger("medseg.pathology")

READERS = ("auto", "openslide", "tifffile", "dicom")
_ASSOCIATED = ("label", "macro", "thumbnail", "overview")
_MAX_ASSOCIATED_PX = 4096 * 4096
_MAX_CHUNK_BYTES = 2**30  # a compressed strip/tile decoded whole for every region read (RAM x threads)


class UnsupportedSlide(Exception):
    """The file is valid, but this backend cannot read it (the next backend may)."""


class CorruptSlide(Exception):
    """The file is damaged or truncated: no backend will read it."""


class SlideReader(ABC):
    """A whole-slide image: a pyramid of levels, level-0 microns per pixel, regions as RGB uint8."""

    backend: str = ""
    path: Path
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level, level 0 first
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None  # level-0 microns per pixel (x, y), None when the file has none
    mpp_note: str | None = None  # why a scale the file states is not used (e.g. "openslide.mpp-x = 0")
    note: str | None = None  # what the reader left out that the user should know (other scenes)
    vendor: str = "unknown"

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @abstractmethod
    def _read(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the level-``level`` window at (x, y), fully inside the level."""

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (h, w, 3) at ``level`` whose top-left is ``location`` in level-0 pixels
        (OpenSlide's convention); pixels outside the slide are white."""
        w, h = int(size[0]), int(size[1])
        ds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        x, y = int(math.floor(location[0] / ds)), int(math.floor(location[1] / ds))
        x0, y0, x1, y1 = max(0, x), max(0, y), min(lw, x + w), min(lh, y + h)
        if x0 == x and y0 == y and x1 - x0 == w and y1 - y0 == h:
            return self._read(level, x, y, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is still below ``downsample`` (OpenSlide's rule), else 0."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d < downsample:
                best = i
        return best

    def associated_images(self) -> dict[str, np.ndarray]:
        """Label, macro/overview and thumbnail images where the file has them (RGB uint8)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional for backends without a handle
        """Release the file handles."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def to_rgb8(a: np.ndarray, scale: float | None = None) -> np.ndarray:
    """(h, w[, c]) of any dtype -> RGB uint8: gray repeated, 2 channels padded, alpha dropped."""
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != np.uint8:
        if scale is None:
            scale = 255.0 / float(np.iinfo(a.dtype).max) if a.dtype.kind in "ui" else 255.0
        a = np.clip(a.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    c = a.shape[-1]
    if c == 1:
        a = np.repeat(a, 3, axis=-1)
    elif c == 2:
        a = np.concatenate([a, np.zeros_like(a[..., :1])], axis=-1)
    elif c > 3:
        a = a[..., :3]
    return np.ascontiguousarray(a)


# --------------------------------------------------------------------------- OpenSlide


class OpenSlideReader(SlideReader):
    backend = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self.path = path
        try:
            self.handle = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError:
            raise UnsupportedSlide("OpenSlide does not support this format") from None
        except openslide.OpenSlideError as exc:
            raise UnsupportedSlide(f"OpenSlide cannot read it ({exc})") from None
        self.level_dimensions = tuple(self.handle.level_dimensions)
        self.level_downsamples = tuple(self.handle.level_downsamples)
        props = self.handle.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
        mx = _positive(props.get(openslide.PROPERTY_NAME_MPP_X))
        my = _positive(props.get(openslide.PROPERTY_NAME_MPP_Y))
        self.mpp = (mx, my or mx) if mx else None
        stated = props.get(openslide.PROPERTY_NAME_MPP_X)
        if self.mpp is None and stated is not None:
            self.mpp_note = f"{openslide.PROPERTY_NAME_MPP_X} = {stated}"

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return int(self.handle.get_best_level_for_downsample(downsample))

    def read_region(self, location, level, size) -> np.ndarray:
        rgba = np.asarray(self.handle.read_region(tuple(location), level, tuple(size)))
        if rgba[..., 3].min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        return (rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)

    def _read(self, level, x, y, w, h) -> np.ndarray:  # pragma: no cover - read_region is overridden
        ds = self.level_downsamples[level]
        return self.read_region((int(x * ds), int(y * ds)), level, (w, h))

    def associated_images(self) -> dict[str, np.ndarray]:
        return {k: to_rgb8(np.asarray(v.convert("RGB"))) for k, v in self.handle.associated_images.items()}

    def close(self) -> None:
        self.handle.close()


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


# --------------------------------------------------------------------------- tifffile

_UNIT_UM = {
    "µm": 1.0,  # U+00B5 micro sign, as the OME schema writes it
    "\u03bcm": 1.0,  # U+03BC Greek mu, as some exporters write it
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
    "pm": 1e-6,
}
# desktop defaults (72 dpi ...) that say nothing about a microscope's scale
_DEFAULT_DPI = {72.0, 96.0, 150.0, 200.0, 300.0, 600.0, 1200.0}


class TiffReader(SlideReader):
    """OME-TIFF and tiled/pyramidal TIFF through tifffile's zarr store (reads only the tiles needed)."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile

        self.path = path
        try:
            self.tif = tifffile.TiffFile(str(path))
        except tifffile.TiffFileError as exc:
            raise CorruptSlide(f"truncated or corrupt TIFF file: {exc}") from None
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise CorruptSlide(f"truncated or corrupt TIFF file: {exc}") from None
        try:
            self._open()
        except Exception:
            self.tif.close()
            raise

    def _open(self) -> None:
        try:
            import zarr
        except ImportError:  # pragma: no cover - zarr is a dependency
            raise UnsupportedSlide("reading this TIFF needs the zarr package (pip install zarr)") from None
        tif = self.tif
        main = [s for s in tif.series if (s.name or "").lower() not in _ASSOCIATED and s.ndim >= 2]
        if not main:
            raise UnsupportedSlide("TIFF without an image series")
        self.series = max(main, key=lambda s: _yx(s)[0] * _yx(s)[1])
        area = _yx(self.series)[0] * _yx(self.series)[1]
        others = [s for s in main if s is not self.series and _yx(s)[0] * _yx(s)[1] >= 0.1 * area]
        if others:  # e.g. two tissue sections scanned as two scenes (CZI -> OME-TIFF)
            self.note = (
                f"the file holds {len(others) + 1} images (scenes); only the largest "
                f"({self.series.name or 'series ' + str(tif.series.index(self.series))}, "
                f"{_yx(self.series)[1]} x {_yx(self.series)[0]} px) is analysed, not "
                + ", ".join(repr(s.name or f"series {tif.series.index(s)}") for s in others)
            )
            log.warning("%s: %s", Path(self.path).name, self.note)
        self._check_complete()
        mapped = [self._memmap(lv) for lv in self.series.levels]
        self.levels = [
            m if m is not None else zarr.open(self.series.aszarr(level=i), mode="r")
            for i, m in enumerate(mapped)
        ]
        chunks = getattr(self.levels[0], "chunks", None)
        if chunks is not None and int(np.prod(chunks)) * self.series.dtype.itemsize > _MAX_CHUNK_BYTES:
            mb = int(np.prod(chunks)) * self.series.dtype.itemsize // 2**20
            raise UnsupportedSlide(
                f"the image is stored as compressed blocks of {mb} MB (e.g. one strip for the whole "
                "image): every region read would decode a whole block; convert it to a tiled TIFF, "
                "e.g. vips tiffsave in.tif out.tif --tile --pyramid --compression jpeg"
            )
        self.axes = [lv.axes for lv in self.series.levels]
        dims = [(_yx(lv)[1], _yx(lv)[0]) for lv in self.series.levels]
        keep = [0] + [i for i in range(1, len(dims)) if dims[i][0] < dims[i - 1][0]]  # strictly coarser
        self.levels = [self.levels[i] for i in keep]
        self.axes = [self.axes[i] for i in keep]
        self.level_dimensions = tuple(dims[i] for i in keep)
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in self.level_dimensions)
        self.mpp = self._mpp()
        self.vendor = "ome-tiff" if tif.is_ome else "tiff"
        dtype = self.series.dtype
        self._scale = None
        self._palette = None
        key = self.series.levels[0].keyframe
        if int(key.photometric) == 3 and key.colormap is not None:  # PALETTE: indices into a colour map
            cmap = np.asarray(key.colormap)
            self._palette = (
                (cmap.T / (257.0 if cmap.max() > 255 else 1.0)).round().clip(0, 255).astype(np.uint8)
            )
            return
        if dtype != np.uint8 and dtype.kind in "uif":
            # scale by the brightest value of the coarsest level (bounded: a few MB at most); floats
            # are taken as 0-1 unless they go beyond (then 0-max, like integers)
            lw, lh = self.level_dimensions[-1]
            if lw * lh <= 4096 * 4096:
                top = float(np.nanmax(self._raw(len(self.levels) - 1, 0, 0, lw, lh)))
                if not math.isfinite(top):
                    raise CorruptSlide("TIFF with floating-point pixels that are NaN or infinite")
                if dtype.kind == "f" and top <= 1.0:
                    self._scale = 255.0
                else:
                    self._scale = 255.0 / top if top > 0 else 1.0

    def _memmap(self, level) -> _Mapped | None:
        """An uncompressed level stored in one piece, mapped: a region read touches only its rows.

        Through zarr such a level is one chunk, decoded whole for every region: a flat 16k x 16k
        uncompressed TIFF written with one strip took 2.4 GB and 2 minutes instead of 1 GB and
        8 s, growing with the slide."""
        page = level.keyframe
        if len(level.pages) != 1 or tuple(level.shape) != tuple(page.shape) or not page.is_memmappable:
            return None
        mapped = _Mapped(
            self.path, page.dtype.newbyteorder(self.tif.byteorder), page.dataoffsets[0], page.shape
        )
        try:
            mapped[:1, :1]
        except (OSError, ValueError):
            return None
        return mapped

    def _check_complete(self) -> None:
        """Every tile/strip of every level lies inside the file: a cut download is named as such."""
        size = Path(self.path).stat().st_size
        for lv in self.series.levels:
            for page in lv.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                ends = [o + c for o, c in zip(page.dataoffsets, page.databytecounts) if c]
                if not ends:
                    raise CorruptSlide("truncated or corrupt TIFF file: a level has no image data")
                if max(ends) > size:
                    raise CorruptSlide(
                        f"truncated TIFF file: image data runs to byte {max(ends)} but the file has {size} bytes"
                    )

    def _mpp(self) -> tuple[float, float] | None:
        tif = self.tif
        if tif.is_ome and tif.ome_metadata:
            mpp = _ome_mpp(
                tif.ome_metadata, tif.series.index(self.series) if self.series in tif.series else 0
            )
            if mpp:
                return mpp
        page = self.series.levels[0].keyframe
        aperio = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", str(page.description or ""))
        if aperio and _positive(aperio.group(1)):  # Aperio SVS keeps its scale in the description
            return (float(aperio.group(1)),) * 2
        if aperio:
            self.mpp_note = f"Aperio MPP = {aperio.group(1)}"
        tags = page.tags
        xr, yr, unit = tags.get("XResolution"), tags.get("YResolution"), tags.get("ResolutionUnit")
        if xr is None:
            return None
        xres = _ratio(xr.value)
        yres = _ratio(yr.value) if yr is not None else xres
        unit_v = int(unit.value) if unit is not None else 2
        per_unit = {2: 25400.0, 3: 10000.0}.get(unit_v)
        if (
            per_unit is None
            and tif.is_imagej
            and (tif.imagej_metadata or {}).get("unit") in ("micron", "um", "µm")
        ):
            per_unit = 1.0
        if not per_unit or not xres or not yres:
            return None
        if unit_v == 2 and xres in _DEFAULT_DPI:
            return None
        mx, my = per_unit / xres, per_unit / yres
        return (mx, my) if 0.01 <= mx <= 1000 and 0.01 <= my <= 1000 else None

    def _raw(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        axes, arr = self.axes[level], self.levels[level]
        index, keep = [], []
        for ax in axes:
            if ax == "Y":
                index.append(slice(y, y + h))
                keep.append(ax)
            elif ax == "X":
                index.append(slice(x, x + w))
                keep.append(ax)
            elif ax == "S" or (ax == "C" and "S" not in axes):
                index.append(slice(0, 3))
                keep.append(ax)
            else:
                index.append(0)
        a = np.asarray(arr[tuple(index)])
        order = [keep.index("Y"), keep.index("X")] + [i for i, k in enumerate(keep) if k not in "YX"]
        return a.transpose(order)  # (y, x[, samples or channels])

    def _read(self, level, x, y, w, h) -> np.ndarray:
        raw = self._raw(level, x, y, w, h)
        if self._palette is not None:  # a palette image's pixels are indices, not grey values
            return np.ascontiguousarray(self._palette[np.clip(raw, 0, len(self._palette) - 1)])
        return to_rgb8(raw, self._scale)

    def associated_images(self) -> dict[str, np.ndarray]:
        out = {}
        for s in self.tif.series:
            name = (s.name or "").lower()
            if name in _ASSOCIATED and _yx(s)[0] * _yx(s)[1] <= _MAX_ASSOCIATED_PX:
                a = s.asarray()
                if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
                    a = np.moveaxis(a, 0, -1)
                out[name] = to_rgb8(a)
        return out

    def close(self) -> None:
        self.tif.close()


class _Mapped:
    """An uncompressed image in a file, mapped for each read only: the pages a read touched are
    let go with the mapping, so memory stays that of one region, not of the slide."""

    def __init__(self, path: Path, dtype: np.dtype, offset: int, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.offset, self.shape = path, dtype, int(offset), tuple(shape)

    def __getitem__(self, index) -> np.ndarray:
        m = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape)
        try:
            return np.array(m[index])
        finally:
            m._mmap.close()  # type: ignore[attr-defined]


def _yx(series) -> tuple[int, int]:
    shape = dict(zip(series.axes, series.shape))
    return int(shape.get("Y", 0)), int(shape.get("X", 0))


def _ratio(value) -> float:
    if isinstance(value, tuple) and len(value) == 2:
        return value[0] / value[1] if value[1] else 0.0
    return float(value)


def _ome_mpp(xml: str, index: int) -> tuple[float, float] | None:
    """PhysicalSizeX/Y of the ``index``-th OME Image (default unit µm), in microns."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = [el for el in root.iter() if re.sub(r"^\{.*\}", "", el.tag) == "Pixels"]
    if not pixels:
        return None
    px = pixels[min(index, len(pixels) - 1)]
    vals = []
    for axis in ("X", "Y"):
        size = _positive(px.get(f"PhysicalSize{axis}"))
        factor = _UNIT_UM.get(px.get(f"PhysicalSize{axis}Unit", "µm"))
        vals.append(size * factor if size and factor else None)
    if vals[0] is None:
        return None
    return vals[0], vals[1] or vals[0]


# --------------------------------------------------------------------------- choosing a backend


def sniff(path: Path) -> str:
    """``"dicom"``, ``"tiff"`` or ``"other"`` from the first bytes of the file."""
    if path.is_dir():
        return "other"
    with path.open("rb") as fh:
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head[:2] in (b"II", b"MM") and head[2:4] in (b"*\x00", b"\x00*", b"+\x00", b"\x00+"):
        return "tiff"
    return "other"


def open_reader(path: str | Path, reader: str = "auto") -> SlideReader:
    """Open ``path`` with the backend ``reader`` names (``auto``: the first that reads it).

    Raises InputError (one line) saying whether the file is corrupt/truncated or valid but unsupported.
    """
    from medseg.pathology import readers_dicom as rd

    path = Path(path)
    if reader not in READERS:
        raise InputError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    kind = sniff(path)
    wants = {"tifffile": "tiff", "dicom": "dicom"}.get(reader)
    if wants is not None and kind != wants:  # else "corrupt TIFF" / "corrupt DICOM header" for a valid file
        what = {"tiff": "a TIFF file", "dicom": "a DICOM file"}.get(kind, "neither TIFF nor DICOM")
        raise InputError(
            f"--reader {reader} reads {wants.upper()} files, but this is {what}; use --reader auto",
            path=path,
        )
    if kind == "dicom":
        try:
            rd.check_dicom(path)  # corrupt, truncated or not a slide: said before any backend tries
        except CorruptSlide as exc:
            raise InputError(str(exc), path=path) from None
        except UnsupportedSlide as exc:
            raise InputError(str(exc), path=path) from None
        for level in rd.series_files(path)[1:]:  # the other instances (levels) of a multi-file slide
            try:
                rd.check_dicom(level)
            except CorruptSlide as exc:
                raise InputError(f"its pyramid level {level.name}: {exc}", path=path) from None
            except UnsupportedSlide:
                continue
    elif kind == "tiff":
        from medseg.pathology.tiff_check import check_tiff

        try:
            check_tiff(path)  # a cut copy is named as such, before a reader calls it "unsupported"
        except CorruptSlide as exc:
            raise InputError(str(exc), path=path) from None
    backends = {
        "openslide": [OpenSlideReader],
        "tifffile": [TiffReader],
        "dicom": [rd.WsiDicomReader, rd.PydicomReader],
        "auto": {
            "dicom": [OpenSlideReader, rd.WsiDicomReader, rd.PydicomReader],
            "tiff": [OpenSlideReader, TiffReader],
            "other": [OpenSlideReader],
        }[kind],
    }[reader]
    reasons = []
    for cls in backends:
        try:
            r = cls(path)
        except CorruptSlide as exc:
            raise InputError(str(exc), path=path) from None
        except UnsupportedSlide as exc:
            reasons.append(f"{cls.backend}: {exc}")
            continue
        if reader == "auto" and kind == "tiff" and r.backend == "openslide" and r.vendor == "generic-tiff":
            r = _prefer_tifffile(r, path)
        log.debug("%s: opened with %s", path.name, r.backend)
        return r
    detail = "; ".join(reasons)
    if kind == "dicom":
        raise InputError(f"valid DICOM whole-slide image, but no reader can decode it ({detail})", path=path)
    if kind == "tiff":
        raise InputError(f"valid TIFF file, but no reader supports its layout ({detail})", path=path)
    if reader == "auto" or reader == "openslide":
        raise InputError(_not_a_slide(path), path=path)
    raise InputError(f"not a slide the {reader} reader can open ({detail})", path=path)


_IMAGE_MAGIC = {
    b"\xff\xd8\xff": "a JPEG image",
    b"\x89PNG": "a PNG image",
    b"BM": "a BMP image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (unpack it first)",
}


def _not_a_slide(path: Path) -> str:
    """Why OpenSlide refused a file that is neither TIFF nor DICOM, as precisely as its first bytes tell."""
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes): an interrupted copy or export?"
    with path.open("rb") as fh:
        head = fh.read(8)
    kind = next((v for k, v in _IMAGE_MAGIC.items() if head.startswith(k)), None)
    if kind is not None:
        return (
            f"{kind}, not a whole-slide file (whatever its extension): export the slide from the "
            "scanner software (SVS, NDPI, MRXS, OME-TIFF, DICOM ...)"
        )
    return "not a slide, or a format OpenSlide does not support"


def _samples_openslide_cannot_decode(path: Path) -> bool:
    """Float or 32-bit samples: OpenSlide's generic TIFF driver opens such files, then fails on
    every read (libtiff's RGBA interface handles 8- and 16-bit integers only)."""
    import tifffile

    try:
        with tifffile.TiffFile(str(path)) as tif:
            page = tif.pages.first
            return page.dtype is None or page.dtype.kind == "f" or page.dtype.itemsize > 2
    except Exception:  # noqa: BLE001 - unreadable here: let the readers say why
        return False


def _prefer_tifffile(r: SlideReader, path: Path) -> SlideReader:
    """A generic TIFF that OpenSlide reads without a scale or without a pyramid (an OME-TIFF keeps
    both in places OpenSlide does not look: OME-XML, SubIFDs): tifffile's view wins when it has more."""
    odd = _samples_openslide_cannot_decode(path)
    if r.mpp is not None and r.level_count > 1 and not odd:
        return r
    try:
        t = TiffReader(path)
    except (UnsupportedSlide, CorruptSlide):
        return r
    if odd:  # OpenSlide opens it but fails on every region ("can not handle 32-bit samples")
        r.close()
        return t
    gains_mpp = t.mpp is not None and r.mpp is None
    keeps_mpp = t.mpp is not None or r.mpp is None
    if keeps_mpp and (gains_mpp or t.level_count > r.level_count):
        r.close()
        return t
    t.close()
    return r
