"""ct-train pairs series by acquisition (FrameOfReferenceUID + slice position), in any folder layout.

Real Philips headers (tests/data/real/ct_philips: 3 slices each of the UB and YA reconstructions of
one acquisition) and small synthetic exams; bad pairs are refused with one line and exit 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medseg.ct.cohort import find_pairs, kernel_key, match_slices
from medseg.ct.train import CTTrainConfig, slab_split, train, train_text
from medseg.errors import InputError
from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, write_exam_dicom

from .conftest import run_cli

PHILIPS = Path(__file__).resolve().parents[1] / "data" / "real" / "ct_philips"
pydicom = pytest.importorskip("pydicom")


def tiny(**overrides) -> CTTrainConfig:
    base = {"epochs": 1, "batch_size": 2, "channels": 8, "depth": 3, "steps_per_epoch": 2, "crop": 32}
    return CTTrainConfig(**{**base, **overrides})


def rewrite(src: Path, dst: Path, edit=None, files: list[str] | None = None) -> Path:
    """Copy a series folder, changing each header with ``edit(ds)`` (the input stays untouched)."""
    dst.mkdir(parents=True, exist_ok=True)
    for file in sorted(src.iterdir()):
        if not file.name.endswith(".dcm") or (files is not None and file.name not in files):
            continue
        ds = pydicom.dcmread(file)
        if edit is not None:
            edit(ds)
        ds.save_as(dst / file.name)
    return dst


def shift_z(mm: float):
    def edit(ds):
        ds.ImagePositionPatient = [float(v) for v in ds.ImagePositionPatient[:2]] + [
            float(ds.ImagePositionPatient[2]) + mm
        ]

    return edit


def test_real_philips_pair_is_found_by_kernel_tag_and_position():
    pairs = find_pairs([PHILIPS], "YA", "UB")
    assert len(pairs) == 1
    p = pairs[0]
    assert p.source.path.name == "YA" and p.target.path.name == "UB"
    assert list(p.source_index) == [0, 1, 2] and list(p.target_index) == [0, 1, 2]
    assert p.positions.tolist() == pytest.approx([748.21, 763.21, 779.21])
    assert p.exam_key.startswith("1.3.46.670589")  # the Philips FrameOfReferenceUID
    # kernel names are opaque but compared after normalisation
    assert kernel_key(" ya ") == kernel_key("YA") and kernel_key("b50f") == kernel_key("B50f")
    assert find_pairs([PHILIPS / "UB", PHILIPS / "YA"], "ub", "ya")[0].target.path.name == "YA"


def test_all_series_in_one_folder_and_several_roots(tmp_path):
    cfg = PhantomConfig(size=32, n_slices=4)
    for seed, layout in ((11, "flat"), (12, "folders")):
        write_exam_dicom(
            make_exam(seed, kernels=("B30f", "B50f"), config=cfg),
            tmp_path / f"e{seed}",
            seed=seed,
            name=f"e{seed}",
            layout=layout,
        )
    pairs = find_pairs([tmp_path / "e11", tmp_path / "e12"], "B50f", "B30f")
    assert sorted(p.name for p in pairs) == ["e11", "e12"]
    assert all(len(p.source_index) == 4 for p in pairs)
    assert len({p.exam_key for p in pairs}) == 2  # two acquisitions: two frames of reference
    # a study folder holding both exams (exam folders) gives the same pairs
    assert sorted(p.name for p in find_pairs([tmp_path], "B50f", "B30f")) == ["e11", "e12"]


def test_slices_are_matched_by_position_not_by_order(tmp_path):
    cfg = PhantomConfig(size=32, n_slices=6)  # 1.5 mm slices: tolerance 0.375 mm
    write_exam_dicom(make_exam(21, kernels=("B30f", "B50f"), config=cfg), tmp_path / "src", seed=21)
    names = sorted(p.name for p in (tmp_path / "src" / "B30f").iterdir())
    root = tmp_path / "study"
    shutil.copytree(tmp_path / "src" / "B50f", root / "B50f")
    rewrite(tmp_path / "src" / "B30f", root / "B30f", shift_z(0.3), files=names[2:5])  # 3 of 6, 0.3 mm off
    (pair,) = find_pairs([root], "B50f", "B30f")
    assert list(pair.source_index) == [2, 3, 4] and list(pair.target_index) == [0, 1, 2]
    # beyond the tolerance nothing matches, and the pair is refused with the reason
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "src" / "B50f", bad / "B50f")
    rewrite(tmp_path / "src" / "B30f", bad / "B30f", shift_z(0.6))
    with pytest.raises(InputError, match="no common slice positions"):
        find_pairs([bad], "B50f", "B30f")


def test_match_slices_tolerance():
    si, ti = match_slices(np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.1, 2.4, 3.05]), 0.25)
    assert si.tolist() == [1, 3] and ti.tolist() == [0, 2]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (  # another frame of reference AND another acquisition time (a UID alone may differ: below)
            lambda ds: (
                setattr(ds, "FrameOfReferenceUID", "1.2.3.4"),
                setattr(ds, "AcquisitionTime", "101010"),
            ),
            "different FrameOfReferenceUID",
        ),
        (lambda ds: setattr(ds, "PixelSpacing", [0.5, 0.5]), "different pixel spacing"),
        (shift_z(100.0), "no common slice positions"),
        (
            lambda ds: setattr(
                ds, "ImagePositionPatient", [-100.0, -1.85, float(ds.ImagePositionPatient[2])]
            ),
            "different reconstruction field of view",
        ),
    ],
)
def test_mismatched_pairs_are_refused_via_the_cli(tmp_path, edit, reason):
    root = tmp_path / "study"
    shutil.copytree(PHILIPS / "YA", root / "YA")
    rewrite(PHILIPS / "UB", root / "UB", edit)
    out = tmp_path / "run"
    r = run_cli(
        "ct-train", root, "--from", "YA", "--to", "UB", "--out", out, "--device", "cpu", "-q", "--json"
    )
    assert r.exit_code == 2, r.output
    doc = json.loads(r.stdout)  # one JSON document
    assert doc["exit_code"] == 2 and reason in doc["error"] and "\n" not in doc["error"]
    assert str(root / "YA") in doc["error"] and "UB series" in doc["error"]  # names the series and folder
    assert not out.exists()


def test_missing_kernel_names_what_was_found():
    with pytest.raises(InputError, match=r"no B30f series found \(CT series found: UB, YA\)"):
        find_pairs([PHILIPS], "YA", "B30f")


def test_slab_split_leaves_gaps_and_keeps_test_on_top():
    parts = slab_split(32, (0.6, 0.2, 0.2), gap=3)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    assert len(tr) + len(va) + len(te) == 32 - 2 * 3
    assert va[0] - tr[-1] == 4 and te[0] - va[-1] == 4 and te[-1] == 31  # 3 slices left out in between
    assert min(len(va), len(te)) >= 1 and len(tr) > len(va)
    few = slab_split(5, (0.6, 0.2, 0.2), gap=2)  # no room for held-out slabs and gaps
    assert len(few["train"]) == 5 and len(few["val"]) == len(few["test"]) == 0
    assert len(slab_split(10, (1.0, 0.0, 0.0), gap=3)["train"]) == 10


def test_one_exam_is_split_by_slabs_and_the_summary_ends_with_the_test(tmp_path):
    exam = tmp_path / "exam"
    cfg = PhantomConfig(size=40, n_slices=14)
    write_exam_dicom(make_exam(31, kernels=("B30f", "B50f"), config=cfg), exam, seed=31, layout="flat")
    out = tmp_path / "run"
    r = run_cli(
        "ct-train", exam, "--from", "B50f", "--to", "B30f", "--out", out, "--epochs", "1", "--crop", "32",
        "--steps-per-epoch", "2", "--batch-size", "2", "--device", "cpu", "-q", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc)[-1] == "extra" and list(doc["extra"])[-1] == "test"
    split, test = doc["extra"]["split"], doc["extra"]["test"]
    assert split["mode"] == "slabs" and "slabs along z" in split["description"]
    # 14 slices of 1.5 mm: gap max(2 slices, 3 mm) = 2 slices
    (slab,) = split["slabs"]
    assert slab["gap_slices"] == 2 and slab["val"][0] - slab["train"][1] == 3
    assert test["on"] == "held-out test slabs" and test["slices"] >= 1
    assert test["rmse_before_hu"] > 0 and np.isfinite(test["rmse_after_hu"])
    assert test["reduction_pct"] == pytest.approx(
        100 * (test["rmse_before_hu"] - test["rmse_after_hu"]) / test["rmse_before_hu"]
    )


def test_volume_files_named_after_kernels_still_pair(tmp_path):
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    data = tmp_path / "data"  # the run folder may not lie inside the training data
    for i in range(3):
        folder = data / f"exam{i}"
        folder.mkdir(parents=True)
        base = rng.normal(0, 100, (6, 32, 32)).astype(np.float32)
        for kernel, volume in (("B30f", base), ("B50f", base + rng.normal(0, 30, base.shape))):
            sitk.WriteImage(
                sitk.GetImageFromArray(volume.astype(np.float32)), str(folder / f"{kernel}.nii.gz")
            )
    pairs = find_pairs([data], "B50f", "B30f")
    assert sorted(p.name for p in pairs) == ["exam0", "exam1", "exam2"]
    result = train([data], tmp_path / "run", tiny(), device="cpu")
    assert result.extra["split"]["mode"] == "exams"  # three exams: split by exam
    assert "by exam" in train_text(result) and train_text(result).splitlines()[-1].startswith("test:")


def test_two_exams_split_by_slabs_three_by_exam():
    from medseg.ct.train import PairedSlices, split_slices

    def exam(i: int, n: int = 20) -> PairedSlices:
        x = np.full((n, 8, 8), i, np.int16) + np.arange(n, dtype=np.int16)[:, None, None]
        return PairedSlices(f"e{i}", f"for{i}", x, x + 1, 1.0)

    stacks, info = split_slices([exam(0), exam(100)], (0.6, 0.2, 0.2), seed=0)
    assert info["mode"] == "slabs" and "2 exams" in info["description"]
    assert [s["exam"] for s in info["slabs"]] == ["e0", "e100"]
    # both exams contribute to every part, and no slice is in two parts or within the gap
    seen = {part: set(stacks[part][0][:, 0, 0].tolist()) for part in ("train", "val", "test")}
    assert all({v // 100 for v in seen[part]} == {0, 1} for part in seen)
    assert not (seen["train"] & seen["val"]) and not (seen["val"] & seen["test"])
    assert min(seen["val"]) - max(v for v in seen["train"] if v < 100) == 4  # gap: 3 slices = 3 mm
    stacks, info = split_slices([exam(0), exam(100), exam(200)], (0.6, 0.2, 0.2), seed=0)
    assert info["mode"] == "exams" and sum(len(info[p]) for p in ("train", "val", "test")) == 3
    assert len(stacks["train"][0]) == 20


def test_kernel_tags_are_matched_to_the_requested_kernels():
    from medseg.ct.cohort import which_kernel

    assert which_kernel("UB", "YA", "UB") == "UB" and which_kernel("ya", "YA", "UB") == "YA"
    assert which_kernel("Br50f\\3", "B50f", "B30f") == "B50f"  # Siemens tag + strength, by family
    assert which_kernel("B30f\\SOFT", "B50f", "B30f") == "B30f"  # multi-valued: any value names it
    assert which_kernel("B50s", "B50f", "B50s") == "B50s"  # exact wins over the family
    assert which_kernel("Br50f", "B50f", "B50s") is None  # ambiguous family: not guessed
    assert which_kernel("STANDARD", "YA", "UB") is None and which_kernel("", "YA", "UB") is None


def test_exam_with_subfolders_not_named_after_kernels_is_one_exam(tmp_path):
    """ct-report's discovery: UB/ and YA/ (or UB_standard/, YA_bone/) of one acquisition are one exam."""
    from medseg.ct.cohort import discover_exams

    shutil.copytree(PHILIPS / "UB", tmp_path / "UB_standard")
    shutil.copytree(PHILIPS / "YA", tmp_path / "YA_bone")
    (exam,) = discover_exams([tmp_path])
    assert sorted(exam.series) == ["UB", "YA"] and exam.path == tmp_path
