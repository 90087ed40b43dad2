"""ct-convert --dicom-format enhanced: one Legacy Converted Enhanced CT file, same geometry and HU
as the classic derived series; the project's own reader reads it back."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.io.dicom import open_series, read_series
from medseg.io.dicom_objects import ENHANCED_CT, LEGACY_ENHANCED_CT

from .conftest import run_cli, volume
from .test_bad_input import one_line_error
from .test_enhanced_ct import REAL, write_enhanced_ct


def _convert(src: Path, out: Path, weights: Path, *extra) -> dict:
    r = run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--weights", weights,
        "--out", out, "--device", "cpu", "--json", "-q", *extra,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _frames(ds) -> tuple[list[list[float]], np.ndarray]:
    """Per-frame ImagePositionPatient and HU frames (per-frame rescale, else the shared one)."""
    shared = ds.SharedFunctionalGroupsSequence[0]
    positions, hu = [], []
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    for frame, group in zip(pixels, ds.PerFrameFunctionalGroupsSequence, strict=True):
        positions.append([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        rescale = (
            group.PixelValueTransformationSequence[0]
            if "PixelValueTransformationSequence" in group
            else shared.PixelValueTransformationSequence[0]
        )
        hu.append(frame * float(rescale.RescaleSlope) + float(rescale.RescaleIntercept))
    return positions, np.stack(hu)


def _check_like_classic(enhanced_dir: Path, classic_dir: Path, doc: dict) -> pydicom.Dataset:
    files = sorted(enhanced_dir.iterdir())
    assert [f.name for f in files] == ["ENHANCED_CT.dcm"]  # one file, no temporary left behind
    ds = pydicom.dcmread(files[0])
    classic = sorted((pydicom.dcmread(f) for f in classic_dir.iterdir()), key=lambda d: int(d.InstanceNumber))
    assert ds.SOPClassUID == LEGACY_ENHANCED_CT == ds.file_meta.MediaStorageSOPClassUID
    assert int(ds.NumberOfFrames) == len(classic) == doc["items"][0]["metrics"]["slices"]
    assert doc["summary"]["dicom_format"] == "enhanced"
    assert ds.SeriesInstanceUID == doc["items"][0]["metrics"]["series_uid"]
    assert ds.StudyInstanceUID == classic[0].StudyInstanceUID
    assert ds.FrameOfReferenceUID == classic[0].FrameOfReferenceUID
    positions, hu = _frames(ds)
    order = np.argsort([p[2] for p in positions])
    classic_order = np.argsort([float(d.ImagePositionPatient[2]) for d in classic])
    assert [positions[i] for i in order] == [
        [float(v) for v in classic[i].ImagePositionPatient] for i in classic_order
    ]
    classic_hu = np.stack(
        [d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in classic]
    )
    np.testing.assert_array_equal(hu[order], classic_hu[classic_order])
    # the project's own reader reads the enhanced output back to the classic output's volume
    back, _ = read_series(open_series(enhanced_dir))
    np.testing.assert_array_equal(back, volume(classic_dir))
    return ds


def test_enhanced_output_matches_classic(small_exam_dir, tiny_weights, tmp_path):
    src = small_exam_dir / "B50f"
    doc_c = _convert(src, tmp_path / "classic", tiny_weights)
    assert doc_c["summary"]["dicom_format"] == "classic"
    doc = _convert(src, tmp_path / "enh", tiny_weights, "--dicom-format", "enhanced")
    ds = _check_like_classic(tmp_path / "enh", tmp_path / "classic", doc)
    # the target kernel (highdicom keeps it among the shared converted attributes) and, per frame,
    # the derivation and its source slice
    assert (
        ds.SharedFunctionalGroupsSequence[0].UnassignedSharedConvertedAttributesSequence[0].ConvolutionKernel
        == "B30f"
    )
    assert open_series(tmp_path / "enh").kernel == "B30f"  # and the project's reader finds it there
    derivations = [g.DerivationImageSequence[0] for g in ds.PerFrameFunctionalGroupsSequence]
    assert all("B50f to B30f" in d.DerivationDescription for d in derivations)
    sources = {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in derivations}
    assert sources == {pydicom.dcmread(f).SOPInstanceUID for f in src.iterdir()}
    # the fixture model subtracts exactly 200 HU
    np.testing.assert_allclose(volume(tmp_path / "enh"), np.rint(volume(src)) - 200, atol=0.51)


def test_enhanced_input_to_enhanced_output(small_exam_dir, tiny_weights, tmp_path):
    hu = volume(small_exam_dir / "B50f")
    src = write_enhanced_ct(tmp_path / "in" / "ct.dcm", hu)
    _convert(src, tmp_path / "classic", tiny_weights)
    doc = _convert(src, tmp_path / "enh", tiny_weights, "--dicom-format", "enhanced")
    ds = _check_like_classic(tmp_path / "enh", tmp_path / "classic", doc)
    refs = [g.DerivationImageSequence[0].SourceImageSequence[0] for g in ds.PerFrameFunctionalGroupsSequence]
    assert {r.ReferencedSOPClassUID for r in refs} == {ENHANCED_CT}  # each frame names its source frame
    assert sorted(int(r.ReferencedFrameNumber) for r in refs) == list(range(1, hu.shape[0] + 1))


def test_real_enhanced_ct_to_enhanced_output(tiny_weights, tmp_path):
    packed = REAL / "eCT_Supplemental.dcm.gz"
    if not packed.is_file():
        pytest.skip("tests/data/real/ct_enhanced missing")
    src = tmp_path / "eCT_Supplemental.dcm"
    src.write_bytes(gzip.decompress(packed.read_bytes()))
    _convert(src, tmp_path / "classic", tiny_weights)
    doc = _convert(src, tmp_path / "enh", tiny_weights, "--dicom-format", "enhanced")
    ds = _check_like_classic(tmp_path / "enh", tmp_path / "classic", doc)
    assert int(ds.NumberOfFrames) == 2


def test_enhanced_with_volume_output_is_usage_error(small_exam_dir, tiny_weights, tmp_path):
    out = tmp_path / "o.nii.gz"
    r = run_cli(
        "ct-convert", small_exam_dir / "B50f", "--from", "B50f", "--to", "B30f", "--weights",
        tiny_weights, "--out", out, "--device", "cpu", "--dicom-format", "enhanced",
    )  # fmt: skip
    one_line_error(r, 2, "o.nii.gz", "--dicom-format enhanced")
    assert not out.exists() and list(tmp_path.iterdir()) == []
