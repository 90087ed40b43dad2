"""Bad volumes and DICOM series (issue 17 §2): damaged or impossible input is refused, not processed.

Each row runs a real command on a built input and checks the harness's guarantees (exit code, one
line naming the problem, inputs unchanged, nothing in --out). The checks live once in the shared
readers (``medseg/io/volume_checks.py``, ``medseg/io/dicom_checks.py``), so every pipeline inherits
them; rows cover ct-convert and the brain commands. Real-file rows use copies of ``tests/data/real``
(and of ``../shared/realdata`` where present).
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from .conftest import Case, cases_params, check_case, run_cli

REPO = Path(__file__).resolve().parents[2]
PHILIPS = REPO / "tests/data/real/ct_philips/UB"
BRATS = REPO.parent / "shared/realdata/brain_brats2018"
needs_brats = pytest.mark.skipif(not BRATS.is_dir(), reason="../shared/realdata/brain_brats2018 not present")
JPEG_XL = "1.2.840.10008.1.2.4.110"


# --- inputs ------------------------------------------------------------------------------------


def ct_volume(tmp: Path, name: str = "ct.nii.gz") -> Path:
    """A small CT volume file in HU (4 x 24 x 24, 0.7 x 0.7 x 2 mm)."""
    import SimpleITK as sitk

    hu = np.random.default_rng(0).normal(-500, 300, (4, 24, 24)).astype(np.int16)
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.7, 0.7, 2.0))
    path = tmp / name
    sitk.WriteImage(image, str(path), useCompression=name.endswith((".mha", ".nrrd")))
    return path


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def patch_pixdim(path: Path, axis: int, value: float) -> Path:
    """Write ``value`` into NIfTI pixdim[axis] as stored (no library 'fixes' it on the way)."""
    gz = path.name.endswith(".gz")
    raw = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    raw[76 + 4 * axis : 80 + 4 * axis] = struct.pack("<f", value)
    path.write_bytes(gzip.compress(bytes(raw)) if gz else bytes(raw))
    return path


def philips(tmp: Path) -> Path:
    """A writable copy of three real Philips CT slices (kernel UB)."""
    folder = tmp / "series"
    folder.mkdir()
    for f in sorted(PHILIPS.glob("*.dcm")):
        shutil.copyfile(f, folder / f.name)
    return folder


def edit_dicom(path: Path, **values) -> None:
    """Set attributes of one DICOM file as given (also values pydicom would warn about, e.g. NaN)."""
    import pydicom
    from pydicom import config

    ds = pydicom.dcmread(path)
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for keyword, value in values.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    finally:
        config.settings.writing_validation_mode = old


def reencode(path: Path, syntax: str) -> None:
    """Rewrite a DICOM file as if compressed with ``syntax``: encapsulated (junk) frame, that file meta."""
    import pydicom
    from pydicom.encaps import encapsulate

    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(200)])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=True, force_encoding=True)


def brain_case(tmp: Path) -> Path:
    from medseg.synthetic.brain import make_brain_case, write_brain_case

    return write_brain_case(make_brain_case(5001), tmp / "cases", name="SYN")


def real_brain_case(tmp: Path) -> Path:
    source = sorted(BRATS.glob("Brats18_*"))[0]
    case = tmp / "cases" / source.name
    case.mkdir(parents=True)
    for f in source.iterdir():
        shutil.copyfile(f, case / f.name)
    return case


def convert(src: Path, out: Path, *extra: str) -> list:
    return [
        "ct-convert",
        src,
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        out,
        "--device",
        "cpu",
        "-q",
        *extra,
    ]


def brain_segment(case: Path, tmp: Path) -> list:
    return ["brain-segment", case, "--out", tmp / "out", "--device", "cpu", "--no-n4", "-q"]


# --- rows --------------------------------------------------------------------------------------


def _ct_truncated(name: str):
    def build(tmp: Path) -> list:
        return convert(truncate(ct_volume(tmp, name)), tmp / "out.nii.gz")

    return Case(f"ct-convert-truncated-{name}", build, 2, "truncated", inputs=(name,), out="out.nii.gz")


def _ct_pixdim(label: str, value: float):
    def build(tmp: Path) -> list:
        return convert(patch_pixdim(ct_volume(tmp), 1, value), tmp / "out.nii.gz")

    return Case(
        f"ct-convert-pixdim-{label}", build, 2, "NIfTI pixdim", inputs=("ct.nii.gz",), out="out.nii.gz"
    )


def _ct_dicom(case_id: str, phrase: str, **values):
    def build(tmp: Path) -> list:
        series = philips(tmp)
        edit_dicom(series / "IM0016.dcm", **values)
        return convert(series, tmp / "out")

    return Case(case_id, build, 2, phrase, inputs=("series",))


def _ct_syntax(case_id: str, syntax: str, phrase: str):
    def build(tmp: Path) -> list:
        series = philips(tmp)
        reencode(series / "IM0032.dcm", syntax)
        return convert(series, tmp / "out")

    return Case(case_id, build, 2, phrase, inputs=("series",))


def _ct_real_nifti_truncated(tmp: Path) -> list:
    source = sorted(BRATS.glob("Brats18_*/*_t1.nii.gz"))[0]
    shutil.copyfile(source, tmp / "real.nii.gz")
    return convert(truncate(tmp / "real.nii.gz"), tmp / "out.nii.gz")


def _ct_sheared_mha(tmp: Path) -> list:
    path = ct_volume(tmp, "ct.mha")
    text = path.read_bytes().replace(
        b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0.4 0 0 1 0 0 0 1"
    )
    path.write_bytes(text)
    return convert(path, tmp / "out.nii.gz")


def _ct_negative_spacing_mha(tmp: Path) -> list:
    path = ct_volume(tmp, "ct.mha")
    path.write_bytes(re.sub(rb"ElementSpacing = [^\n]*", b"ElementSpacing = 0.7 -0.7 2", path.read_bytes()))
    return convert(path, tmp / "out.nii.gz")


def _ct_sheared_sform(tmp: Path) -> list:
    import nibabel as nib

    affine = np.array([[0.7, 0.3, 0, 0], [0, 0.7, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 4), np.int16), affine), str(tmp / "ct.nii.gz"))
    return convert(tmp / "ct.nii.gz", tmp / "out.nii.gz")


def _brain_truncated(tmp: Path) -> list:
    case = brain_case(tmp)
    truncate(case / "SYN_t1ce.nii.gz")
    return brain_segment(case, tmp)


def _brain_real_truncated(tmp: Path) -> list:
    case = real_brain_case(tmp)
    truncate(next(case.glob("*_t1.nii.gz")))
    return brain_segment(case, tmp)


def _brain_pixdim_nan(tmp: Path) -> list:
    case = brain_case(tmp)
    patch_pixdim(case / "SYN_flair.nii.gz", 3, float("nan"))
    return brain_segment(case, tmp)


def _brain_train_truncated(tmp: Path) -> list:
    case = brain_case(tmp)
    truncate(case / "SYN_t2.nii.gz")
    return ["brain-train", tmp / "cases", "--out", tmp / "out", "--device", "cpu", "--epochs", "1", "-q"]


ROWS = [
    *(_ct_truncated(n) for n in ("ct.nii.gz", "ct.nii", "ct.mha", "ct.nrrd")),
    Case(
        "ct-convert-truncated-real-nifti",
        _ct_real_nifti_truncated,
        2,
        "truncated",
        inputs=("real.nii.gz",),
        out="out.nii.gz",
        marks=(needs_brats,),
    ),
    _ct_pixdim("zero", 0.0),
    _ct_pixdim("negative", -0.7),
    _ct_pixdim("nan", float("nan")),
    Case(
        "ct-convert-negative-spacing-mha",
        _ct_negative_spacing_mha,
        2,
        "voxel spacing (image header) must be a positive number, got y -0.7",
        inputs=("ct.mha",),
        out="out.nii.gz",
    ),
    Case(
        "ct-convert-sheared-mha", _ct_sheared_mha, 2, "not orthonormal", inputs=("ct.mha",), out="out.nii.gz"
    ),
    Case(
        "ct-convert-sheared-nifti",
        _ct_sheared_sform,
        2,
        "not orthonormal",
        inputs=("ct.nii.gz",),
        out="out.nii.gz",
    ),
    _ct_dicom("ct-convert-nan-pixelspacing", "PixelSpacing nan", PixelSpacing=["nan", "nan"]),
    _ct_dicom("ct-convert-zero-pixelspacing", "PixelSpacing 0", PixelSpacing=["0", "0.451"]),
    _ct_dicom("ct-convert-negative-slicethickness", "SliceThickness -1", SliceThickness="-1"),
    _ct_dicom("ct-convert-nan-position", "ImagePositionPatient", ImagePositionPatient=["0", "nan", "760"]),
    _ct_dicom("ct-convert-zero-rescaleslope", "RescaleSlope 0", RescaleSlope="0"),
    _ct_dicom("ct-convert-negative-rescaleslope", "RescaleSlope -1", RescaleSlope="-1"),
    _ct_dicom("ct-convert-nan-rescaleintercept", "RescaleIntercept nan", RescaleIntercept="nan"),
    _ct_dicom(
        "ct-convert-non-orthonormal-orientation",
        "not orthonormal",
        ImageOrientationPatient=["1", "0", "0", "0.5", "1", "0"],
    ),
    _ct_syntax("ct-convert-jpeg-xl", JPEG_XL, f"JPEG XL Lossless ({JPEG_XL})"),
    _ct_syntax("ct-convert-unknown-syntax", "1.2.3.4.5", "transfer syntax 1.2.3.4.5 (unknown)"),
    Case("brain-segment-truncated", _brain_truncated, 2, "truncated", inputs=("cases",)),
    Case(
        "brain-segment-truncated-real",
        _brain_real_truncated,
        2,
        "truncated",
        inputs=("cases",),
        marks=(needs_brats,),
    ),
    Case("brain-segment-pixdim-nan", _brain_pixdim_nan, 2, "NIfTI pixdim", inputs=("cases",)),
    Case("brain-train-truncated", _brain_train_truncated, 2, "truncated", inputs=("cases",)),
]


@pytest.mark.parametrize("case", cases_params(ROWS))
def test_bad_volume(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)


# --- what is odd but usable: converted, with the oddity named ----------------------------------


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """An untrained B50f->B30f converter (output = input - 200 HU), as tests/ct/conftest.py's."""
    import torch

    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = KernelNetConfig("B50f", "B30f", channels=8, depth=3)
    net = build_kernel_net(config=cfg)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.fill_(-0.2)
    path = tmp_path_factory.mktemp("weights") / "B50f_to_B30f.safetensors"
    meta = CheckpointMeta(
        model=MODEL_NAME, task="B50f->B30f", config=cfg.to_dict(), training_data="test (untrained)"
    )
    save_weights(path, net.state_dict(), meta)
    return path


