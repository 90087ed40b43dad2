"""Enhanced (multi-frame) CT output: the derived classic slices merged into one Legacy Converted
Enhanced CT Image file by highdicom.

Why highdicom: the per-frame and shared functional groups (plane position/orientation, pixel
measures, pixel value transformation, frame content, dimension index) are easy to get subtly wrong
by hand; highdicom's legacy converter builds them from the classic datasets, which the classic
writer already fills correctly (UIDs, derivation, kernel, window, rescale, SourceImageSequence).
The whole series is held in memory until the file is written (the classic output streams).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from medseg.errors import InputError
from medseg.io.atomic import atomic_path

log = logging.getLogger("medseg.io")

DICOM_FORMATS = ("classic", "enhanced")
ENHANCED_FILE = "ENHANCED_CT.dcm"


def check_dicom_format(name: str) -> str:
    """``name`` if it is a known DICOM output layout, else an InputError listing them."""
    if name not in DICOM_FORMATS:
        raise InputError(f"unknown DICOM output format '{name}': use {' or '.join(DICOM_FORMATS)}")
    return name


def write_enhanced_ct(datasets: Sequence, out_file: Path, *, series_uid: str, series_number: int) -> str:
    """Write the derived classic CT ``datasets`` (one per slice, in slice order) as one Legacy
    Converted Enhanced CT Image file at ``out_file`` (atomically); return its SOP Instance UID."""
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import ExplicitVRLittleEndian

    from medseg.io.dicom import new_uid

    if not datasets:
        raise InputError("no slices to write", path=out_file)
    sop_uid = new_uid()
    image = LegacyConvertedEnhancedCTImage(
        legacy_datasets=list(datasets),
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_uid,
        instance_number=1,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    with atomic_path(out_file) as tmp:
        image.save_as(tmp, enforce_file_format=True)
    log.debug("wrote %d frames as Legacy Converted Enhanced CT -> %s", len(datasets), out_file)
    return sop_uid
