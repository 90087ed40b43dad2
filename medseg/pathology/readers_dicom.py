"""DICOM whole-slide images: a header check that tells corrupt from unsupported, wsidicom, pydicom.

A DICOM WSI is a series of instances (one per pyramid level, plus label/overview images); each holds
tiles as frames, in raster order (TILED_FULL) or placed by per-frame positions (TILED_SPARSE).
``wsidicom`` (Sectra/IMI, Apache-2.0) reads both layouts, multi-instance series and many codecs; the
pydicom backend here reads frame by frame what wsidicom refuses but pydicom decodes (e.g. a missing
ImageType), from byte offsets it finds once, so memory stays one frame per tile read.
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from medseg.pathology.readers import CorruptSlide, SlideReader, UnsupportedSlide, to_rgb8

log = logging.getLogger("medseg.pathology")

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage
_NON_LEVEL = ("LABEL", "OVERVIEW", "THUMBNAIL")
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}  # implicit / explicit VR little endian
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "ImageType",
    "TotalPixelMatrixColumns",
    "TotalPixelMatrixRows",
]


@dataclass
class DicomInfo:
    """What the header says about one instance, and where each frame's bytes are."""

    path: Path
    ds: object  # pydicom Dataset without pixel data
    width: int
    height: int
    tile_w: int
    tile_h: int
    n_frames: int
    frames: list[list[tuple[int, int]]] = field(default_factory=list)  # per frame: (offset, length) pieces
    encapsulated: bool = False


