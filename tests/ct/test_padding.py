"""Out-of-field padding and the table never enter the lung mask, LAA-950 or RMSE, nor the network."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from medseg.ct.convert import PaddingGuard, convert_volume
from medseg.ct.metrics import rmse
from medseg.ct.report import evaluate_exam
from medseg.io.dicom import open_series, read_series
from medseg.io.dicom_write import write_ct_series
from medseg.synthetic.ct_phantom import PhantomConfig, make_exam

SIZE = 96


@pytest.fixture(scope="module")
def exam():
    return make_exam(4343, kernels=("B30f", "B50f"), config=PhantomConfig(size=SIZE, n_slices=6))


def _corners() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.hypot(yy - (SIZE - 1) / 2, xx - (SIZE - 1) / 2) > SIZE / 2  # outside the inscribed circle


def _pad(vol: np.ndarray, value: float) -> np.ndarray:
    out = vol.copy()
    out[:, _corners()] = value
    return out


def _smooth(vol: np.ndarray) -> np.ndarray:
    """A stand-in 'converted' series: B50f smoothed a little (not equal to the reference)."""
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(vol, sigma=(0, 0.8, 0.8)).astype(np.float32)


@pytest.mark.parametrize("value", [-3024.0, -2048.0, -1600.0])
def test_padding_changes_no_metric(exam, value):
    original, reference = exam.volumes["B50f"], exam.volumes["B30f"]
    converted = _smooth(original)
    plain, plain_mask = evaluate_exam("plain", original, converted, reference, exam.spacing_zyx)
    # a converter that does not know padding leaves its residual there (+300 HU)
    padded_converted = _pad(converted, value + 300.0)
    padded, padded_mask = evaluate_exam(
        "padded", _pad(original, value), padded_converted, _pad(reference, value), exam.spacing_zyx
    )
    assert plain_mask.sum() > 1000 and np.array_equal(plain_mask, padded_mask)
    for key in ("laa950_original", "laa950_converted", "laa950_reference", "perc15_original"):
        assert padded[key] == pytest.approx(plain[key], abs=1e-9), key
    for key in ("rmse_original_hu", "rmse_converted_hu", "rmse_reduction_pct"):
        assert padded[key] == pytest.approx(plain[key], rel=0.03), (key, plain[key], padded[key])
    assert padded["rmse_voxels_pct"] == plain["rmse_voxels_pct"]
    # over the whole image, that residual in the padding would have dominated the converted RMSE
    assert rmse(padded_converted, _pad(reference, value)) > 1.5 * plain["rmse_converted_hu"]


def test_table_is_not_patient(exam):
    """A table below the body (dense shell, foam core, sharper in the original) changes nothing."""
    original, reference = exam.volumes["B50f"], exam.volumes["B30f"]
    converted = _smooth(original)
    plain, plain_mask = evaluate_exam("plain", original, converted, reference, exam.spacing_zyx)

    def with_table(vol: np.ndarray, shell: float) -> np.ndarray:
        out = vol.copy()
        out[:, 84:93, 12:84] = shell
        out[:, 86:91, 14:82] = -960.0  # foam core: lung-like density
        return out

    tabled, tabled_mask = evaluate_exam(
        "table", with_table(original, 400.0), with_table(converted, 300.0), with_table(reference, 100.0),
        exam.spacing_zyx,
    )  # fmt: skip
    assert np.array_equal(plain_mask, tabled_mask)
    assert tabled["laa950_reference"] == pytest.approx(plain["laa950_reference"], abs=1e-9)
    assert tabled["rmse_original_hu"] == pytest.approx(plain["rmse_original_hu"], rel=0.03)


def test_padding_never_reaches_the_network_and_stays_in_the_output(exam):
    vol = _pad(exam.volumes["B50f"], -3024.0)
    seen: list[float] = []

    def plus_one(batch: np.ndarray) -> np.ndarray:
        seen.append(float(batch.min()))
        return batch[:, 0] + 1.0

    out = convert_volume(plus_one, vol, batch_size=2)
    assert min(seen) > -1500  # the net saw air, not the -3024 cliff
    corners = np.broadcast_to(_corners(), vol.shape)
    assert np.all(out[corners] == -3024.0)
    np.testing.assert_array_equal(out[~corners], vol[~corners] + 1.0)
    assert PaddingGuard(plus_one)(vol[:1, None]).shape == (1, SIZE, SIZE)


def test_pixel_padding_value_is_read_as_out_of_field(exam, tmp_path):
    """Pixels marked by PixelPaddingValue are padding even where their value looks like bone."""
    vol = exam.volumes["B30f"][:2]
    files = write_ct_series(
        tmp_path / "s", vol, spacing_zyx=exam.spacing_zyx, kernel="STANDARD", study_uid="1.2.3",
        series_uid="1.2.3.4", frame_uid="1.2.3.5", series_number=1, description="padded",
    )  # fmt: skip
    for f in files:
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array.copy()
        stored[_corners()] = 3000  # 1976 HU with the -1024 intercept
        ds.PixelData = stored.tobytes()
        ds.PixelPaddingValue = 3000
        ds["PixelPaddingValue"].VR = "SS"
        ds.save_as(f)
    hu, _ = read_series(open_series(tmp_path / "s"))
    assert np.all(hu[:, _corners()] == -3024.0)
    stored_hu = np.rint(vol + 1024.0) - 1024.0  # as the writer rounds (float32, -1024 intercept)
    np.testing.assert_allclose(hu[:, ~_corners()], stored_hu[:, ~_corners()], atol=0.01)
