"""brain-eval: volumes of prediction and truth, three planes through the tumour, bad truth labels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.evaluate import volume_metrics
from medseg.brain.report import overlay_figure, tumour_planes


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_volumes_of_prediction_and_truth_in_ml():
    truth = np.zeros((4, 10, 10), np.uint8)
    truth[1:3, 2:7, 2:7] = 2  # 50 voxels WT
    truth[1:3, 3:5, 3:5] = 4  # 8 voxels ET = TC
    pred = np.zeros_like(truth)
    pred[1:3, 2:5, 2:5] = 1  # 18 voxels, all core
    v = volume_metrics(pred, truth, (2.0, 1.0, 1.0))  # 2 uL voxels
    assert v == {
        "pred_WT_ml": 0.036,
        "pred_TC_ml": 0.036,
        "pred_ET_ml": 0.0,
        "truth_WT_ml": 0.1,
        "truth_TC_ml": 0.016,
        "truth_ET_ml": 0.016,
    }


def test_planes_cut_through_an_off_centre_tumour():
    truth = np.zeros((20, 40, 50), np.uint8)
    truth[3:7, 30:36, 5:9] = 2
    pred = np.zeros_like(truth)
    z, y, x = tumour_planes(pred, truth)
    assert 3 <= z < 7 and 30 <= y < 36 and 5 <= x < 9
    assert truth[z].any() and truth[:, y].any() and truth[:, :, x].any()
    assert tumour_planes(pred, np.zeros_like(truth)) == (10, 20, 25)  # nothing anywhere: the centre
    fig = overlay_figure("c", np.ones(truth.shape, np.float32), pred, truth, (5.0, 1.0, 1.0))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        f"{who}: {view}"
        for who in ("truth", "prediction")
        for view in (f"axial z={z}", f"coronal y={y}", f"sagittal x={x}")
    ]
    assert (
        len(fig.axes[0].collections) >= 1 and len(fig.axes[3].collections) == 0
    )  # truth contour, empty pred


def test_eval_reports_volumes_and_planes(brain_cases, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    c = brain_cases[0]
    shutil.copy(c / f"{c.name}_seg.nii.gz", pred / f"{c.name}_seg.nii.gz")
    res = _run("brain-eval", c, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 0, res.output
    m = json.loads(res.stdout)["items"][0]["metrics"]
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(c / f"{c.name}_seg.nii.gz")))
    assert m["truth_WT_ml"] == pytest.approx((seg > 0).sum() * 0.045) and m["pred_WT_ml"] == m["truth_WT_ml"]
    assert m["hd95_WT"] == 0.0 and m["dice_ET"] == pytest.approx(1.0)
    csv = (tmp_path / "qa" / "metrics.csv").read_text().splitlines()
    assert "pred_WT_ml,truth_WT_ml" in csv[0]
    html = (tmp_path / "qa" / "report.html").read_text()
    assert "Axial, coronal and sagittal planes through the tumour" in html and "truth_ET_ml" in html


def test_truth_labels_outside_convention_clear_error(brain_cases, tmp_path):
    c = tmp_path / brain_cases[0].name
    shutil.copytree(brain_cases[0], c)
    seg_path = c / f"{c.name}_seg.nii.gz"
    img = sitk.ReadImage(str(seg_path))
    arr = sitk.GetArrayFromImage(img)
    arr[arr == 4] = 3  # BraTS 2023 enhancing label in a BraTS 2021 folder
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(seg_path))
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(brain_cases[0] / f"{c.name}_seg.nii.gz", pred / f"{c.name}_seg.nii.gz")
    res = _run("brain-eval", c, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 2 and "Traceback" not in res.output
    err = json.loads(res.stdout)["error"]
    assert f"{c.name}_seg.nii.gz" in err and "label values [3] are not in the brats2021 convention" in err
    assert not (tmp_path / "qa").exists() or not any((tmp_path / "qa").iterdir())
