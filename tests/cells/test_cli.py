"""cells-segment / cells-eval end to end on tiny inputs (random tiny model): outputs, exit codes,
one JSON document on every exit, pre-flight checks and clean reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.io import to_uint8, write_labels, write_png
from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    import torch

    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.train import CellsTrainConfig, make_meta
    from medseg.engine.checkpoint import save_weights

    torch.manual_seed(0)
    config = CellsTrainConfig(model=CellModelConfig(base_channels=4), training_data="random init (test)")
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_weights(path, build_model(config=config.model).state_dict(), make_meta(config, {}))
    return path


@pytest.fixture
def data(tmp_path):
    img_dir, mask_dir = tmp_path / "img", tmp_path / "mask"
    img_dir.mkdir()
    mask_dir.mkdir()
    for i in range(2):
        image, labels = synthetic_cells(900 + i, SyntheticCellsConfig(height=96, width=112))
        write_png(img_dir / f"c{i}.png", to_uint8(image))
        write_labels(mask_dir / f"c{i}_mask.tif", labels)
    return img_dir, mask_dir


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def segment(inputs, out, weights, *extra):
    return run(
        "cells-segment",
        *([inputs] if not isinstance(inputs, list) else inputs),
        "--out",
        out,
        "--weights",
        weights,
        "--device",
        "cpu",
        "--tile",
        "300",
        "--no-report",
        "-q",
        *extra,
    )


def test_segment_outputs_and_bad_input_continues(tmp_path, data, tiny_weights):
    img_dir, _ = data
    (img_dir / "broken.png").write_bytes(b"\x89PNG garbage")
    write_png(img_dir / "blank.png", np.full((40, 50), 17, np.uint8))  # an empty field is not an error
    tifffile.imwrite(
        img_dir / "stack.tif",
        (np.random.default_rng(0).random((2, 70, 50)) * 255).astype(np.uint8),
        photometric="minisblack",
    )
    out = tmp_path / "out"
    res = run(
        "cells-segment",
        img_dir,
        "--out",
        out,
        "--weights",
        tiny_weights,
        "--device",
        "cpu",
        "--tile",
        "300",
        "--save-prob",
        "--json",
        "-q",
    )
    assert res.exit_code == 5, res.output  # one bad image: recorded, the others done
    doc = json.loads(res.stdout)  # exactly one JSON document on stdout
    assert doc["exit_code"] == 5 and doc["counts"] == {"ok": 4, "failed": 1, "skipped": 0}
    failed = [i for i in doc["items"] if i["status"] == "failed"]
    assert (
        len(failed) == 1
        and failed[0]["name"].endswith("broken.png")
        and "cannot read image" in failed[0]["reason"]
    )
    assert not list(out.glob("broken_*"))  # a failed image leaves no outputs
    blank = next(i for i in doc["items"] if i["name"].endswith("blank.png"))
    assert (
        blank["status"] == "ok" and blank["metrics"]["cells"] == 0 and blank["metrics"]["median_area"] is None
    )
    for name in (
        "c0_labels.tif",
        "c0_overlay.png",
        "c0_cells.csv",
        "c0_prob.tif",
        "stack_overlay_p001.png",
        "summary.json",
        "report.html",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text())["counts"] == doc["counts"]
    labels = tifffile.imread(out / "c0_labels.tif")
    assert labels.shape == (96, 112) and labels.dtype == np.uint16
    assert tifffile.imread(out / "stack_labels.tif").shape == (2, 70, 50)
    header = (out / "c0_cells.csv").read_text().splitlines()[0]
    assert header == "page,label,area,centroid_y,centroid_x,perimeter,eccentricity,mean_intensity"
    html = (out / "report.html").read_text()
    assert "Cell segmentation QA" in html and "broken.png" in html and "None" not in html


def test_segment_existing_output_exit_3_before_any_work(tmp_path, data, tiny_weights):
    out = tmp_path / "out"
    assert segment(data[0] / "c0.png", out, tiny_weights).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = segment([data[0] / "c0.png", data[0] / "c1.png"], out, tiny_weights, "--json")
    assert res.exit_code == 3
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 3 and "c0_labels.tif" in doc["error"] and "--overwrite" in doc["error"]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # c1 was not segmented either
    res = segment([data[0] / "c0.png", data[0] / "c1.png"], out, tiny_weights, "--overwrite", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["counts"]["ok"] == 2


def test_segment_unwritable_out(tmp_path, data, tiny_weights):
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    res = segment(data[0], afile / "out", tiny_weights, "--json")
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and "afile.txt" in doc["error"] and "cannot write" in doc["error"]
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


def test_segment_missing_input_and_wrong_weights_leave_nothing(tmp_path, data, tiny_weights):
    out = tmp_path / "out"
    res = segment([data[0] / "c0.png", tmp_path / "typo.png"], out, tiny_weights, "--json")
    assert res.exit_code == 2 and "typo.png" in json.loads(res.stdout)["error"] and not out.exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    res = segment(data[0], out, bad, "--json")
    assert res.exit_code == 4 and "safetensors" in json.loads(res.stdout)["error"]
    assert not out.exists() or not any(out.iterdir())
    # the corrected rerun needs no --overwrite
    res = segment(data[0], out, tiny_weights, "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["counts"]["ok"] == 2


def test_segment_failed_then_corrected_rerun(tmp_path, data, tiny_weights):
    img_dir, _ = data
    (img_dir / "c2.png").write_bytes(b"\x89PNG truncated")
    out = tmp_path / "out"
    res = segment(img_dir, out, tiny_weights)
    assert res.exit_code == 5 and "failed: " + str(img_dir / "c2.png") + ": cannot read image" in res.stderr
    first = json.loads((out / "summary.json").read_text())
    assert [i["name"] for i in first["items"] if i["status"] == "failed"] == [str(img_dir / "c2.png")]
    kept = (out / "c0_labels.tif").stat().st_mtime_ns
    image, _ = synthetic_cells(902, SyntheticCellsConfig(height=96, width=112))
    write_png(img_dir / "c2.png", to_uint8(image))  # the user fixes the file
    res = segment(img_dir, out, tiny_weights, "--resume", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    status = {i["name"].rsplit("/", 1)[-1]: i["status"] for i in doc["items"]}
    assert status == {"c0.png": "skipped", "c1.png": "skipped", "c2.png": "ok"}
    assert (out / "c2_labels.tif").is_file() and (out / "c0_labels.tif").stat().st_mtime_ns == kept
    summary = json.loads((out / "summary.json").read_text())  # describes this run: no stale failed row
    assert summary["counts"] == {"ok": 1, "failed": 0, "skipped": 2} and summary["exit_code"] == 0
    assert summary["summary"]["total_cells"] == sum(i["metrics"]["cells"] for i in summary["items"])


def test_eval(tmp_path, data):
    _, mask_dir = data
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    truth = tifffile.imread(mask_dir / "c0_mask.tif")
    write_labels(pred_dir / "c0_labels.tif", truth)
    write_labels(pred_dir / "c1_labels.tif", np.zeros((3, 3), np.int32))  # wrong size: a failed item
    write_png(pred_dir / "c0_overlay.png", np.zeros((4, 4, 3), np.uint8))  # not a label image: ignored
    res = run("cells-eval", pred_dir, "--truth", mask_dir, "--json", "--out", tmp_path / "m.json")
    assert res.exit_code == 5, res.output
    doc = json.loads(res.stdout)
    assert (
        doc["summary"]["ap50"] == 1
        and doc["summary"]["mean_pixel_iou"] == 1
        and doc["summary"]["images"] == 1
    )
    (failed,) = [i for i in doc["items"] if i["status"] == "failed"]
    assert failed["name"].endswith("c1_labels.tif") and "3x3 differs" in failed["reason"]
    assert json.loads((tmp_path / "m.json").read_text())["counts"] == doc["counts"]
    res = run(
        "cells-eval", pred_dir / "c0_labels.tif", "--truth", mask_dir, "--out", tmp_path / "m.json", "--json"
    )
    assert res.exit_code == 3 and "exists" in json.loads(res.stdout)["error"]
    res = run("cells-eval", pred_dir / "c0_labels.tif", "--truth", mask_dir)
    assert res.exit_code == 0 and "AP@0.5 1.0000" in res.stdout and "cells found" in res.stdout
