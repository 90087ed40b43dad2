"""What a DICOM object in a study folder is: an image to convert, a frame of a multi-frame
(Enhanced CT) image, or a secondary object (SEG, RTSTRUCT, SR, PR, KO, secondary capture,
localizer) that series selection leaves out.
"""

from __future__ import annotations

import copy

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage (multi-frame)
LEGACY_ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT Image Storage
# objects that sit next to images in a study but are not images to convert: by SOP Class ...
SECONDARY_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "SEG",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66.7": "SEG",  # Label Map Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.66": "RAW",
    "1.2.840.10008.5.1.4.1.1.66.1": "REG",
    "1.2.840.10008.5.1.4.1.1.66.2": "REG",
    "1.2.840.10008.5.1.4.1.1.66.3": "FID",
    "1.2.840.10008.5.1.4.1.1.66.5": "SURFACE",
    "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT",
    "1.2.840.10008.5.1.4.1.1.481.2": "RTDOSE",
    "1.2.840.10008.5.1.4.1.1.481.5": "RTPLAN",
    "1.2.840.10008.5.1.4.1.1.104.1": "DOC",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.88.59": "KO",
    "1.2.840.10008.5.1.4.1.1.7": "SC",  # secondary capture (screenshots, dose sheets)
}
SECONDARY_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "SR",  # structured reports
    "1.2.840.10008.5.1.4.1.1.11.": "PR",  # presentation states
    "1.2.840.10008.5.1.4.1.1.7.": "SC",  # multi-frame secondary capture
    "1.2.840.10008.5.1.4.1.1.481.": "RT",
}
# ... or by Modality
SECONDARY_MODALITIES = {
    "SEG",
    "RTSTRUCT",
    "RTDOSE",
    "RTPLAN",
    "RTRECORD",
    "SR",
    "PR",
    "KO",
    "REG",
    "DOC",
    "FID",
}


def _meta_value(ds, keyword: str) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(meta.get(keyword, "") or "").strip() if meta is not None else ""


def sop_class_of(ds) -> str:
    """The SOP Class UID of ``ds``: (0008,0016), else the file meta's MediaStorageSOPClassUID, else CT
    Image Storage for a CT image. Anonymised research data often carry an empty (0008,0016) while the
    file meta still says what the object is; '' when nothing says it."""
    value = str(ds.get("SOPClassUID", "") or "").strip()
    if value:
        return value
    value = _meta_value(ds, "MediaStorageSOPClassUID")
    if value:
        return value
    if str(ds.get("Modality", "")).upper() == "CT" and "Rows" in ds:
        return CT_IMAGE_STORAGE
    return ""


def sop_instance_of(ds) -> str:
    """The SOP Instance UID: (0008,0018), else the file meta's MediaStorageSOPInstanceUID."""
    return str(ds.get("SOPInstanceUID", "") or "").strip() or _meta_value(ds, "MediaStorageSOPInstanceUID")


def secondary_kind(ds) -> str | None:
    """'SEG', 'SR', 'LOCALIZER', ... for objects that are not images to convert; None for an image."""
    sop = sop_class_of(ds)
    if sop in SECONDARY_SOP_CLASSES:
        return SECONDARY_SOP_CLASSES[sop]
    for prefix, kind in SECONDARY_SOP_PREFIXES.items():
        if sop.startswith(prefix):
            return kind
    modality = str(ds.get("Modality", "")).upper()
    if modality in SECONDARY_MODALITIES:
        return modality
    if "Rows" not in ds:
        return modality or "non-image"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type or "SCOUT" in image_type or "TOPOGRAM" in image_type:
        return "LOCALIZER"
    return None


def is_multiframe(ds) -> bool:
    """Enhanced (functional groups) CT, or any image holding several frames."""
    sop = sop_class_of(ds)
    return sop in (ENHANCED_CT, LEGACY_ENHANCED_CT) or int(ds.get("NumberOfFrames", 1) or 1) > 1


# functional-group macros of an Enhanced CT frame -> the classic attributes they hold
FRAME_MACROS = (
    ("PlanePositionSequence", ("ImagePositionPatient",)),
    ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
    ("PixelMeasuresSequence", ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices")),
    ("PixelValueTransformationSequence", ("RescaleIntercept", "RescaleSlope", "RescaleType")),
    ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth")),
    ("CTReconstructionSequence", ("ConvolutionKernel", "ReconstructionAlgorithm")),
    ("CTExposureSequence", ("ExposureTime", "XRayTubeCurrent", "CTDIvol")),
    # Legacy Converted Enhanced CT (e.g. ct-convert --dicom-format enhanced) has no CT Reconstruction
    # group: the kernel sits among the converted attributes
    ("UnassignedSharedConvertedAttributesSequence", ("ConvolutionKernel",)),
)
_NOT_COPIED = {
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "NumberOfFrames",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "DimensionIndexSequence",
    "DimensionOrganizationSequence",
}


def frame_headers(ds) -> list:
    """One classic CT header per frame of a multi-frame (Enhanced CT) dataset read without pixels.

    Each frame's position, orientation, pixel measures, rescale, window and kernel come from its
    per-frame functional groups, else from the shared ones. The header says CT Image Storage (the
    derived output is a classic series) and remembers its source as ``_medseg_source`` = (SOP class,
    SOP instance, 1-based frame number) for the output's SourceImageSequence.
    """
    from pydicom.dataset import Dataset

    n = int(ds.get("NumberOfFrames", 1) or 1)
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared = shared_seq[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    base = [elem for elem in ds if elem.keyword not in _NOT_COPIED]
    source = (sop_class_of(ds), sop_instance_of(ds))
    file_meta = getattr(ds, "file_meta", None)
    frames = []
    for i in range(n):
        groups = per_frame[i] if i < len(per_frame) else Dataset()
        frame = Dataset()  # its own elements: setting a value changes the element object in place
        if file_meta is not None:
            frame.file_meta = file_meta  # the file's transfer syntax, for the decoder check
        for elem in base:
            frame.add(copy.copy(elem))
        for macro, keywords in FRAME_MACROS:
            item_seq = groups.get(macro) or shared.get(macro)
            if not item_seq:
                continue
            for keyword in keywords:
                if keyword in item_seq[0]:
                    setattr(frame, keyword, item_seq[0][keyword].value)
        frame_type = groups.get("CTImageFrameTypeSequence") or shared.get("CTImageFrameTypeSequence")
        if frame_type and "FrameType" in frame_type[0]:
            frame.ImageType = frame_type[0].FrameType
        frame.SOPClassUID = CT_IMAGE_STORAGE
        frame.InstanceNumber = i + 1
        frame._medseg_source = (*source, i + 1)
        frames.append(frame)
    return frames


def source_of(ds) -> tuple[str, str, int | None]:
    """(SOP class, SOP instance, frame number or None) that a derived image references."""
    return getattr(ds, "_medseg_source", None) or (sop_class_of(ds), sop_instance_of(ds), None)


def is_frame(ds) -> bool:
    return getattr(ds, "_medseg_source", None) is not None