def test_empty_sop_class_siemens_like_series_converts(tmp_path: Path, tiny_weights: Path) -> None:
    """Real slices made Siemens-like (J2K lossless, Br38f) with an empty SOP Class UID (0008,0016):
    the class comes from the file meta, and the derived series is valid CT Image Storage."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    series = philips(tmp_path)
    for f in sorted(series.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ""
        ds.Manufacturer, ds.ConvolutionKernel = "SIEMENS", ["Br38f", "3"]
        ds.compress(JPEG2000Lossless)
        ds.save_as(f)
    assert pydicom.dcmread(f).file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    out = tmp_path / "out"
    result = run_cli(*convert(series, out, "--weights", tiny_weights, "--json"))
    assert result.exit_code == 0, result.output
    files = sorted(out.iterdir())
    assert len(files) == 3
    for f in files:
        ds = pydicom.dcmread(f)  # a valid file: file meta present and consistent
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
        assert ds.pixel_array.shape == (512, 512)


def _tilted_series(
    tmp: Path, *, tilt_deg: float = 0.0, drop: int | None = None, name: str = "series"
) -> Path:
    """A small synthetic CT series (6 slices of 24², 2 mm); with ``tilt_deg`` the slice positions
    shift along y as a tilted gantry's do (GantryDetectorTilt set too); ``drop`` removes one slice."""
    import math

    import pydicom

    from medseg.io.dicom import new_uid
    from medseg.io.dicom_write import write_ct_series

    folder = tmp / name
    hu = np.random.default_rng(1).normal(-300, 200, (6, 24, 24)).astype(np.float32)
    write_ct_series(
        folder,
        hu,
        spacing_zyx=(2.0, 0.7, 0.7),
        kernel="B50f",
        study_uid=new_uid(),
        series_uid=new_uid(),
        frame_uid=new_uid(),
        series_number=1,
        description="tilt test",
    )
    for i, f in enumerate(sorted(folder.iterdir())):
        if i == drop:
            f.unlink()
            continue
        ds = pydicom.dcmread(f)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [f"{x:.3f}", f"{y + z * math.tan(math.radians(tilt_deg)):.3f}", f"{z:.3f}"]
        ds.GantryDetectorTilt = f"{tilt_deg:g}"
        ds.save_as(f)
    return folder


