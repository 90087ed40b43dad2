"""A study folder as PACS exports it: the one axial CT series is found among SEG, SR and localizers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.errors import InputError
from medseg.io.dicom import open_series, scan_dicom
from medseg.io.dicom_write import write_ct_series

from .conftest import run_cli, volume
from .test_bad_input import one_line_error

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _save(ds: Dataset, path: Path, sop_class: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _common(ct: pydicom.Dataset, sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, generate_uid(), modality
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ct.StudyInstanceUID, generate_uid()
    ds.PatientName, ds.PatientID = ct.PatientName, ct.PatientID
    ds.SeriesNumber, ds.InstanceNumber = 99, 1
    return ds


def write_seg(ct: pydicom.Dataset, path: Path, frames: int = 2) -> None:
    """A minimal DICOM SEG-like object (binary frames, Modality SEG, Segmentation Storage)."""
    ds = _common(ct, SEG_STORAGE, "SEG")
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.FrameOfReferenceUID = ct.FrameOfReferenceUID
    ds.Rows, ds.Columns, ds.NumberOfFrames = ct.Rows, ct.Columns, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.SegmentationType = "BINARY"
    ds.PixelData = np.packbits(np.ones(frames * ct.Rows * ct.Columns, np.uint8), bitorder="little").tobytes()
    _save(ds, path, SEG_STORAGE)


def write_sr(ct: pydicom.Dataset, path: Path) -> None:
    ds = _common(ct, BASIC_TEXT_SR, "SR")
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    _save(ds, path, BASIC_TEXT_SR)


def write_localizer(ct_folder: Path, out: Path) -> None:
    """A CT scout: one image of another series with ImageType ORIGINAL\\PRIMARY\\LOCALIZER."""
    ds = pydicom.dcmread(next(ct_folder.glob("*.dcm")))
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # coronal, as a topogram is
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out)


@pytest.fixture
def study(small_exam_dir, tmp_path) -> Path:
    """CT series + SEG + SR + localizer in one study folder, as a PACS export puts them."""
    folder = tmp_path / "study"
    shutil.copytree(small_exam_dir / "B50f", folder / "ct")
    ct = pydicom.dcmread(next((folder / "ct").glob("*.dcm")), stop_before_pixels=True)
    write_seg(ct, folder / "seg" / "seg.dcm")
    write_sr(ct, folder / "sr" / "report.dcm")
    write_localizer(folder / "ct", folder / "scout" / "scout.dcm")
    return folder


def test_study_with_seg_sr_and_localizer_picks_the_ct_series(study, small_exam_dir):
    groups, skipped = scan_dicom(study)
    assert len(groups) == 1 and not skipped  # SEG, SR and the scout are not images to convert
    series = open_series(study)
    assert len(series.files) == 5 and all("ct" == f.parent.name for f in series.files)
    assert any("SEG" in n for n in series.ignored) and any("LOCALIZER" in n for n in series.ignored)
    np.testing.assert_array_equal(volume(study), volume(small_exam_dir / "B50f"))


def test_study_converts_without_series_uid(study, tiny_weights, tmp_path):
    out = tmp_path / "out"
    r = run_cli(
        "ct-convert", study, "--from", "B50f", "--to", "B30f", "--weights", tiny_weights,
        "--out", out, "--device", "cpu", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert len(list(out.glob("*.dcm"))) == 5


def test_the_only_axial_series_is_picked_among_reformats(small_exam_dir, tmp_path):
    """A coronal reformat next to the axial series is left out; two axial series still need a choice."""
    folder = tmp_path / "study"
    shutil.copytree(small_exam_dir / "B50f", folder / "axial")
    vol = volume(small_exam_dir / "B50f")
    files = write_ct_series(
        folder / "coronal", vol, spacing_zyx=(1, 1, 1), kernel="B50f", study_uid="1.2.3", series_uid="1.2.3.4",
        frame_uid="1.2.3.5", series_number=3, description="coronal MPR",
    )  # fmt: skip
    for f in files:
        ds = pydicom.dcmread(f)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.save_as(f)
    assert open_series(folder).files[0].parent.name == "axial"
    shutil.copytree(small_exam_dir / "B30f", folder / "axial2")
    with pytest.raises(InputError, match="2 series found, choose one with --series-uid"):
        open_series(folder)


def test_only_secondary_objects_is_a_clear_error(study, tiny_weights, tmp_path):
    shutil.rmtree(study / "ct")
    shutil.rmtree(study / "scout")
    r = run_cli(
        "ct-convert", study, "--from", "B50f", "--to", "B30f", "--weights", tiny_weights,
        "--out", tmp_path / "o", "--device", "cpu",
    )  # fmt: skip
    one_line_error(r, 2, "no DICOM images found", "SEG")
