"""A damaged copy of one's own weights in --models-dir is refused (exit 4, naming the file), never
replaced silently by the demo weights or the sharpness-conditioned converter."""

from __future__ import annotations

import json

from .conftest import run_cli


def _convert(src, out, models, *extra):
    return run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--out", out, "--models-dir", models,
        "--device", "cpu", "--json", *extra,
    )  # fmt: skip


def test_a_truncated_own_model_is_refused_not_replaced(small_exam_dir, tiny_weights, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    data = tiny_weights.read_bytes()
    (models / "B50f_to_B30f.safetensors").write_bytes(data[: len(data) // 3])
    res = _convert(small_exam_dir / "B50f", tmp_path / "out", models)
    assert res.exit_code == 4, res.output
    error = json.loads(res.stdout)["error"]
    assert "B50f_to_B30f.safetensors" in error and "B50f->B30f" in error
    assert not (tmp_path / "out").exists()

    run = tmp_path / "run"  # a ct-train run folder given as the models folder
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"")
    res = _convert(small_exam_dir / "B50f", tmp_path / "out", run)
    assert res.exit_code == 4 and "best.safetensors" in json.loads(res.stdout)["error"]

    res = run_cli(
        "ct-report", small_exam_dir, "--from", "B50f", "--to", "B30f", "--out", tmp_path / "qa",
        "--models-dir", models, "--device", "cpu", "--no-pdf", "--json",
    )  # fmt: skip
    assert res.exit_code == 4 and "B50f_to_B30f.safetensors" in json.loads(res.stdout)["error"]


def test_a_damaged_file_of_another_direction_only_warns(small_exam_dir, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "B70f_to_B10f.safetensors").write_bytes(b"not weights")
    res = _convert(small_exam_dir / "B50f", tmp_path / "out", models, "--no-pdf")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["summary"]["demo_weights"] is True
    assert "ignoring" in res.output and "B70f_to_B10f.safetensors" in res.output
