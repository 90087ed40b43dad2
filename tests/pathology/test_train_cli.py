"""Training through the engine trainer (files, held-out validation, resume) and the four CLI commands."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from medseg_cli.main import cli


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiles of two small synthetic slides (16 tiles of 256 px): validation holds one slide out."""
    from medseg.pathology.prepare import PrepareConfig, prepare_dataset
    from medseg.synthetic.slides import SlideSpec, write_slide

    d = tmp_path_factory.mktemp("train")
    slides = []
    for seed in (21, 22):
        path = d / f"s{seed}.tiff"
        write_slide(
            path,
            SlideSpec(width=1024, height=768, seed=seed, positive_fraction=0.5),
            geojson=d / f"s{seed}.geojson",
        )
        slides.append(path)
    run = prepare_dataset(slides, d / "ds", PrepareConfig(tile=256))
    assert run.exit_code == 0
    return d / "ds"


def _config(epochs: int):
    from medseg.pathology.train import DetectorTrainConfig

    return DetectorTrainConfig(epochs=epochs, batch_size=4, device="cpu", val_fraction=0.5, seed=3)


class _Stop(Exception):
    pass


def test_train_files_validation_and_resume_continues_weights_and_optimizer(dataset, tmp_path, monkeypatch):
    """An interrupted run resumed with --resume ends where the uninterrupted one does: same epoch-2
    loss and the same weights, which needs the weights, the AdamW moments and the RNG restored."""
    import torch
    from safetensors.torch import load_file

    from medseg.engine.checkpoint import load_training_state, read_meta
    from medseg.pathology.train import DetectorTask, train_detector

    torch.set_num_threads(1)
    straight = train_detector(dataset, tmp_path / "a", _config(2))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "best.safetensors",
        "history.json",
        "last.safetensors",
        "state.pt",
        "train_config.json",
    ]
    assert straight.validated_on == "held-out data" and straight.extra["validation"] == "1 held-out slide(s)"
    assert straight.extra["train_tiles"] == straight.extra["val_tiles"] == 8
    meta = read_meta(tmp_path / "a" / "best.safetensors")
    assert meta.model == "c4d-faster-rcnn" and meta.config["margins"] == {"C4d+": 50, "C4d-": 40}
    assert "C4d+_f1" in meta.metrics and [h["epoch"] for h in straight.history] == [1, 2]

    real = DetectorTask.train_batches

    def crash_in_epoch_2(self, epoch, rng):
        if epoch == 2:
            raise _Stop
        return real(self, epoch, rng)

    monkeypatch.setattr(DetectorTask, "train_batches", crash_in_epoch_2)
    with pytest.raises(_Stop):
        train_detector(dataset, tmp_path / "b", _config(2))
    monkeypatch.setattr(DetectorTask, "train_batches", real)
    steps = load_training_state(tmp_path / "b" / "state.pt")["optimizer"]["state"][0]["step"]
    resumed = train_detector(dataset, tmp_path / "b", _config(2), resume=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"], rel=1e-4)
    assert load_training_state(tmp_path / "b" / "state.pt")["optimizer"]["state"][0]["step"] == 2 * steps
    a, b = load_file(tmp_path / "a" / "last.safetensors"), load_file(tmp_path / "b" / "last.safetensors")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)