def _read_header(path: Path):
    import pydicom

    with path.open("rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged header is said in one line below, not as warnings
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged headers
            raise CorruptSlide(
                f"corrupt DICOM header: {str(exc).splitlines()[0] if str(exc) else exc}"
            ) from None
        return ds, fp.tell()


def check_dicom(path: Path) -> DicomInfo:
    """Header and pixel-data check of one instance: CorruptSlide when frames are missing or cut,
    UnsupportedSlide when it is valid DICOM but not a VL Whole Slide Microscopy image."""
    ds, pos = _read_header(path)
    sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if not sop:
        raise CorruptSlide("DICOM header without a SOP Class UID: damaged, or not an image file")
    if sop != WSI_SOP_CLASS:
        from pydicom.uid import UID

        name = UID(sop).name or sop
        raise UnsupportedSlide(f"valid DICOM, but not a VL Whole Slide Microscopy image ({name})")
    size = path.stat().st_size
    if pos >= size:
        raise CorruptSlide("truncated DICOM: the file ends before the pixel data")
    try:
        width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
        tile_w, tile_h = int(ds.Columns), int(ds.Rows)
    except (AttributeError, TypeError, ValueError):
        raise CorruptSlide("DICOM WSI without TotalPixelMatrixColumns/Rows or Rows/Columns") from None
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    info = DicomInfo(path, ds, width, height, tile_w, tile_h, n_frames)
    ts = str(ds.file_meta.get("TransferSyntaxUID", "1.2.840.10008.1.2.1"))
    with path.open("rb") as fp:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8 or head[:4] != b"\xe0\x7f\x10\x00":
            raise CorruptSlide(f"truncated DICOM: no pixel data ({n_frames} frames declared)")
        if ts == "1.2.840.10008.1.2":
            length, start = struct.unpack("<I", head[4:8])[0], pos + 8
        else:
            fp.seek(pos + 8)
            length, start = struct.unpack("<I", fp.read(4))[0], pos + 12
        if length != 0xFFFFFFFF:  # native frames, back to back
            if ts not in _NATIVE:
                raise UnsupportedSlide(f"valid DICOM WSI with an unsupported transfer syntax ({ts})")
            frame_bytes = tile_w * tile_h * int(ds.SamplesPerPixel) * (int(ds.BitsAllocated) // 8)
            present = min(length, size - start) // max(1, frame_bytes)
            if present < n_frames:
                raise CorruptSlide(
                    f"truncated DICOM: NumberOfFrames is {n_frames} but the pixel data holds {present} frames"
                )
            info.frames = [[(start + i * frame_bytes, frame_bytes)] for i in range(n_frames)]
            return info
        info.encapsulated = True
        bot, fragments = _items(fp, start, size, n_frames)
    if bot:
        bounds = [*bot, None]
        base = fragments[0][0] - 8 if fragments else 0
        groups: list[list[tuple[int, int]]] = []
        for i in range(len(bot)):
            lo, hi = base + bounds[i], (base + bounds[i + 1]) if bounds[i + 1] is not None else math.inf
            groups.append([f for f in fragments if lo <= f[0] - 8 < hi])
    elif len(fragments) == n_frames:
        groups = [[f] for f in fragments]
    elif n_frames == 1:
        groups = [fragments]
    else:
        groups = [[f] for f in fragments] if len(fragments) < n_frames else []
    if len(groups) < n_frames or any(not g for g in groups):
        present = sum(1 for g in groups if g)
        raise CorruptSlide(
            f"truncated DICOM: NumberOfFrames is {n_frames} but the pixel data holds {present} frames"
        )
    info.frames = groups
    return info


def _items(fp, start: int, size: int, n_frames: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Basic Offset Table and (offset, length) of each fragment, seeking over the data."""
    fp.seek(start)
    bot: list[int] = []
    fragments: list[tuple[int, int]] = []
    first = True
    while True:
        head = fp.read(8)
        if len(head) < 8:
            raise CorruptSlide(
                f"truncated DICOM: the pixel data stops after {max(0, len(fragments))} of {n_frames} frames"
            )
        tag, length = head[:4], struct.unpack("<I", head[4:8])[0]
        if tag == b"\xfe\xff\xdd\xe0":  # sequence delimiter
            return bot, fragments
        if tag != b"\xfe\xff\x00\xe0":
            raise CorruptSlide("corrupt DICOM: damaged encapsulated pixel data")
        off = fp.tell()
        if off + length > size:
            raise CorruptSlide(
                f"truncated DICOM: the pixel data stops inside frame {len(fragments) + 1} of {n_frames}"
            )
        if first:
            bot = list(struct.unpack(f"<{length // 4}I", fp.read(length))) if length else []
            first = False
        else:
            fragments.append((off, length))
            fp.seek(off + length)


def series_files(path: Path) -> list[Path]:
    """``path`` and the other DICOM files beside it of the same series (a multi-instance pyramid)."""
    import pydicom

    try:
        uid = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]).get(
            "SeriesInstanceUID"
        )
    except Exception:  # noqa: BLE001
        return [path]
    out = [path]
    for q in sorted(path.parent.iterdir()):
        if q == path or not q.is_file() or q.suffix.lower() not in ("", ".dcm", ".dicom"):
            continue
        try:
            h = pydicom.dcmread(q, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM: not part of the slide
            continue
        if uid is not None and h.get("SeriesInstanceUID") == uid:
            out.append(q)
    return out


def _mpp_from(ds) -> tuple[float, float] | None:
    """(x, y) microns per pixel from PixelSpacing (row, column spacing in mm) in the shared groups."""
    try:
        ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        row, col = float(ps[0]) * 1000, float(ps[1]) * 1000
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return (col, row) if col > 0 and row > 0 else None


def volume_mpp(path: Path) -> tuple[float, float, str] | None:
    """(x, y) microns per pixel from ImagedVolumeWidth/Height (mm) over TotalPixelMatrixColumns/Rows
    of the series' finest level, with a sentence saying so; None when they are absent or not > 0.

    Why: PixelSpacing is the scale a WSI should carry, but some exporters leave it out while
    writing the imaged volume; width mm / total pixel columns is then the same number (type 1 in
    the VL Whole Slide Microscopy IOD, so it is there whenever the file is conformant).
    """
    import pydicom

    best = None
    for q in series_files(path):
        try:
            ds = pydicom.dcmread(q, stop_before_pixels=True)
            cols, rows = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
            w_mm, h_mm = float(ds.ImagedVolumeWidth), float(ds.ImagedVolumeHeight)
        except Exception:  # noqa: BLE001 - absent or unreadable: not a scale
            continue
        kind = [str(v).upper() for v in (ds.get("ImageType") or [])]
        if any(k in kind for k in _NON_LEVEL) or cols <= 0 or rows <= 0:
            continue
        if best is None or cols > best[0]:
            best = (cols, rows, w_mm, h_mm)
    if best is None:
        return None
    cols, rows, w_mm, h_mm = best
    mx, my = w_mm * 1000 / cols, h_mm * 1000 / rows
    if not (math.isfinite(mx) and math.isfinite(my) and mx > 0 and my > 0):
        return None
    text = (
        f"no PixelSpacing: {(mx + my) / 2:.4g} um/px taken from ImagedVolumeWidth/Height "
        f"({w_mm:g} x {h_mm:g} mm over {cols} x {rows} px)"
    )
    return mx, my, text


class _DicomLevels(SlideReader):
    """Levels sorted finest first, downsamples from their sizes."""

    def _set_levels(self, sizes: list[tuple[int, int]]) -> None:
        self.level_dimensions = tuple(sizes)
        w0, h0 = sizes[0]
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2 for w, h in sizes)


class WsiDicomReader(_DicomLevels):
    backend = "wsidicom"

    def __init__(self, path: Path) -> None:
        try:
            from wsidicom import WsiDicom
        except ImportError:
            raise UnsupportedSlide("wsidicom is not installed (pip install wsidicom)") from None
        self.path = path
        try:
            self.wsi = WsiDicom.open(series_files(path))
        except Exception as exc:  # noqa: BLE001 - wsidicom raises its own types for unsupported files
            first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
            raise UnsupportedSlide(f"wsidicom cannot read it ({first})") from None
        self.lv = sorted(self.wsi.levels, key=lambda lv: -lv.size.width)
        self._set_levels([(lv.size.width, lv.size.height) for lv in self.lv])
        mpp = self.lv[0].mpp
        self.mpp = (float(mpp.width), float(mpp.height)) if mpp and mpp.width > 0 and mpp.height > 0 else None
        self.vendor = "dicom"

    def _read(self, level, x, y, w, h) -> np.ndarray:
        a = self.wsi.read_region((x, y), self.lv[level].level, (w, h), as_array=True)
        return to_rgb8(np.asarray(a))

    def associated_images(self) -> dict[str, np.ndarray]:
        out = {}
        for name, fn in (("label", self.wsi.read_label), ("macro", self.wsi.read_overview)):
            try:
                out[name] = to_rgb8(np.asarray(fn().convert("RGB")))
            except Exception:  # noqa: BLE001 - absent in this series
                pass
        return out

    def close(self) -> None:
        self.wsi.close()


class PydicomReader(_DicomLevels):
    """Frame by frame from byte offsets found once; frames decoded with imagecodecs when compressed."""

    backend = "pydicom"

    def __init__(self, path: Path) -> None:
        infos = []
        for q in series_files(path):
            try:
                info = check_dicom(q)
            except (UnsupportedSlide, CorruptSlide):
                if q == path:
                    raise
                continue
            kind = [str(v).upper() for v in (info.ds.get("ImageType") or [])]
            if any(k in kind for k in _NON_LEVEL):
                continue
            infos.append(info)
        if not infos:
            raise UnsupportedSlide("no pyramid level in this DICOM series")
        infos.sort(key=lambda i: -i.width)
        self.path = path
        self.infos = infos
        self.maps = [self._frame_map(i) for i in infos]
        self._set_levels([(i.width, i.height) for i in infos])
        self.mpp = _mpp_from(infos[0].ds)
        self.vendor = "dicom"
        self._lock = threading.Lock()
        self._files = [i.path.open("rb") for i in infos]
        self._decode = lru_cache(maxsize=64)(self._decode_frame)

    @staticmethod
    def _frame_map(info: DicomInfo) -> dict[tuple[int, int], int]:
        ds, tw, th = info.ds, info.tile_w, info.tile_h
        cols = math.ceil(info.width / tw)
        if str(ds.get("DimensionOrganizationType", "TILED_FULL")).upper() != "TILED_SPARSE":
            rows = math.ceil(info.height / th)
            return {
                (r, c): r * cols + c for r in range(rows) for c in range(cols) if r * cols + c < info.n_frames
            }
        out: dict[tuple[int, int], int] = {}
        for i, fg in enumerate(ds.get("PerFrameFunctionalGroupsSequence") or []):
            try:
                pp = fg.PlanePositionSlideSequence[0]
                r = (int(pp.RowPositionInTotalImagePixelMatrix) - 1) // th
                c = (int(pp.ColumnPositionInTotalImagePixelMatrix) - 1) // tw
            except (AttributeError, IndexError, TypeError, ValueError):
                raise CorruptSlide("TILED_SPARSE DICOM frame without a PlanePositionSlideSequence") from None
            out.setdefault((r, c), i)  # first focal plane / optical path
        return out

    def _decode_frame(self, level: int, index: int) -> np.ndarray:
        info = self.infos[level]
        with self._lock:
            fp = self._files[level]
            data = b""
            for off, n in info.frames[index]:
                fp.seek(off)
                data += fp.read(n)
        if not info.encapsulated:
            spp = int(info.ds.SamplesPerPixel)
            dtype = np.uint8 if int(info.ds.BitsAllocated) == 8 else np.uint16
            a = np.frombuffer(data, dtype).reshape(info.tile_h, info.tile_w, spp)
            if spp == 3 and str(info.ds.get("PhotometricInterpretation", "RGB")).startswith("YBR_FULL"):
                from pydicom.pixels import convert_color_space

                a = convert_color_space(a, "YBR_FULL", "RGB")
            return to_rgb8(a)
        import imagecodecs

        try:
            return to_rgb8(np.asarray(imagecodecs.imread(data)))
        except Exception as exc:  # noqa: BLE001 - codec errors have many types
            raise CorruptSlide(f"cannot decode DICOM frame {index + 1}: {exc}") from None

    def _read(self, level, x, y, w, h) -> np.ndarray:
        info, fmap = self.infos[level], self.maps[level]
        tw, th = info.tile_w, info.tile_h
        out = np.full((h, w, 3), 255, np.uint8)
        for r in range(y // th, (y + h - 1) // th + 1):
            for c in range(x // tw, (x + w - 1) // tw + 1):
                idx = fmap.get((r, c))
                if idx is None:
                    continue  # sparse: no frame here, glass
                tile = self._decode(level, idx)
                ty0, tx0 = r * th, c * tw
                ys, xs = max(y, ty0), max(x, tx0)
                ye, xe = min(y + h, ty0 + th), min(x + w, tx0 + tw)
                out[ys - y : ye - y, xs - x : xe - x] = tile[ys - ty0 : ye - ty0, xs - tx0 : xe - tx0]
        return out

    def close(self) -> None:
        for f in self._files:
            f.close()
