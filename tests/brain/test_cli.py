"""brain-segment / brain-train / brain-eval end to end through the CLI: content of the outputs, exit codes,
one JSON document on every exit, and a disk left clean by failures."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.io import find_case_files, labels_from_internal, labels_to_internal, load_case
from medseg.brain.postprocess import postprocess
from medseg.brain.preprocess import preprocess
from medseg.brain.segment import (
    load_brain_model,
    make_predictor,
    predict_volume,
    region_volumes_ml,
    segment_array,
)
from medseg.engine.weights import demo_weights_path


@pytest.fixture(scope="module")
def tiny_weights(brain_cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("brain_w")
    res = CliRunner().invoke(
        cli,
        [
            "brain-train",
            str(brain_cases[0]),
            "--out",
            str(out),
            "--local-channels",
            "4",
            "--global-channels",
            "6",
            "--epochs",
            "2",
            "--steps",
            "3",
            "--batch-size",
            "16",
            "--no-n4",
            "--json",
            "--device",
            "cpu",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["validated_on"] == "training data" and "no held-out validation data" in res.stderr
    assert [h["stage"] for h in doc["history"]] == ["phase1", "phase1", "phase2", "phase2"]
    return doc["best_weights"]


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _explicit(case):
    n = case.name
    return [
        "--t1",
        case / f"{n}_t1.nii.gz",
        "--t1c",
        case / f"{n}_t1ce.nii.gz",
        "--t2",
        case / f"{n}_t2.nii.gz",
        "--flair",
        case / f"{n}_flair.nii.gz",
    ]


def test_segment_writes_the_label_map_geometry_and_volumes(brain_cases, tmp_path):
    """Demo TwoPathCNN, explicit paths, BraTS 2023 labels: the written file is the library's label map."""
    c = brain_cases[0]
    out = tmp_path / "seg.nii.gz"
    weights = demo_weights_path("brain", "brain_twopath_demo.safetensors")
    res = _run(
        "brain-segment",
        *_explicit(c),
        "--out",
        out,
        "--weights",
        weights,
        "--labels",
        "brats2023",
        "--no-n4",
        "--no-tta",
        "--amp",
        "off",
        "--device",
        "cpu",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert "trained on synthetic data only" in res.stderr
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 0 and [i["name"] for i in doc["items"]] == [c.name]
    assert doc["summary"]["tta"] is None
    seg_img = sitk.ReadImage(str(out))
    ref = sitk.ReadImage(str(c / f"{c.name}_t1ce.nii.gz"))
    assert seg_img.GetSize() == ref.GetSize() and seg_img.GetSpacing() == ref.GetSpacing()
    assert np.allclose(seg_img.GetOrigin(), ref.GetOrigin()) and np.allclose(
        seg_img.GetDirection(), ref.GetDirection()
    )
    seg = sitk.GetArrayFromImage(seg_img)
    # the same segmentation computed through the library, written in the BraTS 2023 convention
    model, _meta, prep = load_brain_model(weights)
    prep.n4 = False
    stack, geo = load_case(find_case_files(c))
    internal = segment_array(make_predictor(model, device="cpu"), stack, geo, arch="twopath", prep=prep)
    assert np.array_equal(seg, labels_from_internal(internal, labels="brats2023"))
    assert {1, 2, 3} <= set(np.unique(seg).tolist()) <= {0, 1, 2, 3}  # a tumour, and ET is 3 (never 4)
    # by default (TTA) the single slice net's labels are the argmax of its softmax averaged with the
    # softmax of the case rotated 180 degrees in-plane, rotated back: computed here view by view
    tta_out = tmp_path / "tta.nii.gz"
    args = ["--weights", weights, "--no-n4", "--amp", "off", "--json"]  # fp32: compared with fp32 below
    res = _run("brain-segment", *_explicit(c), "--out", tta_out, *args)
    assert res.exit_code == 0, res.output
    assert "rotated 180 degrees" in json.loads(res.stdout)["summary"]["tta"]
    norm, mask = preprocess(stack, geo.spacing, prep)
    soft = make_predictor(model, device="cpu", postprocess="softmax")
    rot = np.ascontiguousarray(norm[..., ::-1, ::-1])
    views = (
        predict_volume(soft, norm, arch="twopath")
        + predict_volume(soft, rot, arch="twopath")[..., ::-1, ::-1]
    )
    expected = views.argmax(0).astype(np.uint8)
    expected[~mask] = 0
    expected = postprocess(expected, geo.spacing, mask=mask)
    tta_seg = labels_to_internal(sitk.GetArrayFromImage(sitk.ReadImage(str(tta_out))), labels="brats2021")
    assert np.mean(tta_seg == expected) > 0.999  # float sums in another order may flip a tie
    assert not np.array_equal(tta_seg, internal)  # the second view changed some labels
    voxel_ml = 5 * 3 * 3 / 1000
    vols = json.loads((tmp_path / "seg_volumes.json").read_text())
    assert vols["WT_ml"] == pytest.approx((seg > 0).sum() * voxel_ml, rel=1e-6)
    assert vols["TC_ml"] == pytest.approx(np.isin(seg, (1, 3)).sum() * voxel_ml, rel=1e-6)
    assert vols["ET_ml"] == pytest.approx((seg == 3).sum() * voxel_ml, rel=1e-6) and vols["ET_ml"] > 0
    assert {k: vols[k] for k in ("WT_ml", "TC_ml", "ET_ml")} == region_volumes_ml(internal, geo.spacing)
    assert doc["items"][0]["metrics"]["WT_ml"] == vols["WT_ml"]
    assert doc["items"][0]["outputs"]["seg"] == str(out)
    csv = (tmp_path / "seg_volumes.csv").read_text().splitlines()
    assert csv[0].startswith("case,status,WT_ml,TC_ml,ET_ml") and csv[1].startswith(
        f"{c.name},ok,{vols['WT_ml']},"
    )
    # existing output: exit 3, one JSON document naming it
    res = _run("brain-segment", *_explicit(c), "--out", out, "--weights", weights, "--no-n4", "--json")
    assert res.exit_code == 3 and json.loads(res.stdout)["exit_code"] == 3
    assert "seg.nii.gz" in json.loads(res.stdout)["error"] and "--overwrite" in res.stderr


def test_segment_batch_and_eval_report(brain_cases, tiny_weights, tmp_path):
    cohort = tmp_path / "cohort"
    for c in brain_cases:
        shutil.copytree(c, cohort / c.name)
    res = _run(
        "brain-segment",
        cohort,
        "--out",
        tmp_path / "pred",
        "--weights",
        tiny_weights,
        "--device",
        "cpu",
        "--no-n4",
        "--json",
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    rows = (tmp_path / "pred" / "volumes.csv").read_text().splitlines()
    assert len(rows) == 3 and doc["outputs"]["volumes_csv"] == str(tmp_path / "pred" / "volumes.csv")
    for c, item, row in zip(brain_cases, doc["items"], rows[1:]):
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / f"{c.name}_seg.nii.gz")))
        assert set(np.unique(seg).tolist()) <= {0, 1, 2, 4}
        assert item["metrics"]["WT_ml"] == pytest.approx((seg > 0).sum() * 0.045, abs=1e-9)
        assert row.split(",")[:3] == [c.name, "ok", str(item["metrics"]["WT_ml"])]
    res = _run("brain-eval", cohort, "--pred", tmp_path / "pred", "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert [i["name"] for i in result["items"]] == [c.name for c in brain_cases]
    assert {"dice_WT", "hd95_ET"} <= result["items"][0]["metrics"].keys()
    html = (tmp_path / "qa" / "report.html").read_text()
    assert "Per case" in html and "data:image/png;base64" in html and brain_cases[0].name in html
    assert json.loads((tmp_path / "qa" / "metrics.json").read_text())["summary"]["dice_WT"]["n"] == 2


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


def test_eval_partial_failure_names_the_case(brain_cases, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(
        brain_cases[0] / f"{brain_cases[0].name}_seg.nii.gz", pred / f"{brain_cases[0].name}_seg.nii.gz"
    )
    res = _run("brain-eval", *brain_cases, "--pred", pred, "--out", tmp_path / "qa", "--json")
    assert res.exit_code == 5
    doc = json.loads(res.stdout)
    failed = [(i["name"], i["reason"]) for i in doc["items"] if i["status"] == "failed"]
    assert [name for name, _ in failed] == [brain_cases[1].name]
    n = brain_cases[1].name
    assert failed[0][1].startswith(f"no prediction for case {n} (looked for {n}_seg.nii.gz, {n}.nii.gz")
    assert "Cases not evaluated" in (tmp_path / "qa" / "report.html").read_text()


def test_segment_bad_inputs(brain_cases, tiny_weights, tmp_path):
    c = tmp_path / "case"
    shutil.copytree(brain_cases[0], c)
    (c / f"{brain_cases[0].name}_t2.nii.gz").unlink()
    res = _run("brain-segment", c, "--out", tmp_path / "o", "--weights", tiny_weights, "--json")
    assert res.exit_code == 2 and "missing modality t2" in res.stderr
    assert "missing modality t2" in json.loads(res.stdout)["error"]
    res = _run(
        "brain-segment",
        "--t1",
        c / f"{brain_cases[0].name}_t1.nii.gz",
        "--out",
        tmp_path / "x.nii.gz",
        "--weights",
        tiny_weights,
    )
    assert res.exit_code == 2 and "missing modality" in res.stderr
    res = _run(
        "brain-segment",
        brain_cases[0],
        "--out",
        tmp_path / "o",
        "--weights",
        tmp_path / "nope.safetensors",
        "--json",
    )
    assert (
        res.exit_code == 4 and json.loads(res.stdout)["exit_code"] == 4 and "nope.safetensors" in res.stderr
    )
    assert not (tmp_path / "o").exists()  # nothing written by any of these


def test_unwritable_out_is_exit_2_before_any_work(brain_cases, tiny_weights, tmp_path):
    (tmp_path / "afile.txt").write_text("not a folder")
    res = _run(
        "brain-segment",
        brain_cases[0],
        "--out",
        tmp_path / "afile.txt" / "out",
        "--weights",
        tiny_weights,
        "--json",
    )
    assert res.exit_code == 2 and "is a file, not a folder" in json.loads(res.stdout)["error"]
    res = _run("brain-train", brain_cases[0], "--out", tmp_path / "afile.txt" / "run", "--json")
    assert res.exit_code == 2 and "afile.txt" in json.loads(res.stdout)["error"]
    res = _run("brain-eval", brain_cases[0], "--pred", tmp_path, "--out", tmp_path / "afile.txt" / "qa")
    assert res.exit_code == 2 and "afile.txt" in res.stderr


def test_train_resume_without_state_and_existing_run(brain_cases, tiny_weights, tmp_path):
    res = _run("brain-train", brain_cases[0], "--out", tmp_path / "run", "--resume", "--json")
    assert res.exit_code == 2 and "no training state" in json.loads(res.stdout)["error"]
    run_dir = tiny_weights.rsplit("/", 1)[0]
    res = _run("brain-train", brain_cases[0], "--out", run_dir, "--json")
    assert res.exit_code == 3 and "--resume" in json.loads(res.stdout)["error"]


def test_failed_then_corrected_rerun_needs_no_overwrite(brain_cases, tiny_weights, tmp_path):
    """A case that fails leaves nothing behind: after fixing it the same command succeeds."""
    c = tmp_path / "case"
    shutil.copytree(brain_cases[0], c)
    flair = c / f"{brain_cases[0].name}_flair.nii.gz"
    good = flair.read_bytes()
    img = sitk.ReadImage(str(flair))
    zero = sitk.Image(img.GetSize(), img.GetPixelID())
    zero.CopyInformation(img)
    sitk.WriteImage(zero, str(flair))
    args = [
        "brain-segment",
        c,
        "--out",
        tmp_path / "out",
        "--weights",
        tiny_weights,
        "--no-n4",
        "--device",
        "cpu",
    ]
    res = _run(*args)
    assert res.exit_code == 2 and "all zero" in res.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    flair.write_bytes(good)
    res = _run(*args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "case_seg.nii.gz").is_file() and (
        tmp_path / "out" / "case_seg_volumes.json"
    ).is_file()


def test_batch_partial_failure_json_names_the_case_and_corrected_case_reruns(
    brain_cases, tiny_weights, tmp_path
):
    cohort = tmp_path / "cohort"
    for c in brain_cases:
        shutil.copytree(c, cohort / c.name)
    bad = brain_cases[1].name
    (cohort / bad / f"{bad}_t1.nii.gz").unlink()
    res = _run(
        "brain-segment", cohort, "--out", tmp_path / "pred", "--weights", tiny_weights, "--no-n4", "--json"
    )
    assert res.exit_code == 5
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 5 and doc["counts"] == {"ok": 1, "failed": 1, "skipped": 0}
    failed = [i for i in doc["items"] if i["status"] == "failed"]
    assert [i["name"] for i in failed] == [bad] and "missing modality t1" in failed[0]["reason"]
    assert (tmp_path / "pred" / f"{brain_cases[0].name}_seg.nii.gz").is_file()
    assert not list((tmp_path / "pred").glob(f"{bad}_*"))  # the failed case left nothing
    rows = [r.split(",") for r in (tmp_path / "pred" / "volumes.csv").read_text().splitlines()[1:]]
    assert [(r[0], r[1]) for r in rows] == [(brain_cases[0].name, "ok"), (bad, "failed")]
    res = _run("brain-segment", cohort, "--out", tmp_path / "pred2", "--weights", tiny_weights, "--no-n4")
    assert res.exit_code == 5 and f"medseg: failed: {bad}: missing modality t1" in res.stderr
    assert f"{brain_cases[0].name}: WT " in res.stdout  # the human summary of the good case
    # fix the case and segment it into the same folder: no --overwrite needed
    shutil.copy(brain_cases[1] / f"{bad}_t1.nii.gz", cohort / bad / f"{bad}_t1.nii.gz")
    res = _run(
        "brain-segment", cohort / bad, "--out", tmp_path / "pred", "--weights", tiny_weights, "--no-n4"
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pred" / f"{bad}_seg.nii.gz").is_file()


def test_help_has_examples():
    for cmd in ("brain-segment", "brain-train", "brain-eval"):
        res = _run(cmd, "--help")
        assert res.exit_code == 0 and "Examples:" in res.output


def test_segment_mismatched_geometry_cli(brain_cases, tiny_weights, tmp_path):
    c = tmp_path / "case"
    shutil.copytree(brain_cases[0], c)
    flair = c / f"{brain_cases[0].name}_flair.nii.gz"
    img = sitk.ReadImage(str(flair))
    img = sitk.Resample(
        img,
        [48, 48, 24],
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        (4.0, 4.0, 5.0),
        img.GetDirection(),
        0.0,
    )
    sitk.WriteImage(img, str(flair))
    res = _run("brain-segment", c, "--out", tmp_path / "o", "--weights", tiny_weights, "--no-n4")
    assert res.exit_code == 2 and "flair and t1c are on different grids" in res.stderr
    res = _run(
        "brain-segment",
        c,
        "--out",
        tmp_path / "o",
        "--weights",
        tiny_weights,
        "--no-n4",
        "--resample-to",
        "t1c",
    )
    assert res.exit_code == 0, res.output
    out = sitk.ReadImage(str(tmp_path / "o" / "case_seg.nii.gz"))
    assert out.GetSize() == (64, 64, 24)


def test_resample_flag_warns_and_plain_names_work(brain_cases, tiny_weights, tmp_path):
    c = tmp_path / "plain"
    c.mkdir()
    src = brain_cases[0]
    for tag, name in (
        ("t1", "T1.nii.gz"),
        ("t1ce", "T1_post.nii.gz"),
        ("t2", "t2.nii.gz"),
        ("flair", "T2-FLAIR.nii.gz"),
    ):
        shutil.copy(src / f"{src.name}_{tag}.nii.gz", c / name)
    img = sitk.ReadImage(str(c / "t2.nii.gz"))
    img.SetOrigin(tuple(o + 2.0 for o in img.GetOrigin()))
    sitk.WriteImage(img, str(c / "t2.nii.gz"))
    args = ("brain-segment", c, "--out", tmp_path / "o", "--weights", tiny_weights, "--no-n4", "--json")
    res = _run(*args)
    assert (
        res.exit_code == 2
        and "t2.nii.gz" in res.stderr
        and "t2 and t1c are on different grids (origin" in res.stderr
    )
    res = _run(*args, "--resample")
    assert res.exit_code == 0, res.output
    item = json.loads(res.stdout)["items"][0]
    assert (
        len(item["warnings"]) == 1 and "plain: t2 resampled onto the t1c grid (origin" in item["warnings"][0]
    )
    assert "t2 resampled onto the t1c grid" in res.stderr


def test_non_skull_stripped_case_is_segmented_with_a_warning(tiny_weights, tmp_path):
    from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case, write_brain_case

    case = write_brain_case(
        make_brain_case(5005, BrainPhantomConfig(skull_strip=False)), tmp_path, name="HEAD"
    )
    res = _run("brain-segment", case, "--out", tmp_path / "o", "--weights", tiny_weights, "--no-n4", "--json")
    assert res.exit_code == 0, res.output
    warnings = json.loads(res.stdout)["items"][0]["warnings"]
    assert len(warnings) == 1 and "expects skull-stripped BraTS-style input" in warnings[0]
    assert "does not look skull-stripped" in res.stderr
