"""brain-segment / brain-train / brain-eval end to end through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from medseg_cli.main import cli


@pytest.fixture(scope="module")
def tiny_weights(brain_cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("brain_w")
    res = CliRunner().invoke(cli, ["brain-train", str(brain_cases[0]), "--out", str(out), "--local-channels", "4",
                                   "--global-channels", "6", "--epochs", "2", "--steps", "3", "--batch-size", "16",
                                   "--no-n4", "--json", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["weights"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_segment_explicit_paths(brain_cases, tiny_weights, tmp_path):
    c = brain_cases[0]
    n = c.name
    out = tmp_path / "seg.nii.gz"
    res = _run("brain-segment", "--t1", c / f"{n}_t1.nii.gz", "--t1c", c / f"{n}_t1ce.nii.gz", "--t2",
               c / f"{n}_t2.nii.gz", "--flair", c / f"{n}_flair.nii.gz", "--out", out, "--weights", tiny_weights,
               "--labels", "brats2023", "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    seg_img = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(c / f"{n}_t1ce.nii.gz"))
    assert seg_img.GetSize() == ref.GetSize() and seg_img.GetSpacing() == ref.GetSpacing()
    assert np.allclose(seg_img.GetOrigin(), ref.GetOrigin())
    seg = sitk.GetArrayFromImage(seg_img)
    assert set(np.unique(seg)) <= {0, 1, 2, 3}  # BraTS 2023: ET is 3, never 4
    vols = json.loads((tmp_path / "seg_volumes.json").read_text())
    voxel_ml = 5 * 3 * 3 / 1000
    assert vols["WT_ml"] == pytest.approx((seg > 0).sum() * voxel_ml, rel=1e-6)
    assert vols["ET_ml"] == pytest.approx((seg == 3).sum() * voxel_ml, rel=1e-6)
    assert summary["cases"][0]["WT_ml"] == vols["WT_ml"]
    assert (tmp_path / "seg_volumes.csv").read_text().startswith("case,WT_ml,TC_ml,ET_ml")
    # existing output needs --overwrite (exit 3)
    res = _run("brain-segment", "--t1", c / f"{n}_t1.nii.gz", "--t1c", c / f"{n}_t1ce.nii.gz", "--t2",
               c / f"{n}_t2.nii.gz", "--flair", c / f"{n}_flair.nii.gz", "--out", out, "--weights", tiny_weights)
    assert res.exit_code == 3


def test_segment_batch_and_eval_report(brain_cases, tiny_weights, tmp_path):
    cohort = tmp_path / "cohort"
    for c in brain_cases:
        shutil.copytree(c, cohort / c.name)
    res = _run("brain-segment", cohort, "--out", tmp_path / "pred", "--weights", tiny_weights, "--device", "cpu",
               "--no-n4")
    assert res.exit_code == 0, res.output
    for c in brain_cases:
        assert (tmp_path / "pred" / f"{c.name}_seg.nii.gz").is_file()
    assert len((tmp_path / "pred" / "volumes.csv").read_text().splitlines()) == 3
    res = _run("brain-eval", cohort, "--pred", tmp_path / "pred", "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert len(result["cases"]) == 2 and {"dice_WT", "hd95_ET"} <= result["cases"][0].keys()
    html = (tmp_path / "qa" / "report.html").read_text()
    assert "Per case" in html and "data:image/png;base64" in html and brain_cases[0].name in html


def test_eval_perfect_prediction_scores_one(brain_cases, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    for c in brain_cases:
        shutil.copy(c / f"{c.name}_seg.nii.gz", pred / f"{c.name}_seg.nii.gz")
    res = _run("brain-eval", *brain_cases, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["summary"]
    for r in ("WT", "TC", "ET"):
        assert summary[f"dice_{r}"]["mean"] == pytest.approx(1.0)
        assert summary[f"hd95_{r}"]["mean"] == pytest.approx(0.0)


def test_segment_bad_inputs_exit_2(brain_cases, tiny_weights, tmp_path):
    c = tmp_path / "case"
    shutil.copytree(brain_cases[0], c)
    (c / f"{brain_cases[0].name}_t2.nii.gz").unlink()
    res = _run("brain-segment", c, "--out", tmp_path / "o", "--weights", tiny_weights)
    assert res.exit_code == 2 and "missing modality t2" in res.output
    res = _run("brain-segment", "--t1", c / f"{brain_cases[0].name}_t1.nii.gz", "--out", tmp_path / "x.nii.gz",
               "--weights", tiny_weights)
    assert res.exit_code == 2 and "missing modality" in res.output
    res = _run("brain-segment", brain_cases[0], "--out", tmp_path / "o", "--weights", tmp_path / "nope.safetensors")
    assert res.exit_code == 4


def test_help_has_examples():
    for cmd in ("brain-segment", "brain-train", "brain-eval"):
        res = _run(cmd, "--help")
        assert res.exit_code == 0 and "Examples:" in res.output


def test_segment_mismatched_geometry_cli(brain_cases, tiny_weights, tmp_path):
    c = tmp_path / "case"
    shutil.copytree(brain_cases[0], c)
    flair = c / f"{brain_cases[0].name}_flair.nii.gz"
    img = sitk.ReadImage(str(flair))
    img = sitk.Resample(img, [48, 48, 24], sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (4.0, 4.0, 5.0),
                        img.GetDirection(), 0.0)
    sitk.WriteImage(img, str(flair))
    res = _run("brain-segment", c, "--out", tmp_path / "o", "--weights", tiny_weights, "--no-n4")
    assert res.exit_code == 2 and "flair and t1c are on different grids" in res.output
    res = _run("brain-segment", c, "--out", tmp_path / "o", "--weights", tiny_weights, "--no-n4",
               "--resample-to", "t1c")
    assert res.exit_code == 0, res.output
    out = sitk.ReadImage(str(tmp_path / "o" / "case_seg.nii.gz"))
    assert out.GetSize() == (64, 64, 24)


def test_batch_records_bad_case_and_continues(brain_cases, tiny_weights, tmp_path):
    cohort = tmp_path / "cohort"
    for c in brain_cases:
        shutil.copytree(c, cohort / c.name)
    bad = brain_cases[1].name
    (cohort / bad / f"{bad}_t1.nii.gz").unlink()
    res = _run("brain-segment", cohort, "--out", tmp_path / "pred", "--weights", tiny_weights, "--no-n4")
    assert res.exit_code == 5 and f"{bad}: " in res.output and "missing modality t1" in res.output
    assert (tmp_path / "pred" / f"{brain_cases[0].name}_seg.nii.gz").is_file()
    assert not (tmp_path / "pred" / f"{bad}_seg.nii.gz").exists()
