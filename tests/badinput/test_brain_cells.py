"""Input that breaks what the brain and cells methods assume (issue 17 §2): refused in words, not processed.

One row per case, run through the real CLI by the shared harness (exit code, one line with the
phrase, inputs unchanged, nothing in --out, --json valid). The checks live in
``medseg/brain/checks.py`` (called by ``medseg/brain/io.py``: same file for several modalities,
CT in HU, implausible field of view), ``medseg/cells/io.py`` (TIFF pages of different sizes) and
``cli/_types.py`` (NaN/inf numeric options). Batches record such a case as a failed item (exit 5).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import Case, cases_params, check_case, digest, run_cli

REPO = Path(__file__).resolve().parents[2]
PHILIPS = REPO / "tests/data/real/ct_philips/UB"
TAGS = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}


# --- inputs ------------------------------------------------------------------------------------


@functools.cache
def _phantom(seed: int):
    from medseg.synthetic.brain import make_brain_case

    return make_brain_case(seed)


def brain_case(tmp: Path, name: str = "SYN", seed: int = 5001) -> Path:
    """A small synthetic BraTS case folder under ``tmp/cases``."""
    from medseg.synthetic.brain import write_brain_case

    return write_brain_case(_phantom(seed), tmp / "cases", name=name)


def mod(case: Path, m: str) -> Path:
    return case / f"{case.name}_{TAGS[m]}.nii.gz"


def rewrite(path: Path, fn=None, *, spacing=None) -> None:
    """Rewrite a NIfTI file's voxels (``fn(voxels)``) and/or spacing, keeping the rest of its geometry."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if fn is not None:
        new = sitk.GetImageFromArray(fn(sitk.GetArrayFromImage(img).astype(np.float32)))
        new.CopyInformation(img)
        img = new
    if spacing is not None:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def to_ct(arr: np.ndarray) -> np.ndarray:
    """The same head as a CT in HU: air -1000 around it, brain 30 HU, a 2-voxel skull at 1500."""
    from scipy import ndimage as ndi

    brain = arr > 0
    skull = ndi.binary_dilation(brain, iterations=2) & ~brain
    return np.where(brain, 30.0, np.where(skull, 1500.0, -1000.0)).astype(np.float32)


def segment(*args) -> list:
    return ["brain-segment", *args, "--device", "cpu", "--no-n4", "-q"]


def segment_case(case: Path, tmp: Path) -> list:
    return segment(case, "--out", tmp / "out")


def explicit(tmp: Path, **paths: Path) -> list:
    return segment(*[a for m, p in paths.items() for a in (f"--{m}", p)], "--out", tmp / "out" / "seg.nii.gz")


# --- brain-segment rows --------------------------------------------------------------------------


def _same_path_t1_t1c(tmp: Path) -> list:
    c = brain_case(tmp)
    return explicit(tmp, t1=mod(c, "t1"), t1c=mod(c, "t1"), t2=mod(c, "t2"), flair=mod(c, "flair"))


def _one_file_for_all_four(tmp: Path) -> list:
    f = mod(brain_case(tmp), "flair")
    return explicit(tmp, t1=f, t1c=f, t2=f, flair=f)


def _byte_copy_in_folder(tmp: Path) -> list:
    c = brain_case(tmp)
    shutil.copy(mod(c, "flair"), mod(c, "t2"))
    return segment_case(c, tmp)


def _symlink_in_folder(tmp: Path) -> list:
    c = brain_case(tmp)
    mod(c, "t1c").unlink()
    mod(c, "t1c").symlink_to(mod(c, "t1").name)
    return segment_case(c, tmp)


def _same_voxels_other_file(tmp: Path) -> list:
    import SimpleITK as sitk

    c = brain_case(tmp)
    mod(c, "t1c").unlink()  # T1 saved again, uncompressed, as T1c: other bytes, same image
    sitk.WriteImage(sitk.ReadImage(str(mod(c, "t1"))), str(c / f"{c.name}_t1ce.nii"))
    return segment_case(c, tmp)


def _ct_as_t1(tmp: Path) -> list:
    c = brain_case(tmp)
    rewrite(mod(c, "t1"), to_ct)
    return segment_case(c, tmp)


def _real_ct_series_as_flair(tmp: Path) -> list:
    c = brain_case(tmp)
    ct = shutil.copytree(PHILIPS, tmp / "ct_series")
    return explicit(tmp, t1=mod(c, "t1"), t1c=mod(c, "t1c"), t2=mod(c, "t2"), flair=ct)


def _whole_body_fov(tmp: Path) -> list:
    c = brain_case(tmp)
    for m in TAGS:
        rewrite(mod(c, m), spacing=(3.0, 3.0, 30.0))  # 24 slices x 30 mm: 720 mm of content
    return segment_case(c, tmp)


