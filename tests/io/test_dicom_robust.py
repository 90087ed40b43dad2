"""Real-world DICOM quirks of the shared reader/writer: files without the preamble, damaged files,
DICOMDIR, lossy history, Modality LUTs and long descriptions (robustness audit, session 16)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.errors import InputError
from medseg.io.dicom import open_series, read_series
from medseg.io.dicom_write import Derivation, derived_slice

PHILIPS = Path(__file__).resolve().parents[1] / "data" / "real" / "ct_philips" / "UB"


def _copy(tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(PHILIPS, folder)
    return folder


def test_files_without_preamble_are_read_as_the_same_series(tmp_path):
    folder = _copy(tmp_path)
    expected, _ = read_series(open_series(folder))
    for f in folder.glob("*.dcm"):
        f.write_bytes(f.read_bytes()[132:])  # no preamble, no "DICM"
    volume, _ = read_series(open_series(folder))
    np.testing.assert_array_equal(volume, expected)


def test_a_truncated_dicom_file_is_refused_by_name(tmp_path):
    folder = _copy(tmp_path)
    victim = sorted(folder.glob("*.dcm"))[0]
    victim.write_bytes(victim.read_bytes()[:300])  # marker kept, header cut
    with pytest.raises(InputError) as err:
        open_series(folder)
    assert victim.name in str(err.value) and "damaged DICOM" in str(err.value)


def test_other_files_beside_the_series_are_still_skipped(tmp_path):
    folder = _copy(tmp_path)
    (folder / "notes.txt").write_text("scanned on Monday\n")
    assert len(open_series(folder).files) == len(list(PHILIPS.glob("*.dcm")))


def test_a_dicomdir_is_not_warned_about(tmp_path, caplog):
    folder = _copy(tmp_path)
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.FileSetID = "X"
    ds.save_as(folder / "DICOMDIR", enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="medseg"):
        open_series(folder)
    assert "DICOMDIR" not in caplog.text


def _derive(ds, suffix: str = " [medseg]"):
    return derived_slice(
        ds, np.zeros((ds.Rows, ds.Columns), np.float32), Derivation("1.2.3.4", suffix, "test")
    )


def test_derived_slice_drops_the_modality_lut_and_keeps_the_description_start():
    ds = pydicom.dcmread(sorted(PHILIPS.glob("*.dcm"))[0])
    lut = pydicom.Dataset()
    lut.LUTDescriptor = [4096, 0, 16]
    lut.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [lut]
    ds.SeriesDescription = "Thorax routine 1.0 mm " + "x" * 50
    out = _derive(ds)
    assert "ModalityLUTSequence" not in out
    assert out.SeriesDescription.startswith("Thorax routine") and out.SeriesDescription.endswith("[medseg]")
    assert len(out.SeriesDescription) <= 64


@pytest.mark.parametrize(
    ("syntax", "method"),
    [
        ("1.2.840.10008.1.2.4.50", "ISO_10918_1"),
        ("1.2.840.10008.1.2.4.91", "ISO_15444_1"),
        ("1.2.840.10008.1.2.1", None),
    ],
)
def test_lossy_source_stays_marked_lossy(syntax, method):
    ds = pydicom.dcmread(sorted(PHILIPS.glob("*.dcm"))[0])
    for tag in ("LossyImageCompression", "LossyImageCompressionMethod"):
        if tag in ds:
            del ds[tag]
    ds.file_meta.TransferSyntaxUID = syntax
    out = _derive(ds)
    if method is None:
        assert "LossyImageCompression" not in out
    else:
        assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == method


def test_garbage_training_state_is_refused_without_unsafe_advice(tmp_path):
    from medseg.engine.checkpoint import load_training_state
    from medseg.errors import ModelError

    state = tmp_path / "state.pt"
    state.write_bytes(b"PK\x03\x04 not really a zip" * 10)
    with pytest.raises(ModelError) as err:
        load_training_state(state)
    text = str(err.value)
    assert "not a readable training state" in text and "weights_only" not in text


def _edit_all(folder: Path, edit) -> None:
    for i, f in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        edit(i, ds)
        ds.save_as(f)


def test_missing_positions_and_orientation_are_warnings(tmp_path):
    """They were assumed silently: slices ordered by InstanceNumber, orientation axial."""
    folder = _copy(tmp_path)

    def strip(_i, ds):
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient

    _edit_all(folder, strip)
    warnings = " ".join(open_series(folder).warnings)
    assert "no ImagePositionPatient" in warnings and "taken as axial" in warnings


def test_pixel_spacing_that_differs_between_slices_is_a_warning(tmp_path):
    folder = _copy(tmp_path)
    _edit_all(folder, lambda i, ds: setattr(ds, "PixelSpacing", [0.5 + 0.1 * i, 0.5 + 0.1 * i]))
    assert any("PixelSpacing differs" in w for w in open_series(folder).warnings)


def test_an_intact_series_has_no_geometry_warning():
    assert not [w for w in open_series(PHILIPS).warnings if "PixelSpacing" in w or "Position" in w]


def test_a_copied_file_is_read_once(tmp_path):
    folder = _copy(tmp_path)
    first = sorted(folder.glob("*.dcm"))[0]
    shutil.copy(first, folder / "copy_of_first.dcm")
    series = open_series(folder)
    assert len(series.files) == len(list(PHILIPS.glob("*.dcm")))
    assert any("copies of an image already read" in w for w in series.warnings)


def test_two_different_images_at_one_position_are_still_refused(tmp_path):
    folder = _copy(tmp_path)
    first = sorted(folder.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "other_at_same_place.dcm")
    with pytest.raises(InputError, match="share position"):
        open_series(folder)
