"""A CT series whose rescale was removed is refused (raw stored values are not HU), never converted
silently 1024 HU too bright; one that already stores HU without a rescale converts with a warning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest

from medseg.ct.convert import convert
from medseg.errors import InputError

from .conftest import convert_config, edited_copy, run_cli, tree_digest, volume


def _drop(*keywords: str):
    def edit(ds) -> None:
        for keyword in keywords:
            if keyword in ds:
                del ds[keyword]

    return edit


def _stored_as_hu(ds) -> None:
    """Store HU directly (signed) and drop the rescale, as some exporters do."""
    hu = ds.pixel_array.astype(np.int32) * int(float(ds.RescaleSlope)) + int(float(ds.RescaleIntercept))
    ds.PixelData = hu.astype(np.int16).tobytes()
    del ds.RescaleSlope, ds.RescaleIntercept


@pytest.mark.parametrize(
    "dropped, words",
    [
        (("RescaleSlope", "RescaleIntercept"), "raw stored values, not Hounsfield units"),
        (("RescaleSlope",), "RescaleIntercept is present but RescaleSlope is missing"),
        (("RescaleIntercept",), "RescaleSlope is present but RescaleIntercept is missing"),
    ],
)
def test_a_removed_rescale_is_refused_before_any_output(
    small_exam_dir, tiny_weights, tmp_path, dropped, words
):
    src = edited_copy(small_exam_dir / "B50f", tmp_path / "in", _drop(*dropped))
    before = tree_digest(src)
    out = tmp_path / "out"
    res = run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--out", out, "--weights", tiny_weights,
        "--device", "cpu", "--json",
    )  # fmt: skip
    assert res.exit_code == 2, res.output
    doc = json.loads(res.stdout)
    assert words in doc["error"] and "IM0000" in doc["error"] and doc["exit_code"] == 2
    assert not out.exists() and tree_digest(src) == before


def test_values_stored_as_hu_without_rescale_convert_with_a_warning(small_exam_dir, tiny_weights, tmp_path):
    src = edited_copy(small_exam_dir / "B50f", tmp_path / "in", _stored_as_hu)
    out = tmp_path / "out"
    result = convert(src, out, convert_config(weights=tiny_weights))
    assert any("taken as HU" in w for w in result.items[0].warnings)
    assert np.abs(volume(out) - (volume(small_exam_dir / "B50f") - 200)).max() <= 0.5 + 1e-3


def test_a_series_missing_the_rescale_half_way_is_refused(small_exam_dir, tiny_weights, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(small_exam_dir / "B50f", src)
    last = sorted(src.iterdir())[-1]
    ds = pydicom.dcmread(last)
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.save_as(last)
    with pytest.raises(InputError, match="not Hounsfield units") as info:
        convert(src, tmp_path / "out", convert_config(weights=tiny_weights))
    assert info.value.path == last and not (tmp_path / "out").exists()


def test_ct_report_fails_the_exam_without_rescale_and_scores_the_other(
    small_exam_dir, tiny_weights, tmp_path
):
    from medseg.ct.report import ReportConfig, run_ct_report

    cohort = tmp_path / "cohort"
    shutil.copytree(small_exam_dir, cohort / "good")
    shutil.copytree(small_exam_dir, cohort / "bad")
    edited_copy(small_exam_dir / "B30f", cohort / "bad_B30f", _drop("RescaleSlope", "RescaleIntercept"))
    shutil.rmtree(cohort / "bad" / "B30f")
    (cohort / "bad_B30f").rename(cohort / "bad" / "B30f")
    cfg = ReportConfig(
        source="B50f", target="B30f", weights=tiny_weights, device="cpu", pdf=False, conditioned=False
    )
    result = run_ct_report([cohort / "good", cohort / "bad"], tmp_path / "qa", cfg)
    status = {i.name: (i.status, i.reason) for i in result.items}
    assert status["good"][0] == "ok" and status["bad"][0] == "failed"
    assert "not Hounsfield units" in status["bad"][1] and result.exit_code == 5


def test_a_volume_without_air_is_not_hu_and_is_refused(small_exam_dir, tiny_weights, tmp_path):
    """A NIfTI stored as HU + 1024 (a converter dropped the rescale) is refused, not converted."""
    from medseg.io.dicom import open_series, read_series
    from medseg.io.volume import write_volume_sitk

    hu, meta = read_series(open_series(small_exam_dir / "B50f"))
    raw = write_volume_sitk(tmp_path / "raw.nii.gz", hu + 1024, meta)
    with pytest.raises(InputError, match="not CT numbers in Hounsfield units") as info:
        convert(raw, tmp_path / "out.nii.gz", convert_config(weights=tiny_weights))
    assert info.value.path == raw and not (tmp_path / "out.nii.gz").exists()
    ok = write_volume_sitk(tmp_path / "hu.nii.gz", hu, meta)
    assert convert(ok, tmp_path / "ok.nii.gz", convert_config(weights=tiny_weights)).exit_code == 0


def test_signed_pixels_declared_unsigned_are_refused(small_exam_dir, tiny_weights, tmp_path):
    """Stored HU (signed, air -1000) whose header says unsigned read as 64536: refused, not saturated."""

    def unsigned(ds) -> None:
        _stored_as_hu(ds)
        ds.RescaleSlope, ds.RescaleIntercept = "1", "0"
        ds.PixelRepresentation = 0

    src = edited_copy(small_exam_dir / "B50f", tmp_path / "in", unsigned)
    with pytest.raises(InputError, match="PixelRepresentation 0") as info:
        convert(src, tmp_path / "out", convert_config(weights=tiny_weights))
    assert info.value.path.parent == src and not (tmp_path / "out").exists()


def test_a_volume_cropped_inside_the_body_is_taken_as_hu_with_a_warning(tiny_weights, tmp_path):
    """A radiomics-style crop without air (fat and soft tissue in HU) is no HU + 1024 volume."""
    import SimpleITK as sitk

    rng = np.random.default_rng(5)
    crop = np.clip(rng.normal(40, 60, (4, 48, 48)), -150, 400).astype(np.int16)
    path = tmp_path / "crop.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(crop), str(path))
    result = convert(path, tmp_path / "out.nii.gz", convert_config(weights=tiny_weights))
    assert result.exit_code == 0 and any("no air in the volume" in w for w in result.items[0].warnings)