def _spacing_in_cm(tmp: Path) -> list:
    c = brain_case(tmp)
    for m in TAGS:
        rewrite(mod(c, m), spacing=(0.3, 0.3, 0.5))  # the brain becomes ~1 mL
    return segment_case(c, tmp)


def _no_foreground(tmp: Path) -> list:
    """Nothing but a 3 x 3 x 3 speck in each modality: no brain to segment."""
    c = brain_case(tmp)
    for k, m in enumerate(TAGS):
        speck = np.zeros((24, 64, 64), np.float32)
        speck[10:13, 30:33, 30:33] = 100.0 + k
        rewrite(mod(c, m), lambda a, s=speck: s)
    return segment_case(c, tmp)


def _one_modality_empty(tmp: Path) -> list:
    c = brain_case(tmp)
    rewrite(mod(c, "t2"), np.zeros_like)
    return segment_case(c, tmp)


def _two_d_image(tmp: Path) -> list:
    import SimpleITK as sitk

    c = brain_case(tmp)
    plane = sitk.GetArrayFromImage(sitk.ReadImage(str(mod(c, "t1"))))[12]
    mod(c, "t1").unlink()
    sitk.WriteImage(sitk.GetImageFromArray(plane), str(mod(c, "t1")))
    return segment_case(c, tmp)


# --- brain-train / brain-eval rows ---------------------------------------------------------------


def train(tmp: Path) -> list:
    return [
        "brain-train",
        tmp / "cases",
        "--out",
        tmp / "out",
        "--device",
        "cpu",
        "--epochs",
        "1",
        "--no-n4",
        "-q",
    ]


def _train_byte_copy(tmp: Path) -> list:
    _byte_copy_in_folder(tmp)
    return train(tmp)


def _train_ct(tmp: Path) -> list:
    _ct_as_t1(tmp)
    return train(tmp)


def _train_lr_nan(tmp: Path) -> list:
    brain_case(tmp)
    return [*train(tmp), "--lr", "nan"]


def _eval_same_file(tmp: Path) -> list:
    c = brain_case(tmp)
    shutil.copy(mod(c, "t1"), mod(c, "t1c"))
    pred = tmp / "pred"
    pred.mkdir()
    shutil.copy(c / f"{c.name}_seg.nii.gz", pred / f"{c.name}_seg.nii.gz")
    return ["brain-eval", c, "--pred", pred, "--out", tmp / "out", "-q"]


# --- cells-segment rows --------------------------------------------------------------------------


def cells_image(tmp: Path, name: str = "cells.png") -> Path:
    from medseg.cells.io import to_uint8, write_png
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    (tmp / "in").mkdir(exist_ok=True)
    return write_png(
        tmp / "in" / name, to_uint8(synthetic_cells(3, SyntheticCellsConfig(height=64, width=64))[0])
    )


def _pages_of_different_sizes(tmp: Path) -> list:
    import tifffile

    (tmp / "in").mkdir()
    path = tmp / "in" / "stack.tif"
    tifffile.imwrite(path, np.zeros((64, 64), np.uint8), append=True)
    tifffile.imwrite(path, np.zeros((48, 64), np.uint8), append=True)
    return ["cells-segment", path, "--out", tmp / "out", "--device", "cpu"]


def _cells_option(*option: str):
    def build(tmp: Path) -> list:
        return ["cells-segment", cells_image(tmp), "--out", tmp / "out", "--device", "cpu", *option]

    return build


