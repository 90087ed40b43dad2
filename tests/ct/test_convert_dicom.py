"""ct-convert on real DICOM: derived series, geometry, HU, UIDs, untouched input."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medseg.ct.convert import convert

from .conftest import convert_config, tree_digest, volume


def test_derived_series_round_trip(small_exam_dir, tiny_weights, tmp_path):
    src = small_exam_dir / "B50f"
    before = tree_digest(small_exam_dir)
    out = tmp_path / "converted"
    result = convert(src, out, convert_config(source="b50f", target="B30F", weights=tiny_weights))
    assert tree_digest(small_exam_dir) == before  # input byte-identical
    assert result.exit_code == 0 and [i.status for i in result.items] == ["ok"]
    assert result.summary["source_kernel"] == "B50f" and result.summary["amp"] == "fp32"
    assert result.summary["channels_last"] is True and result.outputs["series"] == str(out)

    src_files = sorted(src.iterdir())
    out_files = sorted(out.iterdir())
    assert len(out_files) == len(src_files) == result.items[0].metrics["slices"]
    src_ds = [pydicom.dcmread(f) for f in src_files]
    out_ds = [pydicom.dcmread(f) for f in out_files]
    src_by_pos = {tuple(map(float, d.ImagePositionPatient)): d for d in src_ds}

    uids = {d.SOPInstanceUID for d in out_ds}
    assert len(uids) == len(out_ds) and not uids & {d.SOPInstanceUID for d in src_ds}
    assert len({d.SeriesInstanceUID for d in out_ds}) == 1
    assert out_ds[0].SeriesInstanceUID not in {d.SeriesInstanceUID for d in src_ds}
    assert out_ds[0].SeriesInstanceUID == result.items[0].metrics["series_uid"]
    for d in out_ds:
        s = src_by_pos[tuple(map(float, d.ImagePositionPatient))]
        assert d.StudyInstanceUID == s.StudyInstanceUID and d.PatientID == s.PatientID
        assert d.FrameOfReferenceUID == s.FrameOfReferenceUID
        assert list(d.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
        assert d.ConvolutionKernel == "B30f"
        assert "B50f" in d.DerivationDescription and "Lee" in d.DerivationDescription
        assert d.SeriesDescription.endswith("B30f from B50f (medseg)")
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
        assert list(d.PixelSpacing) == list(s.PixelSpacing)
        assert list(d.ImageOrientationPatient) == list(s.ImageOrientationPatient)
        assert d.PixelRepresentation == 1 and d.BitsAllocated == 16
        assert float(d.RescaleSlope) == 1 and float(d.RescaleIntercept) == 0
        assert d.file_meta.MediaStorageSOPInstanceUID == d.SOPInstanceUID
        # the fixture model subtracts exactly 200 HU; storage rounds to integers
        expected = s.pixel_array * float(s.RescaleSlope) + float(s.RescaleIntercept) - 200
        got = d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert np.abs(got - expected).max() <= 0.5 + 1e-3
    # values below -1024 HU survive (air -1000 - 200)
    assert min(int(d.pixel_array.min()) for d in out_ds) < -1024

    # SimpleITK reads the same geometry and values
    reader = sitk.ImageSeriesReader()
    in_img = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(src)))
    out_img = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(out)))
    assert np.allclose(in_img.GetSpacing(), out_img.GetSpacing())
    assert np.allclose(in_img.GetOrigin(), out_img.GetOrigin())
    assert np.allclose(in_img.GetDirection(), out_img.GetDirection())
    diff = sitk.GetArrayFromImage(out_img).astype(float) - (
        sitk.GetArrayFromImage(in_img).astype(float) - 200
    )
    assert np.abs(diff).max() <= 0.5 + 1e-3


def test_nifti_output_and_input(small_exam_dir, tiny_weights, tmp_path):
    nii = tmp_path / "conv.nii.gz"
    res = convert(small_exam_dir / "B50f", nii, convert_config(weights=tiny_weights))  # format from the name
    assert res.summary["format"] == "nifti" and res.outputs["volume"] == str(nii)
    img = sitk.ReadImage(str(nii))
    ref = volume(small_exam_dir / "B50f")
    assert np.abs(sitk.GetArrayFromImage(img) - (ref - 200)).max() <= 0.5 + 1e-3
    assert np.allclose(img.GetSpacing()[::-1], (1.5, 0.7, 0.7))
    # NIfTI in -> NIfTI out, single slice too
    out2 = tmp_path / "conv2.nii.gz"
    convert(nii, out2, convert_config(weights=tiny_weights))
    assert np.abs(sitk.GetArrayFromImage(sitk.ReadImage(str(out2))) - (ref - 400)).max() <= 1.0 + 1e-3
    single = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(ref[2].astype(np.int16)), str(single))
    out3 = tmp_path / "slice_out.nii.gz"
    res = convert(single, out3, convert_config(weights=tiny_weights))
    assert res.items[0].metrics["slices"] == 1


def _compressed_copy(src_dir, out_dir, syntax):
    out_dir.mkdir()
    for i, f in enumerate(sorted(src_dir.iterdir())):
        ds = pydicom.dcmread(f)
        ds.compress(syntax)
        ds.save_as(out_dir / f"x{i}", enforce_file_format=True)  # opaque names, no extension
    return out_dir


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEG2000Lossless"])
def test_compressed_input(small_exam_dir, tiny_weights, tmp_path, syntax):
    comp = _compressed_copy(small_exam_dir / "B50f", tmp_path / "comp", getattr(pydicom.uid, syntax))
    out = tmp_path / "out"
    convert(comp, out, convert_config(weights=tiny_weights))
    assert np.abs(volume(out) - (volume(small_exam_dir / "B50f") - 200)).max() <= 0.5 + 1e-3
    assert (
        pydicom.dcmread(next(out.iterdir())).file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    )


def test_gdcm_decodes_what_pydicom_cannot(small_exam_dir, tmp_path, monkeypatch):
    """A codec pydicom lacks falls back to SimpleITK/GDCM, which returns HU directly."""
    from medseg.io.dicom import decode_hu

    comp = _compressed_copy(small_exam_dir / "B50f", tmp_path / "comp", pydicom.uid.JPEG2000Lossless)
    f = sorted(comp.iterdir())[0]
    ds = pydicom.dcmread(f)
    expected = decode_hu(ds, f)

    def no_codec(self):
        raise RuntimeError("no pixel data handler available")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_codec))
    assert np.array_equal(decode_hu(pydicom.dcmread(f), f), expected)


def test_single_dicom_file_input(small_exam_dir, tiny_weights, tmp_path):
    src = sorted((small_exam_dir / "B50f").iterdir())
    one = tmp_path / "one"
    res = convert(src[0], one, convert_config(weights=tiny_weights))
    assert res.items[0].metrics["slices"] == 1 and len(list(one.iterdir())) == 1


@pytest.mark.cuda
def test_cuda_amp_matches_cpu(small_exam_dir, tmp_path):
    """bf16/fp16 autocast on the GPU stays within 5 HU of the fp32 CPU result."""
    from medseg.ct.models import DEMO_MODELS

    weights = DEMO_MODELS / "B50f_to_B30f.safetensors"
    convert(small_exam_dir / "B50f", tmp_path / "cpu", convert_config(weights=weights))
    res = convert(
        small_exam_dir / "B50f",
        tmp_path / "gpu",
        convert_config(weights=weights, device="cuda", batch_size=4),
    )
    assert res.summary["device"].startswith("cuda") and res.summary["amp"] in ("bf16", "fp16")
    assert np.abs(volume(tmp_path / "gpu") - volume(tmp_path / "cpu")).max() <= 5.0


def test_rescale_slope_and_intercept_give_hu(small_exam_dir, tmp_path):
    """decode_hu applies RescaleSlope/Intercept (pydicom's apply_rescale) for any slope, not just 1."""
    from medseg.io.dicom import decode_hu

    f = sorted((small_exam_dir / "B50f").iterdir())[0]
    ds = pydicom.dcmread(f)
    hu = decode_hu(ds, f)
    stored = (hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
    ds.PixelData = np.rint(stored / 2).astype(np.int16).tobytes()  # half the stored values ...
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-1000"  # ... twice the slope, another intercept
    again = decode_hu(ds, f)
    assert again.dtype == np.float32
    assert np.abs(again - (2 * np.rint(stored / 2) - 1000)).max() == 0