@pytest.mark.parametrize(
    ("tilt", "drop", "phrase"),
    [(15.0, None, "gantry tilt"), (0.0, 3, "inconsistent slice spacing")],
    ids=["gantry-tilt", "non-uniform-spacing"],
)
def test_series_oddity_is_a_warning_in_json(tmp_path, tiny_weights, tilt, drop, phrase) -> None:
    series = _tilted_series(tmp_path, tilt_deg=tilt, drop=drop)
    result = run_cli(*convert(series, tmp_path / "out", "--weights", tiny_weights, "--json"))
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert any(phrase in w for w in doc["items"][0]["warnings"]), doc["items"][0]["warnings"]
    logged = [ln for ln in result.stderr.splitlines() if phrase in ln]
    assert logged and all(ln.startswith("medseg: warning: ") for ln in logged), result.stderr


def test_tilt_warning_reaches_ct_report_and_ct_train_data(tmp_path, tiny_weights) -> None:
    """ct-report's exam item and ct-train's loaded pairs carry the series reader's warning."""
    from medseg.ct.cohort import find_pairs
    from medseg.ct.train import load_pairs
    from medseg.io.dicom import new_uid

    exam = tmp_path / "exam"
    exam.mkdir()
    frame = new_uid()
    for kernel in ("B50f", "B30f"):
        folder = _tilted_series(exam, tilt_deg=12.0, name=kernel)
        for f in folder.iterdir():
            edit_dicom(f, ConvolutionKernel=kernel, FrameOfReferenceUID=frame)
    result = run_cli(
        "ct-report",
        exam,
        "--from",
        "B50f",
        "--to",
        "B30f",
        "--out",
        tmp_path / "qa",
        "--weights",
        tiny_weights,
        "--device",
        "cpu",
        "--no-pdf",
        "-q",
        "--json",
    )
    doc = json.loads(result.stdout)
    warnings = [w for item in doc["items"] for w in item["warnings"]]
    assert any("gantry tilt" in w for w in warnings), result.output
    pairs = load_pairs(find_pairs([exam], "B50f", "B30f"))
    assert any("gantry tilt" in w for p in pairs for w in p.warnings)
