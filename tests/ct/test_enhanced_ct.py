"""Enhanced CT (multi-frame, functional groups) as input; a classic derived series as output."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medseg.io.dicom import CT_IMAGE_STORAGE, ENHANCED_CT, open_series, read_series

from .conftest import run_cli, volume
from .test_bad_input import one_line_error
from .test_vendor_kernels import save_tiny

REAL = Path(__file__).resolve().parents[1] / "data" / "real" / "ct_enhanced"


def _item(**values) -> Sequence:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return Sequence([ds])


def write_enhanced_ct(
    path: Path, hu: np.ndarray, *, spacing=(2.0, 0.8, 0.8), kernel="B50f", positions=True, reverse=True
) -> Path:
    """An Enhanced CT Image Storage file of the (z, y, x) ``hu`` volume: frames stored in reverse z
    order, per-frame positions, kernels and rescale intercepts, shared orientation and pixel measures."""
    nz, ny, nx = hu.shape
    order = list(range(nz))[::-1] if reverse else list(range(nz))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_CT
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = ENHANCED_CT, uid, "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        generate_uid(),
        generate_uid(),
        generate_uid(),
    )
    ds.PatientName, ds.PatientID, ds.Manufacturer = "Enhanced^Test", "E1", "SIEMENS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 7, 1, "enhanced test"
    ds.NumberOfFrames, ds.Rows, ds.Columns = nz, ny, nx
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SharedFunctionalGroupsSequence = Sequence(
        [
            Dataset(),
        ]
    )
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.PlaneOrientationSequence = _item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])
    shared.PixelMeasuresSequence = _item(PixelSpacing=[spacing[1], spacing[2]], SliceThickness=spacing[0])
    frames, stored = [], []
    for k, z in enumerate(order):
        intercept = -1024.0 - 10 * k  # per-frame rescale
        fg = Dataset()
        if positions:
            fg.PlanePositionSequence = _item(ImagePositionPatient=[-20.0, -20.0, z * spacing[0]])
        fg.PixelValueTransformationSequence = _item(
            RescaleIntercept=f"{intercept:g}", RescaleSlope="1", RescaleType="HU"
        )
        fg.CTReconstructionSequence = _item(ConvolutionKernel=kernel)
        fg.FrameContentSequence = _item(InStackPositionNumber=z + 1)
        frames.append(fg)
        stored.append(np.clip(np.rint(hu[z] - intercept), -32768, 32767).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(stored).tobytes()
    ds["PixelData"].VR = "OW"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def enhanced(small_exam_dir, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The small phantom's B50f series written as one Enhanced CT file in a folder."""
    hu = volume(small_exam_dir / "B50f")
    folder = tmp_path_factory.mktemp("enhanced") / "series"
    write_enhanced_ct(folder / "ct.dcm", hu)
    return folder, hu


def test_enhanced_reads_like_the_classic_series(enhanced):
    folder, hu = enhanced
    series = open_series(folder)
    assert len(series.files) == hu.shape[0] and series.frames == list(range(hu.shape[0], 0, -1))
    assert series.kernel_values == ["B50f"] and series.spacing == pytest.approx((2.0, 0.8, 0.8))
    assert np.all(np.diff(series.positions) > 0)
    vol, meta = read_series(series)
    np.testing.assert_array_equal(vol, np.rint(hu))  # per-frame rescale applied, slices in z order
    assert meta.kernel == "B50f"


@pytest.mark.parametrize("as_file", [False, True])
def test_enhanced_converts_to_a_classic_derived_series(enhanced, tiny_weights, tmp_path, as_file):
    folder, hu = enhanced
    src = folder / "ct.dcm" if as_file else folder
    out = tmp_path / "out"
    r = run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--weights", tiny_weights,
        "--out", out, "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["items"][0]["metrics"]["input_frames"] == hu.shape[0]
    files = sorted(out.glob("*.dcm"))
    assert len(files) == hu.shape[0]
    first = pydicom.dcmread(files[0])
    assert first.SOPClassUID == CT_IMAGE_STORAGE and "NumberOfFrames" not in first
    assert "PerFrameFunctionalGroupsSequence" not in first
    ref = first.SourceImageSequence[0]
    assert ref.ReferencedSOPClassUID == ENHANCED_CT and int(ref.ReferencedFrameNumber) == hu.shape[0]
    np.testing.assert_allclose(volume(out), np.rint(hu) - 200, atol=0.51)
    assert (folder / "ct.dcm").is_file()  # input untouched


def test_enhanced_without_frame_positions_is_one_line_error(small_exam_dir, tiny_weights, tmp_path):
    hu = volume(small_exam_dir / "B50f")
    bad = write_enhanced_ct(tmp_path / "bad" / "nopos.dcm", hu, positions=False)
    r = run_cli(
        "ct-convert", bad.parent, "--from", "B50f", "--to", "B30f", "--weights", tiny_weights,
        "--out", tmp_path / "o", "--device", "cpu",
    )  # fmt: skip
    one_line_error(r, 2, "nopos.dcm", "ImagePositionPatient", "frame")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def real_enhanced(tmp_path_factory) -> Path:
    packed = REAL / "eCT_Supplemental.dcm.gz"
    if not packed.is_file():
        pytest.skip("tests/data/real/ct_enhanced missing")
    path = tmp_path_factory.mktemp("ect") / "eCT_Supplemental.dcm"
    path.write_bytes(gzip.decompress(packed.read_bytes()))
    return path


def test_real_enhanced_ct_file(real_enhanced, tiny_weights, tmp_path):
    """The NEMA Enhanced CT sample: 2 frames, positions only in the per-frame groups, no kernel tag."""
    series = open_series(real_enhanced)
    assert len(series.files) == 2 and sorted(series.frames) == [1, 2]
    assert series.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    vol, _ = read_series(series)
    assert vol.shape == (2, 512, 512) and vol.min() >= -1024
    out = tmp_path / "o"
    r = run_cli(
        "ct-convert", real_enhanced, "--from", "B50f", "--to", "B30f", "--weights", tiny_weights,
        "--out", out, "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert any("no ConvolutionKernel tag" in w for w in json.loads(r.stdout)["warnings"])
    derived = [pydicom.dcmread(f) for f in sorted(out.glob("*.dcm"))]
    assert len(derived) == 2 and all(d.SOPClassUID == CT_IMAGE_STORAGE for d in derived)
    assert {float(d.ImagePositionPatient[2]) for d in derived} == {-159.0, -149.0}


def test_real_ge_slice_is_readable(tmp_path):
    """A real GE slice (kernel STANDARD) converts with GE weights, its vendor read from the tags."""
    ge = REAL / "CT_small.dcm"
    if not ge.is_file():
        pytest.skip("tests/data/real/ct_enhanced missing")
    series = open_series(ge)
    assert series.kernel_values == ["STANDARD"] and series.manufacturer.startswith("GE")
    weights = save_tiny(tmp_path / "ge.safetensors", "STANDARD", "LUNG", "GE MEDICAL SYSTEMS")
    r = run_cli(
        "ct-convert", ge, "--from", "standard", "--to", "lung", "--weights", weights,
        "--out", tmp_path / "o", "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["vendor"] == "GE" and not doc["items"][0]["warnings"]
    assert pydicom.dcmread(next((tmp_path / "o").glob("*.dcm"))).ConvolutionKernel == "LUNG"
