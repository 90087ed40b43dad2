"""brain-eval: volumes of prediction and truth, three planes through the tumour, bad truth labels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.evaluate import hd95, region_metrics, resolve_labels, volume_metrics
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
    res = _run("brain-eval", c, "--pred", pred, "--out", tmp_path / "qa", "--json", "--labels", "2018")
    assert res.exit_code == 2 and "Traceback" not in res.output
    err = json.loads(res.stdout)["error"]
    assert f"{c.name}_seg.nii.gz" in err and "label values [3] are not in the brats2021 convention" in err
    assert not (tmp_path / "qa").exists() or not any((tmp_path / "qa").iterdir())


def _box(shape, lo, hi, value=1):
    a = np.zeros(shape, np.uint8)
    a[tuple(slice(a_, b_) for a_, b_ in zip(lo, hi))] = value
    return a


def test_hand_built_case_known_dice_hd95_sensitivity_specificity():
    """Truth: a 4x10x10 block of enhancing tumour in edema; prediction: the block shifted 2 voxels in x."""
    spacing = (2.0, 1.0, 1.5)
    shape = (12, 30, 30)
    truth = _box(shape, (2, 5, 5), (10, 25, 25), 2)
    truth[4:8, 10:20, 10:20] = 4
    pred = _box(shape, (2, 5, 5), (10, 25, 25), 2)
    pred[4:8, 10:20, 12:22] = 4
    m = region_metrics(pred, truth, spacing)
    # WT identical
    assert m["dice_WT"] == 1.0 and m["hd95_WT"] == 0.0 and m["sensitivity_WT"] == 1.0
    assert m["specificity_WT"] == 1.0
    # ET: 400 voxels each, 320 overlap -> Dice 0.8; x shift of 2 voxels at 1.5 mm: surface voxels on the
    # shifted faces are 3 mm from the other surface, the rest 0 -> the 95th percentile is 3 mm
    assert m["dice_ET"] == pytest.approx(0.8) and m["sensitivity_ET"] == pytest.approx(0.8)
    assert m["specificity_ET"] == pytest.approx(1 - 80 / (truth.size - 400))
    assert m["hd95_ET"] == pytest.approx(3.0)
    assert m["dice_TC"] == m["dice_ET"] and m["hd95_TC"] == m["hd95_ET"]


def test_hd95_is_the_95th_percentile_not_the_maximum():
    """A far single false voxel moves the Hausdorff distance, not HD95 (1 of 57 pred surface voxels)."""
    truth = _box((20, 20, 40), (2, 2, 2), (6, 6, 6))
    pred = truth.copy().astype(bool)
    pred[3, 3, 35] = True
    assert hd95(pred, truth.astype(bool), (1.0, 1.0, 1.0)) == 0.0
    one_each = (_box((5, 5, 5), (1, 1, 1), (2, 2, 2)) > 0, _box((5, 5, 5), (2, 1, 4), (3, 2, 5)) > 0)
    assert hd95(*one_each, (2.0, 1.0, 1.0)) == pytest.approx(np.hypot(2.0, 3.0))


def test_hd95_equals_monai_on_irregular_shapes():
    import torch
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    spacing = (3.0, 1.0, 0.8)
    for _ in range(3):
        a = ndi.gaussian_filter(rng.random((16, 40, 40)), 3) > 0.52
        b = ndi.gaussian_filter(rng.random((16, 40, 40)), 3) > 0.52
        a[0], b[:, -1] = True, True  # regions touching the grid's border
        ref = compute_hausdorff_distance(
            torch.from_numpy(a[None, None].astype(np.float32)),
            torch.from_numpy(b[None, None].astype(np.float32)),
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        )
        assert hd95(a, b, spacing) == pytest.approx(float(ref[0, 0]), rel=1e-5)


def test_empty_regions_the_brats_way():
    shape, spacing = (155, 240, 240), (1.0, 1.0, 1.0)
    truth = _box(shape, (70, 100, 100), (80, 110, 110), 2)  # edema only: no core, no ET
    m = region_metrics(truth.copy(), truth, spacing)
    assert m["dice_ET"] == 1.0 and m["hd95_ET"] == 0.0  # both empty
    assert np.isnan(m["sensitivity_ET"]) and m["specificity_ET"] == 1.0
    pred = truth.copy()
    pred[74, 104, 104] = 4  # enhancing tumour called where the truth has none
    m = region_metrics(pred, truth, spacing)
    assert m["dice_ET"] == 0.0 and m["hd95_ET"] == pytest.approx(373.13, abs=0.01)  # BraTS penalty
    m = region_metrics(np.zeros_like(truth), truth, spacing)  # tumour missed
    assert m["dice_WT"] == 0.0 and m["hd95_WT"] == pytest.approx(373.13, abs=0.01)
    assert m["sensitivity_WT"] == 0.0


def test_label_conventions_detected_or_given():
    assert resolve_labels({0, 1, 2, 4}, "auto") == "brats2021"
    assert resolve_labels({0, 1, 2, 3}, "auto") == "brats2023"
    assert resolve_labels({0, 2}, "auto") == "brats2021"  # 0/1/2 mean the same in both
    assert resolve_labels({0, 1, 2, 3, 4}, "auto") == "havaei"
    assert resolve_labels({0, 1, 2, 4}, "2018") == "brats2021"
    assert resolve_labels({0, 1, 2, 3}, "2023") == "brats2023"
    with pytest.raises(Exception, match="label values \\[7\\] are in no BraTS convention"):
        resolve_labels({0, 7}, "auto")


def test_eval_cli_2023_truth_against_2018_prediction(brain_cases, tmp_path):
    """Truth written with ET = 3 (BraTS 2023), prediction with ET = 4: auto reads both, Dice 1."""
    c = tmp_path / brain_cases[0].name
    shutil.copytree(brain_cases[0], c)
    seg_path = c / f"{c.name}_seg.nii.gz"
    img = sitk.ReadImage(str(seg_path))
    arr = sitk.GetArrayFromImage(img)
    assert (arr == 4).any()
    arr[arr == 4] = 3
    new = sitk.GetImageFromArray(arr)
    new.CopyInformation(img)
    sitk.WriteImage(new, str(seg_path))
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(brain_cases[0] / f"{c.name}_seg.nii.gz", pred / f"{c.name}_seg.nii.gz")
    res = _run("brain-eval", c, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 0, res.output
    item = json.loads(res.stdout)["items"][0]["metrics"]
    assert item["truth_labels"] == "brats2023" and item["pred_labels"] == "brats2021"
    assert item["dice_ET"] == 1.0 and item["sensitivity_TC"] == 1.0 and item["hd95_WT"] == 0.0
    res = _run("brain-eval", c, "--pred", pred, "--out", tmp_path / "qa2", "--json", "--labels", "2023")
    assert res.exit_code == 2 and "label values [4] are not in the brats2023 convention" in res.stdout