def test_cli_train_resume_without_state_and_existing_run(dataset, tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(cli, ["slide-train", str(dataset), "--out", str(out), "--resume", "--json"])
    assert res.exit_code == 2 and "state.pt" in json.loads(res.stdout)["error"]
    res = runner.invoke(
        cli,
        [
            "slide-train",
            str(dataset),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--val-fraction",
            "0",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "best validation F1" in res.stdout and "on the training tiles (no held-out data)" in res.stdout
    assert "no held-out validation data" in res.stderr  # the trainer's warning
    res = runner.invoke(cli, ["slide-train", str(dataset), "--out", str(out), "--epochs", "1", "--json"])
    assert res.exit_code == 3 and "--resume" in json.loads(res.stdout)["error"]


def test_cli_help_lists_examples():
    runner = CliRunner()
    for cmd in ("slide-score", "slide-prepare", "slide-train", "slide-eval"):
        res = runner.invoke(cli, [cmd, "--help"])
        assert res.exit_code == 0 and "Examples:" in res.output, cmd


def test_cli_score_and_eval(demo_weights, small_slide, tmp_path):
    path, ann, _s = small_slide
    runner = CliRunner()
    out = tmp_path / "res"
    res = runner.invoke(
        cli,
        [
            "slide-score",
            str(path),
            "--weights",
            str(demo_weights),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["counts"] == {"ok": 1, "failed": 0, "skipped": 0} and doc["exit_code"] == 0
    assert doc["items"][0]["metrics"]["banff_category"].startswith("C4d")
    assert doc["summary"]["amp"] == "fp32" and doc["summary"]["channels_last"] is True
    res = runner.invoke(cli, ["slide-eval", str(out), str(ann), "--json"])
    assert res.exit_code == 0, res.output
    overall = json.loads(res.stdout)["summary"]["overall"]
    assert overall["slides"] == 1 and 0 <= overall["C4d+_f1"] <= 1
    # human output in words
    res = runner.invoke(cli, ["slide-eval", str(out), str(ann), str(tmp_path / "other.geojson")])
    assert res.exit_code == 5 and "category agreement" in res.stdout
    assert "other: truth file not found" in res.stderr


def test_cli_partial_failure_json_names_the_failed_slide(demo_weights, small_slide, tmp_path):
    """A corrupt slide among good ones: exit 5, one parseable JSON document naming it and why."""
    path, _ann, _s = small_slide
    corrupt = tmp_path / "corrupt.tiff"
    corrupt.write_bytes(path.read_bytes()[:20000])
    res = CliRunner().invoke(
        cli,
        [
            "slide-score",
            str(path),
            str(corrupt),
            "--weights",
            str(demo_weights),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--json",
            "--quiet",
            "--tile",
            "512",
            "--overlap",
            "128",
        ],
    )
    assert res.exit_code == 5
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 5 and doc["counts"]["failed"] == 1 and doc["counts"]["ok"] == 1
    (failed,) = [i for i in doc["items"] if i["status"] == "failed"]
    assert failed["name"] == "corrupt" and "TIFF" in failed["reason"]
    # the log line; JSON mode keeps stdout to the document
    assert "corrupt: failed:" in res.stderr and "TIFF" in res.stderr.split("corrupt: failed:")[1]


def test_cli_output_checks_and_corrected_rerun(demo_weights, small_slide, tmp_path):
    """Unwritable --out (exit 2), existing results (exit 3), failed-then-corrected rerun (exit 0),
    each with one JSON document; the stale failure leaves the table."""
    path, _ann, _s = small_slide
    runner = CliRunner()
    blocker = tmp_path / "afile.txt"
    blocker.write_text("x")
    base = [
        "--weights",
        str(demo_weights),
        "--device",
        "cpu",
        "--json",
        "--quiet",
        "--tile",
        "512",
        "--overlap",
        "128",
    ]
    res = runner.invoke(cli, ["slide-score", str(path), "--out", str(blocker / "out"), *base])
    assert res.exit_code == 2 and "afile.txt" in json.loads(res.stdout)["error"]
    case = tmp_path / "case.tiff"
    case.write_text("not yet scanned")
    out = tmp_path / "out"
    res = runner.invoke(cli, ["slide-score", str(case), "--out", str(out), *base])
    assert res.exit_code == 5 and json.loads(res.stdout)["items"][0]["status"] == "failed"
    case.write_bytes(path.read_bytes())
    res = runner.invoke(cli, ["slide-score", str(case), "--out", str(out), *base])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [(r["slide"], r["status"]) for r in rows] == [("case", "ok")]
    res = runner.invoke(cli, ["slide-score", str(case), "--out", str(out), *base])
    assert res.exit_code == 3 and "--resume" in json.loads(res.stdout)["error"]


def test_cli_wrong_weights_one_line(small_slide, tmp_path):
    path, _a, _s = small_slide
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"garbage")
    res = CliRunner().invoke(
        cli, ["slide-score", str(path), "--weights", str(weights), "--out", str(tmp_path / "o"), "--json"]
    )
    assert res.exit_code == 4 and "medseg: error:" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "safetensors" in json.loads(res.stdout)["error"] and not (tmp_path / "o").exists()
    res = CliRunner().invoke(
        cli,
        [
            "slide-score",
            str(path),
            "--weights",
            str(tmp_path / "none.safetensors"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 4 and "not found" in res.stderr


def test_cli_prepare_words_not_dicts(small_slide, tmp_path):
    path, ann, _s = small_slide
    res = CliRunner().invoke(
        cli,
        [
            "slide-prepare",
            str(path),
            "--annotations",
            str(ann),
            "--out",
            str(tmp_path / "ds"),
            "--margin-pos",
            "45",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (
        "C4d- boxes" in res.stdout
        and "margins C4d+ 45 px, C4d- 40 px" in res.stdout
        and "{" not in res.stdout
    )
    res = CliRunner().invoke(
        cli, ["slide-prepare", str(path), "--annotations", str(ann), "--out", str(tmp_path / "ds"), "--json"]
    )
    assert res.exit_code == 3 and json.loads(res.stdout)["exit_code"] == 3


def test_cli_score_defaults_to_the_demo_detector(tmp_path):
    from medseg.engine.weights import demo_weights_path
    from medseg.pathology.detector import DEMO_WEIGHTS

    assert demo_weights_path(DEMO_WEIGHTS).is_file()
    bad = tmp_path / "bad.svs"
    bad.write_text("nope")
    res = CliRunner().invoke(cli, ["slide-score", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 5, res.output
    assert "using the demo weights c4d_light_demo.safetensors" in res.stderr
    assert "medseg: failed: bad: not a slide" in res.stderr and "0 slide(s) scored, 1 failed" in res.stdout
