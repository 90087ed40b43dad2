"""Training (checkpoints, resume, validation split) and the four CLI commands end to end."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from medseg_cli.main import cli


@pytest.fixture(scope="module")
def dataset(small_slide, tmp_path_factory):
    from medseg.pathology.prepare import PrepareConfig, prepare_slides

    path, ann, _s = small_slide
    out = tmp_path_factory.mktemp("ds")
    prepare_slides([(path, ann)], out, config=PrepareConfig(tile=512), overwrite=True)
    return out


def test_train_checkpoints_and_resume(dataset, tmp_path):
    import torch

    from medseg.engine.checkpoint import read_meta
    from medseg.pathology.train import TrainConfig, train

    torch.set_num_threads(1)
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", val_fraction=0.25)
    s1 = train(dataset, tmp_path, config=cfg)
    assert s1["val_tiles"] >= 1 and s1["train_tiles"] > s1["val_tiles"]
    meta = read_meta(tmp_path / "weights.safetensors")
    assert meta.model == "c4d-faster-rcnn" and meta.config["margins"] == {"C4d+": 50, "C4d-": 40}
    assert "C4d+_f1" in meta.metrics
    s2 = train(dataset, tmp_path, config=TrainConfig(epochs=2, batch_size=4, device="cpu", val_fraction=0.25),
               resume=True)
    assert [h["epoch"] for h in s2["history"]] == [1, 2]


def test_cli_help_lists_examples():
    runner = CliRunner()
    for cmd in ("slide-score", "slide-prepare", "slide-train", "slide-eval"):
        res = runner.invoke(cli, [cmd, "--help"])
        assert res.exit_code == 0 and "Examples:" in res.output, cmd


def test_cli_score_and_eval(demo_weights, small_slide, tmp_path):
    path, ann, _s = small_slide
    runner = CliRunner()
    out = tmp_path / "res"
    res = runner.invoke(cli, ["slide-score", str(path), "--weights", str(demo_weights), "--out", str(out),
                              "--device", "cpu", "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["ok"] == 1 and summary["slides"][0]["banff_category"].startswith("C4d")
    res = runner.invoke(cli, ["slide-eval", str(out), str(ann), "--json"])
    assert res.exit_code == 0, res.output
    overall = json.loads(res.stdout)["overall"]
    assert overall["slides"] == 1 and 0 <= overall["C4d+_f1"] <= 1
    # a bad slide in the batch: failed row, exit code 5, one line on stderr
    bad = tmp_path / "bad.svs"
    bad.write_text("nope")
    res = runner.invoke(cli, ["slide-score", str(bad), "--weights", str(demo_weights), "--out", str(out),
                              "--device", "cpu", "--quiet"])
    assert res.exit_code == 5 and "bad: FAILED" in res.stdout


def test_cli_wrong_weights_one_line(small_slide, tmp_path):
    path, _a, _s = small_slide
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"garbage")
    res = CliRunner().invoke(cli, ["slide-score", str(path), "--weights", str(weights), "--out", str(tmp_path / "o")])
    assert res.exit_code == 4 and "medseg: error:" in res.output


def test_cli_prepare_and_train(small_slide, tmp_path):
    path, ann, _s = small_slide
    runner = CliRunner()
    res = runner.invoke(cli, ["slide-prepare", str(path), "--annotations", str(ann), "--out", str(tmp_path / "ds"),
                              "--margin-pos", "45", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["margins"] == {"C4d+": 45, "C4d-": 40}
    res = runner.invoke(cli, ["slide-train", str(tmp_path / "ds"), "--out", str(tmp_path / "run"), "--epochs", "1",
                              "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "weights.safetensors").is_file() and (tmp_path / "run" / "train_state.pt").is_file()


def test_cli_score_defaults_to_the_demo_detector(tmp_path):
    from medseg.pathology.detector import DEMO_WEIGHTS

    assert DEMO_WEIGHTS.is_file()
    bad = tmp_path / "bad.svs"
    bad.write_text("nope")
    res = CliRunner().invoke(cli, ["slide-score", str(bad), "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 5, res.output
    assert "using the demo detector" in res.output and "bad: FAILED" in res.output
