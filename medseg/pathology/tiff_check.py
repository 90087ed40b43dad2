"""Structure check of a TIFF-based slide (SVS, generic TIFF, OME-TIFF, BigTIFF) before any reader opens it.

A slide copied or downloaded only in part still starts with a valid TIFF header, so readers answer
"unsupported layout" (the first directory lies past the end), "no microns-per-pixel" (the OME-XML
description was cut off) or fail tile by tile later. Walking the directory chain once tells the
user the truth: the file is truncated; download or copy it again.

Only offsets are followed (no pixel is decoded): every image file directory (IFD), its SubIFDs,
every tag value stored outside the directory, and the end of every strip/tile must lie inside
the file. Offsets that wrap (NDPI files over 4 GB keep 32-bit offsets) can only point lower, so
they never make a whole file look truncated.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from medseg.pathology.readers import CorruptSlide

# TIFF field types -> size in bytes of one value
_TYPE_SIZE = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_OFFSET_TAGS = {273: 279, 324: 325}  # StripOffsets -> StripByteCounts, TileOffsets -> TileByteCounts
_SUBIFDS = 330
_TAG_NAMES = {270: "image description", 273: "strip offsets", 279: "strip sizes", 324: "tile offsets",
              325: "tile sizes", 347: "JPEG tables", 330: "sub-image list"}  # fmt: skip
_MAX_IFDS = 100_000  # a loop in the chain (corrupt file) stops here


def _truncated(what: str, end: int, size: int) -> CorruptSlide:
    return CorruptSlide(
        f"truncated TIFF file: {what} runs to byte {end} but the file has {size} bytes "
        "(an incomplete copy or download? copy or export it again)"
    )


class _Walker:
    def __init__(self, fh, size: int, order: str, big: bool) -> None:
        self.fh, self.size, self.order, self.big = fh, size, order, big
        self.seen: set[int] = set()

    def _read(self, offset: int, n: int, what: str) -> bytes:
        if offset + n > self.size:
            raise _truncated(what, offset + n, self.size)
        self.fh.seek(offset)
        return self.fh.read(n)

    def _values(self, typ: int, count: int, raw: bytes, inline: int, what: str) -> np.ndarray:
        """The integer values of an offset/count tag (types SHORT, LONG, LONG8, IFD, IFD8)."""
        fmt = {3: "H", 4: "I", 13: "I", 16: "Q", 17: "q", 18: "Q"}.get(typ)
        if fmt is None:
            return np.zeros(0, np.int64)
        n = count * _TYPE_SIZE[typ]
        data = raw[:n] if n <= inline else self._read(self._offset(raw), n, what)
        return np.frombuffer(data, np.dtype(self.order + fmt)).astype(np.int64, copy=False)

    def _offset(self, raw: bytes) -> int:
        return struct.unpack(self.order + ("Q" if self.big else "I"), raw[: 8 if self.big else 4])[0]

    def walk(self, offset: int, what: str) -> None:
        """Follow the IFD chain from ``offset`` (and SubIFDs): CorruptSlide at the first thing past the end."""
        count_fmt, entry_size, inline = ("Q", 20, 8) if self.big else ("H", 12, 4)
        index = 0
        while offset and offset not in self.seen and len(self.seen) < _MAX_IFDS:
            self.seen.add(offset)
            label = f"{what} {index}"
            count = struct.unpack(self.order + count_fmt, self._read(offset, 8 if self.big else 2, label))[0]
            start = offset + (8 if self.big else 2)
            table = self._read(start, count * entry_size + inline, label)
            tags: dict[int, tuple[int, int, bytes]] = {}
            for i in range(count):
                entry = table[i * entry_size : (i + 1) * entry_size]
                code, typ = struct.unpack(self.order + "HH", entry[:4])
                n = struct.unpack(self.order + ("Q" if self.big else "I"), entry[4 : 12 if self.big else 8])[
                    0
                ]
                raw = entry[12:] if self.big else entry[8:]
                tags[code] = (typ, n, raw)
                nbytes = n * _TYPE_SIZE.get(typ, 1)
                if nbytes > inline and self._offset(raw) + nbytes > self.size:
                    tag = f"the {_TAG_NAMES[code]} (tag {code})" if code in _TAG_NAMES else f"tag {code}"
                    raise _truncated(f"{tag} of {label}", self._offset(raw) + nbytes, self.size)
            for off_tag, cnt_tag in _OFFSET_TAGS.items():
                if off_tag in tags and cnt_tag in tags:
                    offs = self._values(*tags[off_tag], inline, label)
                    cnts = self._values(*tags[cnt_tag], inline, label)
                    if len(offs) and len(offs) == len(cnts):
                        ends = np.where(cnts > 0, offs + cnts, 0)
                        if ends.max() > self.size:
                            raise _truncated(f"the image data of {label}", int(ends.max()), self.size)
            if _SUBIFDS in tags:
                for sub in self._values(*tags[_SUBIFDS], inline, label):
                    self.walk(int(sub), f"sub-image of {label}")
            offset = self._offset(table[count * entry_size :])
            index += 1


def check_tiff(path: str | Path) -> None:
    """CorruptSlide (one sentence) when the TIFF at ``path`` is cut short; nothing when it is whole."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(16)
        if len(head) < 8:
            raise _truncated("the TIFF header", 8, size)
        order = "<" if head[:2] == b"II" else ">"
        version = struct.unpack(order + "H", head[2:4])[0]
        big = version == 43
        if big and len(head) < 16:
            raise _truncated("the BigTIFF header", 16, size)
        first = struct.unpack(order + "Q", head[8:16])[0] if big else struct.unpack(order + "I", head[4:8])[0]
        if first == 0:
            raise CorruptSlide("corrupt TIFF file: the header points to no image")
        if first + 2 > size:
            raise _truncated("the first image directory", first + 2, size)
        if not big and size > 2**32:  # NDPI & co: 32-bit offsets that wrap; only the header is checked
            return
        _Walker(fh, size, order, big).walk(first, "image directory")
