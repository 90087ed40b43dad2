"""DICOM header checks (pre-flight), transfer syntaxes, the SOP class fallback and the gantry tilt warning."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from medseg.errors import InputError
from medseg.io.dicom import decode_hu, open_series, read_series
from medseg.io.dicom_checks import check_header_values, decodable, syntax_label, tilt_warning
from medseg.io.dicom_objects import CT_IMAGE_STORAGE, frame_headers, sop_class_of, source_of
from medseg.io.dicom_write import derived_slice, write_ct_series

PHILIPS = Path(__file__).resolve().parents[1] / "data/real/ct_philips/UB"
ENHANCED = Path(__file__).resolve().parents[1] / "data/real/ct_enhanced"


def test_syntax_names():
    assert syntax_label("1.2.840.10008.1.2.4.112") == "JPEG XL (1.2.840.10008.1.2.4.112)"
    assert syntax_label("1.2.840.10008.1.2.4.90").startswith("JPEG 2000")
    assert syntax_label("1.2.3.4") == "1.2.3.4 (unknown)"


def test_decodable():
    assert decodable("1.2.840.10008.1.2.1") and decodable("1.2.840.10008.1.2") and decodable("")
    assert decodable("1.2.840.10008.1.2.4.90")  # pylibjpeg-openjpeg
    for uid in ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112", "1.2.3.4"):
        assert not decodable(uid)


def test_undecodable_syntax_is_named_at_decode_time_too():
    """When pre-flight was skipped (a library caller), decoding names the syntax instead of a codec error."""
    ds = pydicom.dcmread(PHILIPS / "IM0001.dcm")
    from pydicom.encaps import encapsulate

    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.111"
    with pytest.raises(InputError, match=r"JPEG XL JPEG Recompression \(1\.2\.840\.10008\.1\.2\.4\.111\)"):
        decode_hu(ds, PHILIPS / "IM0001.dcm")


def _header(**values) -> Dataset:
    ds = Dataset()
    for k, v in values.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("values", "phrase"),
    [
        ({"PixelSpacing": [0.5, 0.0]}, "PixelSpacing"),
        ({"PixelSpacing": [0.5]}, "PixelSpacing"),
        ({"SliceThickness": -2}, "SliceThickness"),
        ({"ImagePositionPatient": [0, 0, math.inf]}, "ImagePositionPatient"),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 0.9, 0]}, "not orthonormal"),
        ({"ImageOrientationPatient": [1, 0, 0, 1, 0, 0]}, "not orthonormal"),
        ({"RescaleSlope": 0}, "RescaleSlope"),
        ({"RescaleIntercept": -math.inf}, "RescaleIntercept"),
    ],
)
def test_impossible_header_values_are_named(values, phrase):
    good = {"PixelSpacing": [0.5, 0.5], "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "RescaleSlope": 1}
    check_header_values([(Path("a.dcm"), _header(**good))])
    with pytest.raises(InputError, match=phrase) as info:
        check_header_values(
            [(Path("a.dcm"), _header(**good)), (Path("b.dcm"), _header(**{**good, **values}))]
        )
    assert info.value.path == Path("b.dcm")


def test_a_bad_frame_is_named_by_its_number():
    import gzip
    import io

    raw = gzip.decompress((ENHANCED / "eCT_Supplemental.dcm.gz").read_bytes())
    ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
    frames = frame_headers(ds)
    frames[1].RescaleSlope = -1
    with pytest.raises(InputError, match="frame 2: RescaleSlope"):
        check_header_values([(Path("e.dcm"), f) for f in frames])


def test_sop_class_falls_back_to_file_meta_then_modality():
    ds = _header(SOPClassUID="", SOPInstanceUID="", Modality="CT", Rows=2)
    assert sop_class_of(ds) == CT_IMAGE_STORAGE  # by modality
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.9"
    assert source_of(ds) == ("1.2.840.10008.5.1.4.1.1.2", "1.2.3.9", None)
    assert sop_class_of(_header(SOPClassUID="", Modality="SR")) == ""


def test_derived_slice_of_an_empty_sop_class_is_valid_ct(tmp_path):
    from medseg.io.dicom_write import Derivation

    ds = pydicom.dcmread(PHILIPS / "IM0001.dcm")
    ds.SOPClassUID = ""
    out = derived_slice(ds, np.zeros((512, 512), np.float32), Derivation("1.2.3.4", " test", "test"))
    out.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "x.dcm")
    assert back.SOPClassUID == back.file_meta.MediaStorageSOPClassUID == CT_IMAGE_STORAGE


def _series(tmp_path: Path, shift_y_per_mm: float = 0.0, tilt_tag: str | None = None) -> Path:
    from medseg.io.dicom import new_uid

    folder = tmp_path / "s"
    write_ct_series(
        folder,
        np.zeros((4, 8, 8), np.float32),
        spacing_zyx=(2.5, 1.0, 1.0),
        kernel="B30f",
        study_uid=new_uid(),
        series_uid=new_uid(),
        frame_uid=new_uid(),
        series_number=1,
        description="t",
    )
    for f in folder.iterdir():
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + z * shift_y_per_mm, z]
        if tilt_tag is not None:
            ds.GantryDetectorTilt = tilt_tag
        ds.save_as(f)
    return folder


def test_tilt_from_positions_or_tag_is_a_warning_carried_in_the_meta(tmp_path):
    straight = open_series(_series(tmp_path))
    assert not any("tilt" in w for w in straight.warnings)
    shutil.rmtree(tmp_path / "s")
    tilted = open_series(_series(tmp_path, math.tan(math.radians(20))))
    assert any("stacked at 20.0°" in w for w in tilted.warnings)
    assert read_series(tilted)[1].warnings == tilted.warnings  # ct-report and ct-train read the meta
    shutil.rmtree(tmp_path / "s")
    tagged = open_series(_series(tmp_path, tilt_tag="-7"))
    assert any("GantryDetectorTilt is -7°" in w for w in tagged.warnings)


def test_tilt_warning_ignores_rounding():
    normal = np.array([0, 0, 1.0])
    headers = [(Path(f"{i}"), _header(ImagePositionPatient=[0, 0.001 * i, 2.5 * i])) for i in range(5)]
    assert tilt_warning(headers, normal) is None


def test_missing_pixel_spacing_is_a_warning_and_empty_orientation_reads_as_axial(tmp_path):
    for f in PHILIPS.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PixelSpacing = None  # present but empty
        ds.ImageOrientationPatient = None
        ds.save_as(tmp_path / f.name)
    series = open_series(tmp_path)
    assert series.spacing[1:] == (1.0, 1.0)
    assert any("no PixelSpacing" in w for w in series.warnings)
