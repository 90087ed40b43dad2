"""What a DICOM object is: an image to convert, a frame of an Enhanced CT, or a secondary object."""

from __future__ import annotations

import gzip
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from medseg.io.dicom_objects import CT_IMAGE_STORAGE, ENHANCED_CT, frame_headers, secondary_kind, source_of

REAL = Path(__file__).resolve().parents[1] / "data" / "real" / "ct_enhanced"


def _ds(**values) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4", "Modality": "SEG", "Rows": 4}, "SEG"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.481.3", "Modality": "RTSTRUCT"}, "RTSTRUCT"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.22", "Modality": "SR"}, "SR"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.11.1", "Modality": "PR"}, "PR"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.59", "Modality": "KO"}, "KO"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "Modality": "CT", "Rows": 4}, "SC"),
        ({"SOPClassUID": "1.2.3.4", "Modality": "SEG", "Rows": 4}, "SEG"),  # private class, by Modality
        (
            {
                "SOPClassUID": CT_IMAGE_STORAGE,
                "Modality": "CT",
                "Rows": 4,
                "ImageType": ["ORIGINAL", "LOCALIZER"],
            },
            "LOCALIZER",
        ),
        (
            {
                "SOPClassUID": CT_IMAGE_STORAGE,
                "Modality": "CT",
                "Rows": 4,
                "ImageType": ["ORIGINAL", "AXIAL"],
            },
            None,
        ),
        ({"SOPClassUID": ENHANCED_CT, "Modality": "CT", "Rows": 4}, None),
    ],
)
def test_secondary_kind(values, kind):
    assert secondary_kind(_ds(**values)) == kind


def test_frame_headers_of_the_real_enhanced_ct(tmp_path):
    packed = REAL / "eCT_Supplemental.dcm.gz"
    if not packed.is_file():
        pytest.skip("tests/data/real/ct_enhanced missing")
    path = tmp_path / "e.dcm"
    path.write_bytes(gzip.decompress(packed.read_bytes()))
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = frame_headers(ds)
    assert len(frames) == 2
    assert [float(f.ImagePositionPatient[2]) for f in frames] == [-159.0, -149.0]
    assert all(f.SOPClassUID == CT_IMAGE_STORAGE and float(f.RescaleIntercept) == -1024 for f in frames)
    assert [float(v) for v in frames[0].PixelSpacing] == pytest.approx([0.388672, 0.388672])
    assert source_of(frames[1]) == (ENHANCED_CT, str(ds.SOPInstanceUID), 2)
    assert ds.SOPClassUID == ENHANCED_CT  # the source dataset is not changed
    assert "PerFrameFunctionalGroupsSequence" not in frames[0] and "NumberOfFrames" not in frames[0]
