"""Kernel fingerprint: does a series look like the (smooth/sharp) kernel it is claimed to be?"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from medseg.ct.fingerprint import (
    KernelFingerprint,
    check_kernel_claims,
    compare_fingerprints,
    expected_direction,
    kernel_check_report,
    kernel_fingerprint,
    nominal_class,
    nominal_sharpness_order,
    sharpness_class,
)
from medseg.synthetic.ct_phantom import KERNELS, PhantomConfig, make_exam

REPO = Path(__file__).resolve().parents[2]
LOCAL_PHILIPS = REPO / "tests" / "data" / "real" / "ct_philips"
SHARED_PHILIPS = (
    Path(os.environ.get("MEDSEG_REALDATA", REPO.parent / "shared" / "realdata")) / "ct_philips_two_kernels"
)
PIXEL_MM = 0.7


@pytest.fixture(scope="module")
def exam():
    return make_exam(7, config=PhantomConfig(size=128, n_slices=3, pixel_mm=PIXEL_MM))


@pytest.fixture(scope="module")
def fps(exam) -> dict[str, KernelFingerprint]:
    return {k: kernel_fingerprint(v, (PIXEL_MM, PIXEL_MM)) for k, v in exam.volumes.items()}


def read_hu(folder: Path) -> tuple[np.ndarray, tuple[float, float]]:
    """HU volume (z, y, x) of the DICOM files in ``folder``, sorted by position, and (dy, dx)."""
    import pydicom

    ds = sorted(
        (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: float(d.ImagePositionPatient[2])
    )
    assert ds, f"no DICOM files in {folder}"
    vol = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in ds])
    return vol.astype(np.float32), tuple(float(s) for s in ds[0].PixelSpacing)


# --- synthetic Siemens-like kernels ----------------------------------------------------------------------


def test_synthetic_kernels_are_ordered(fps):
    sharp = [fps[k].sharpness for k in KERNELS]
    assert all(math.isfinite(s) for s in sharp), sharp
    for smoother, sharper, a, b in zip(KERNELS, KERNELS[1:], sharp, sharp[1:]):
        assert b > 1.3 * a, f"{sharper} ({b:.2f}) not clearly sharper than {smoother} ({a:.2f})"
    # each feature orders the kernels on its own as well
    for feature in ("noise_sd_hu", "nps_ratio", "hf_ratio"):
        values = [getattr(fps[k], feature) for k in KERNELS]
        assert values == sorted(values), (feature, values)
    assert [sharpness_class(fps[k]) for k in KERNELS] == ["smooth", "medium", "sharp", "very sharp"]
    assert 0.7 < fps["B30f"].sharpness < 1.4  # B30f is the unit
    assert compare_fingerprints(fps["B70f"], fps["B30f"]) > 2.5
    assert compare_fingerprints(fps["B10f"], fps["B30f"]) < 0.7


def test_padding_and_pixel_size(exam, fps):
    # out-of-field padding (-3024 outside a circle, as scanners write it) changes nothing material
    vol = exam.volumes["B50f"].copy()
    n = vol.shape[-1]
    yy, xx = np.mgrid[:n, :n]
    vol[:, np.hypot(yy - n / 2, xx - n / 2) > 0.5 * n] = -3024.0
    padded = kernel_fingerprint(vol, (PIXEL_MM, PIXEL_MM))
    assert padded.sharpness == pytest.approx(fps["B50f"].sharpness, rel=0.1)
    # the same phantom sampled with larger pixels keeps its sharpness (frequencies in cycles/mm)
    coarse = make_exam(7, kernels=("B30f",), config=PhantomConfig(size=100, n_slices=3, pixel_mm=0.9))
    assert kernel_fingerprint(coarse.volumes["B30f"], (0.9, 0.9)).sharpness == pytest.approx(
        fps["B30f"].sharpness, rel=0.25
    )


def test_b70f_given_as_b30f_reference_is_caught(fps):
    inp, out = fps["B50f"], fps["B30f"]  # a perfect B50f -> B30f conversion
    assert check_kernel_claims(inp, "B50f", out, fps["B30f"], "B30f") == []
    warnings = check_kernel_claims(inp, "B50f", out, fps["B70f"], "B30f")
    assert warnings and all("reference" in w and "B30f reconstruction" in w for w in warnings), warnings
    assert any("sharper than the input" in w for w in warnings)
    # without a converted output, the reference is still compared with the input
    assert check_kernel_claims(inp, "B50f", reference_fp=fps["B70f"], claimed_to="B30f")
    assert check_kernel_claims(inp, "B50f", reference_fp=fps["B30f"], claimed_to="B30f") == []


def test_claims_with_vendor_names_use_expect(fps):
    inp, out, wrong = fps["B50f"], fps["B30f"], fps["B70f"]
    # unknown names: only the user's "smoother" claim gives a direction
    assert expected_direction("YA", "UB") is None
    assert expected_direction("YA", "UB", "smoother") == "smoother"
    assert expected_direction("B50f", "B30f", "sharper") == "smoother"  # names win when both are known
    assert check_kernel_claims(inp, "BONE", out, out, "STANDARD", expect="smoother") == []
    with_direction = check_kernel_claims(inp, "BONE", out, wrong, "STANDARD", expect="smoother")
    assert any("should be smoother than a BONE input" in w for w in with_direction), with_direction
    # no direction at all: the reference still must look like the converted output
    no_direction = check_kernel_claims(inp, "BONE", out, wrong, "STANDARD")
    assert len(no_direction) == 1 and "much sharper than the input's converted output" in no_direction[0]
    with pytest.raises(ValueError):
        expected_direction("B50f", "B30f", "softer")


def test_failed_conversion_and_mislabelled_input(fps):
    # the "converted" series is the input unchanged: the conversion is blamed, not the reference
    warnings = check_kernel_claims(fps["B50f"], "B50f", fps["B50f"], fps["B30f"], "B30f")
    assert len(warnings) == 1 and "converted output looks no smoother" in warnings[0]
    # sharpening conversions work the other way round
    assert check_kernel_claims(fps["B30f"], "B30f", fps["B50f"], fps["B50f"], "B50f") == []
    assert any(
        "should be sharper" in w
        for w in check_kernel_claims(fps["B30f"], "B30f", fps["B50f"], fps["B10f"], "B50f")
    )
    # a smooth series passed as --from B70f: caught from the image alone (Siemens names only)
    warnings = check_kernel_claims(fps["B10f"], "B70f")
    assert (
        len(warnings) == 1 and "looks smooth" in warnings[0] and "B70f is a very sharp kernel" in warnings[0]
    )
    assert check_kernel_claims(fps["B10f"], "FC13") == []  # unknown vendor name: no absolute check


def test_unmeasurable_series():
    air = np.full((2, 64, 64), -1000.0, np.float32)
    air[:, :8] = -2048.0
    fp = kernel_fingerprint(air, (0.7, 0.7))
    assert math.isnan(fp.sharpness) and fp.slices == 0 and sharpness_class(fp) == "unknown"
    assert fp.to_dict()["sharpness"] is None
    assert math.isnan(compare_fingerprints(fp, fp))
    warnings = check_kernel_claims(fp, "B50f", claimed_to="B30f")
    assert len(warnings) == 1 and "could not measure" in warnings[0]
    # a body without soft tissue (all bone): the image spectrum alone gives the sharpness
    yy, xx = np.mgrid[:96, :96]
    bone = np.where(np.hypot(yy - 48, xx - 48) < 35, 400.0, -1000.0)[None] + np.random.default_rng(1).normal(
        0, 20, (2, 96, 96)
    )
    fp = kernel_fingerprint(bone, (0.7, 0.7))
    assert fp.slices == 2 and fp.noise_patches == 0 and math.isnan(fp.noise_sd_hu)
    assert math.isfinite(fp.hf_ratio) and math.isfinite(fp.sharpness)
    with pytest.raises(ValueError):
        kernel_fingerprint(np.zeros((4, 8, 8)), (1.0, 1.0))
    with pytest.raises(ValueError):
        kernel_fingerprint(np.zeros((64, 64)), (1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        kernel_fingerprint(np.zeros((64, 64)), (0.0, 1.0))


def test_single_slice_and_report(exam, fps):
    one = kernel_fingerprint(exam.volumes["B70f"][1], (PIXEL_MM, PIXEL_MM))  # a (y, x) slice
    assert one.slices == 1 and sharpness_class(one) in ("sharp", "very sharp")
    # (dz, dy, dx) as in VolumeMeta.spacing is accepted
    assert kernel_fingerprint(exam.volumes["B30f"], exam.spacing_zyx) == fps["B30f"]
    report = kernel_check_report(fps["B50f"], "B50f", fps["B30f"], fps["B70f"], "B30f")
    assert report["expected_direction"] == "smoother"
    assert report["reference"]["class"] == "very sharp" and report["reference"]["nominal_class"] == "medium"
    assert report["sharpness_ratio"]["reference_vs_converted"] > 2.5
    assert report["warnings"]
    import json

    json.dumps(report)  # JSON-ready
    assert "sharpness" in fps["B30f"].describe()


@pytest.mark.parametrize(
    ("name", "order"),
    [
        ("B10f", 10),
        ("b30f", 30),
        ("B50f", 50),
        ("B70f", 70),
        ("Br40", 40),
        ("Br40d", 40),
        ("BR64", 64),
        ("Qr40", 40),
        ("Hr38", 38),
        ("Bv40", 40),
        ("I30f 3", 30),
        ("B70f\\3", 70),
        ("H30s", 30),
        ("UB", None),
        ("YA", None),
        ("B", None),
        ("C", None),
        ("L", None),
        ("STANDARD", None),
        ("SOFT", None),
        ("LUNG", None),
        ("BONE", None),
        ("FC13", None),
        ("FC51", None),
        ("", None),
        (None, None),
    ],
)
def test_nominal_sharpness_order(name, order):
    assert nominal_sharpness_order(name) == order


def test_nominal_class():
    assert [nominal_class(k) for k in KERNELS] == ["smooth", "medium", "sharp", "very sharp"]
    assert nominal_class("YA") is None
    assert sharpness_class(0.5) == "smooth" and sharpness_class(1.0) == "medium"
    assert sharpness_class(2.0) == "sharp" and sharpness_class(5.0) == "very sharp"


# --- real scanner data: Philips standard kernel UB vs sharp bone kernel YA, one acquisition --------------


def check_philips(ub_dir: Path, ya_dir: Path) -> tuple[KernelFingerprint, KernelFingerprint]:
    ub_vol, ub_px = read_hu(ub_dir)
    ya_vol, ya_px = read_hu(ya_dir)
    assert ub_vol.shape == ya_vol.shape and ub_px == ya_px
    ub, ya = kernel_fingerprint(ub_vol, ub_px), kernel_fingerprint(ya_vol, ya_px)
    assert ub.noise_patches >= 4 and ya.noise_patches >= 4
    assert compare_fingerprints(ya, ub) > 2.5, (ub.describe(), ya.describe())  # measured ~3.3
    assert (
        ya.noise_sd_hu > 3 * ub.noise_sd_hu
        and ya.nps_ratio > 2 * ub.nps_ratio
        and ya.hf_ratio > 2 * ub.hf_ratio
    )
    # Philips names carry no sharpness rank: the user's "smoother" claim drives the relative checks
    assert check_kernel_claims(ya, "YA", reference_fp=ub, claimed_to="UB", expect="smoother") == []
    swapped = check_kernel_claims(ub, "UB", reference_fp=ya, claimed_to="YA", expect="smoother")
    assert swapped and "is it really a YA reconstruction?" in swapped[0]
    return ub, ya


def test_philips_ub_vs_ya_local_copy():
    ub, ya = check_philips(LOCAL_PHILIPS / "UB", LOCAL_PHILIPS / "YA")
    assert sharpness_class(ub) == "smooth" and sharpness_class(ya) in ("medium", "sharp")


def test_philips_ub_vs_ya_full_series():
    if not (SHARED_PHILIPS / "UB_standard").is_dir() or not (SHARED_PHILIPS / "YA_bone").is_dir():
        pytest.skip(f"real data folder absent: {SHARED_PHILIPS} (set MEDSEG_REALDATA to the realdata folder)")
    ub, ya = check_philips(SHARED_PHILIPS / "UB_standard", SHARED_PHILIPS / "YA_bone")
    assert ub.slices == 16 and ya.slices == 16  # 32 slices, 16 sampled
