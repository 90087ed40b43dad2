"""ct-report over several cohorts: exams of the same folder name stay apart (rows, mask files), and an
exam given twice is refused instead of weighing twice in the agreement statistics."""

from __future__ import annotations

import shutil

import pydicom
import pytest
from pydicom.uid import generate_uid

from medseg.ct.cohort import discover_exams
from medseg.ct.report import ReportConfig, run_ct_report
from medseg.errors import InputError


def _site(small_exam_dir, root, *names):
    """Copies of the small exam, each its own acquisition (frame of reference, series), as exams are."""
    for name in names:
        shutil.copytree(small_exam_dir, root / name)
        frame, series = generate_uid(), {}
        for f in sorted((root / name).rglob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.FrameOfReferenceUID = frame
            ds.SeriesInstanceUID = series.setdefault(f.parent.name, generate_uid())
            ds.save_as(f)
    return root


def test_same_exam_names_in_two_cohorts_keep_their_rows_and_masks(small_exam_dir, tiny_weights, tmp_path):
    a = _site(small_exam_dir, tmp_path / "siteA", "exam01", "other")
    b = _site(small_exam_dir, tmp_path / "siteB", "EXAM01")  # one name in another letter case
    cfg = ReportConfig(
        source="B50f",
        target="B30f",
        weights=tiny_weights,
        device="cpu",
        pdf=False,
        conditioned=False,
        save_masks=True,
    )
    result = run_ct_report([a, b], tmp_path / "qa", cfg)
    names = [i.name for i in result.items]
    assert names == ["siteA/exam01", "other", "siteB/EXAM01"]
    masks = [i.outputs["lung_mask"] for i in result.items]
    assert len({m.casefold() for m in masks}) == 3
    assert sorted(p.name for p in (tmp_path / "qa" / "masks").iterdir()) == sorted(
        m.rsplit("/", 1)[1] for m in masks
    )


def test_an_exam_given_twice_is_refused(small_exam_dir, tmp_path):
    a = _site(small_exam_dir, tmp_path / "siteA", "exam01", "exam02")
    with pytest.raises(InputError, match="given twice") as info:
        discover_exams([a, a / "exam01"])
    assert info.value.path == a / "exam01"
    with pytest.raises(InputError, match="given twice"):
        discover_exams([a / "exam02", a / "exam02"])
