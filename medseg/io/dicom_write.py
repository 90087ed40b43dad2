"""Writing CT DICOM: derived slices of a converted series (same patient, study and geometry, new
UIDs, pixels as int16 HU) and whole synthetic series. Reading is :mod:`medseg.io.dicom`."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.io.dicom import new_uid
from medseg.io.dicom_objects import CT_IMAGE_STORAGE, source_of


def _set_pixels_int16(ds, hu: np.ndarray) -> None:
    from pydicom.uid import ExplicitVRLittleEndian

    stored = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    for tag in (
        "SmallestImagePixelValue",
        "LargestImagePixelValue",
        "PixelPaddingValue",
        "PixelPaddingRangeLimit",
        "SmallestPixelValueInSeries",
        "LargestPixelValueInSeries",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "ModalityLUTSequence",  # readers prefer it to the new slope 1 / intercept 0
    ):
        if tag in ds:
            del ds[tag]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = "1"
    ds.RescaleIntercept = "0"
    ds.RescaleType = "HU"
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


def _file_meta(sop_class: str, sop_uid: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


@dataclass
class Derivation:
    """How a derived series relates to its source."""

    series_uid: str
    description_suffix: str
    derivation_description: str
    kernel: str | None = None
    series_number_offset: int = 1000


def write_derived_slice(source_ds, hu: np.ndarray, out_file: Path, derivation: Derivation) -> str:
    """Write ``hu`` as a derived copy of ``source_ds`` (same patient/study/geometry); return its SOP UID."""
    ds = derived_slice(source_ds, hu, derivation)
    ds.save_as(out_file, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


# lossy transfer syntaxes and the LossyImageCompressionMethod term that names them
_LOSSY_METHODS = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG baseline
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG extended
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.91": "ISO_15444_1",  # JPEG 2000 (lossy allowed)
    "1.2.840.10008.1.2.4.203": "ISO_15444_15",  # HTJ2K (lossy allowed)
}


def _keep_lossy_history(ds, source_ds) -> None:
    """The output is stored uncompressed, but pixels once compressed lossily stay lossy: say so
    (PS3.3 C.7.6.1.1.5) when the source's transfer syntax was lossy and its header did not."""
    meta = getattr(source_ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    method = _LOSSY_METHODS.get(syntax)
    if method is None or str(source_ds.get("LossyImageCompression", "")) == "01":
        return
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method


def derived_slice(source_ds, hu: np.ndarray, derivation: Derivation):
    """The derived classic CT dataset of one slice, in memory (written per slice, or merged into an
    Enhanced CT by :mod:`medseg.io.dicom_enhanced`)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = source_ds.copy()
    if "PixelData" in ds:
        del ds["PixelData"]
    ds.remove_private_tags()  # vendor tags may describe the source reconstruction
    sop_uid = new_uid()
    src_class, src_instance, src_frame = source_of(source_ds)
    src_ref = Dataset()
    src_ref.ReferencedSOPClassUID = src_class
    src_ref.ReferencedSOPInstanceUID = src_instance
    if src_frame is not None:  # a frame of an Enhanced CT: the output is a classic CT image
        src_ref.ReferencedFrameNumber = src_frame
    ds.SourceImageSequence = Sequence([src_ref])
    # a frame of an Enhanced CT gives a classic CT image; an empty (0008,0016) is taken from the file meta
    ds.SOPClassUID = CT_IMAGE_STORAGE if src_frame is not None else (src_class or CT_IMAGE_STORAGE)
    ds.file_meta = _file_meta(str(ds.SOPClassUID), sop_uid)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = derivation.series_uid
    ds.SeriesNumber = int(source_ds.get("SeriesNumber", 0) or 0) + derivation.series_number_offset
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    if derivation.kernel is not None:
        ds.ConvolutionKernel = derivation.kernel
    ds.DerivationDescription = derivation.derivation_description[:1024]
    suffix = derivation.description_suffix[:64]
    ds.SeriesDescription = (str(source_ds.get("SeriesDescription", ""))[: 64 - len(suffix)] + suffix).strip()
    _keep_lossy_history(ds, source_ds)
    now = _dt.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SoftwareVersions = f"medseg {__version__}"
    _set_pixels_int16(ds, hu)
    return ds


def write_ct_series(
    out_dir: Path,
    volume_hu: np.ndarray,
    *,
    spacing_zyx: tuple[float, float, float],
    kernel: str,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    series_number: int,
    description: str,
    patient_id: str = "SYNTH0001",
    patient_name: str = "Synthetic^Phantom",
    rescale_intercept: float = -1024.0,
    file_prefix: str = "IM",
) -> list[Path]:
    """Write a new (original) CT series from a HU volume; used for phantoms and tests."""
    from pydicom.dataset import Dataset

    out_dir.mkdir(parents=True, exist_ok=True)
    nz, ny, nx = volume_hu.shape
    dz, dy, dx = spacing_zyx
    files = []
    for z in range(nz):
        sop_uid = new_uid(series_uid, str(z))
        ds = Dataset()
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.Modality = "CT"
        ds.PatientName, ds.PatientID = patient_name, patient_id
        ds.PatientBirthDate, ds.PatientSex = "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.SeriesNumber, ds.InstanceNumber = series_number, z + 1
        ds.SeriesDescription = description
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Manufacturer = "medseg synthetic phantom (not for clinical use)"
        ds.ConvolutionKernel = kernel
        ds.KVP, ds.SliceThickness = "120", f"{dz:g}"
        ds.PixelSpacing = [f"{dy:g}", f"{dx:g}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [f"{-(nx - 1) / 2 * dx:.3f}", f"{-(ny - 1) / 2 * dy:.3f}", f"{z * dz:.3f}"]
        ds.SliceLocation = f"{z * dz:.3f}"
        ds.PositionReferenceIndicator = ""
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        stored = np.clip(np.rint(volume_hu[z] - rescale_intercept), -32768, 32767).astype(np.int16)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ny, nx
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{rescale_intercept:g}", "1", "HU"
        ds.PixelData = stored.tobytes()
        file = out_dir / f"{file_prefix}{z + 1:05d}.dcm"
        ds.save_as(file, enforce_file_format=True)
        files.append(file)
    return files