ROWS = [
    Case(
        "brain-segment-t1-and-t1c-same-path", _same_path_t1_t1c, 2, "t1 and t1c are the same file", ("cases",)
    ),
    Case(
        "brain-segment-one-file-for-all-four",
        _one_file_for_all_four,
        2,
        "t1, t1c, t2 and flair are the same file",
        ("cases",),
    ),
    Case("brain-segment-byte-copy", _byte_copy_in_folder, 2, "t2 and flair are the same file", ("cases",)),
    Case("brain-segment-symlink", _symlink_in_folder, 2, "t1 and t1c are the same file", ("cases",)),
    Case(
        "brain-segment-same-voxels",
        _same_voxels_other_file,
        2,
        "t1 and t1c hold identical voxel data",
        ("cases",),
    ),
    Case("brain-segment-ct-in-hu", _ct_as_t1, 2, "values look like CT Hounsfield units", ("cases",)),
    Case(
        "brain-segment-real-ct-series",
        _real_ct_series_as_flair,
        2,
        "flair image: values look like CT Hounsfield units",
        ("cases", "ct_series"),
        marks=(pytest.mark.skipif(not PHILIPS.is_dir(), reason="tests/data/real/ct_philips not present"),),
    ),
    Case("brain-segment-whole-body", _whole_body_fov, 2, "whole-body", ("cases",)),
    Case("brain-segment-spacing-in-cm", _spacing_in_cm, 2, "too small for a brain", ("cases",)),
    Case("brain-segment-no-foreground", _no_foreground, 2, "too small for a brain", ("cases",)),
    Case("brain-segment-empty-modality", _one_modality_empty, 2, "t2 image is all zero", ("cases",)),
    Case("brain-segment-2d-image", _two_d_image, 2, "2D image", ("cases",)),
    Case("brain-train-byte-copy", _train_byte_copy, 2, "t2 and flair are the same file", ("cases",)),
    Case("brain-train-ct-in-hu", _train_ct, 2, "values look like CT Hounsfield units", ("cases",)),
    Case("brain-train-lr-nan", _train_lr_nan, 2, "not a finite number", ("cases",)),
    Case("brain-eval-same-file", _eval_same_file, 2, "t1 and t1c are the same file", ("cases", "pred")),
    Case(
        "cells-segment-pages-of-different-sizes",
        _pages_of_different_sizes,
        2,
        "pages of different sizes",
        ("in",),
    ),
    Case(
        "cells-segment-pixel-size-nan",
        _cells_option("--diameter", "10", "--pixel-size", "nan"),
        2,
        "not a finite",
        ("in",),
    ),
    Case(
        "cells-segment-pixel-size-zero",
        _cells_option("--diameter", "10", "--pixel-size", "0"),
        2,
        "--pixel-size",
        ("in",),
    ),
    Case("cells-segment-diameter-nan", _cells_option("--diameter", "nan"), 2, "positive, finite", ("in",)),
    Case(
        "cells-segment-diameter-negative", _cells_option("--diameter", "-5"), 2, "positive, finite", ("in",)
    ),
    Case(
        "cells-segment-threshold-nan", _cells_option("--threshold", "nan"), 2, "not a finite number", ("in",)
    ),
    Case("cells-segment-h-inf", _cells_option("--h", "inf"), 2, "not a finite number", ("in",)),
]


@pytest.mark.parametrize("case", cases_params(ROWS))
def test_method_assumption(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)


# --- batches: a bad case is a failed item, the others go on ----------------------------------


def test_brain_segment_batch_records_each_bad_case(tmp_path: Path) -> None:
    """Two bad cases in a cohort: each a failed item with its reason (exit 5), nothing written."""
    ct = brain_case(tmp_path, "CT")
    rewrite(mod(ct, "t1"), to_ct)
    dup = brain_case(tmp_path, "DUP")
    shutil.copy(mod(dup, "flair"), mod(dup, "t2"))
    before = digest([tmp_path / "cases"])
    res = run_cli(*segment(tmp_path / "cases", "--out", tmp_path / "out"), "--json")
    assert res.exit_code == 5, res.output
    reasons = {i["name"]: i["reason"] for i in json.loads(res.stdout)["items"] if i["status"] == "failed"}
    assert "values look like CT Hounsfield units" in reasons["CT"]
    assert "t2 and flair are the same file" in reasons["DUP"]
    assert digest([tmp_path / "cases"]) == before
    assert (
        not [p for p in (tmp_path / "out").rglob("*") if p.is_file()] if (tmp_path / "out").exists() else True
    )


def test_brain_eval_batch_fails_the_bad_case_and_scores_the_other(tmp_path: Path) -> None:
    good, bad = brain_case(tmp_path, "GOOD"), brain_case(tmp_path, "BAD", seed=5002)
    shutil.copy(mod(bad, "t1"), mod(bad, "t2"))
    pred = tmp_path / "pred"
    pred.mkdir()
    for c in (good, bad):
        shutil.copy(c / f"{c.name}_seg.nii.gz", pred / f"{c.name}_seg.nii.gz")
    res = run_cli("brain-eval", tmp_path / "cases", "--pred", pred, "--out", tmp_path / "qa", "--json", "-q")
    assert res.exit_code == 5, res.output
    items = {i["name"]: i for i in json.loads(res.stdout)["items"]}
    assert items["GOOD"]["status"] == "ok" and items["GOOD"]["metrics"]["dice_WT"] == 1.0
    assert items["BAD"]["status"] == "failed" and "t1 and t2 are the same file" in items["BAD"]["reason"]


@pytest.mark.parametrize(
    "options",
    [{"diameter": float("nan")}, {"diameter": 10.0, "pixel_size": float("nan")}, {"diameter": -1.0}],
)
def test_cells_library_call_refuses_nan_sizes_before_any_work(options, tmp_path: Path) -> None:
    """The same refusal for library callers that bypass the CLI's option types."""
    from medseg.cells.batch import segment_images
    from medseg.cells.segment import SegmentConfig
    from medseg.errors import InputError

    with pytest.raises(InputError, match="positive, finite number"):
        segment_images([cells_image(tmp_path)], tmp_path / "out", SegmentConfig(**options))
    assert not (tmp_path / "out").exists()
