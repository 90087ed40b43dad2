"""ct-convert by sharpness: --to-sharpness, --like, --to a kernel without direction weights, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.ct.conftest import run_cli, volume


@pytest.fixture(scope="module")
def cond_dir(tmp_path_factory) -> Path:
    """A models folder holding only a small conditioned converter (FiLM randomised: the condition matters)."""
    from medseg.ct.conditioned import MODEL_NAME, ConditionedNetConfig, build_conditioned_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = ConditionedNetConfig(channels=8, depth=3, sharpness_min=0.3, sharpness_max=5.0)
    torch.manual_seed(0)
    net = build_conditioned_net(config=cfg)
    with torch.no_grad():
        net.body[-1].weight.normal_(std=0.05)
        for p in net.film.parameters():
            p.normal_(std=0.3)
    folder = tmp_path_factory.mktemp("cond_models")
    save_weights(
        folder / "cond.safetensors",
        net.state_dict(),
        CheckpointMeta(model=MODEL_NAME, task="any->any", config=cfg.to_dict(), training_data="test fixture"),
    )
    return folder


def _convert(small_exam_dir, out, cond_dir, *args):
    return run_cli(
        "ct-convert", small_exam_dir / "B50f", "--out", out, "--models-dir", cond_dir, "--device", "cpu",
        "--runtime", "torch", "-q", "--json", *args,
    )  # fmt: skip


def test_to_sharpness_writes_a_valid_series_and_records_the_sharpness(small_exam_dir, tmp_path, cond_dir):
    from medseg.ct.models import measure_series

    r = _convert(small_exam_dir, tmp_path / "o", cond_dir, "--to-sharpness", "1.5")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    s = doc["summary"]
    assert s["model"] == "sharpness-conditioned" and s["weights"].endswith("cond.safetensors")
    assert s["sharpness"]["target"] == 1.5 and s["sharpness"]["target_from"] == "--to-sharpness"
    measured = measure_series(small_exam_dir / "B50f").sharpness
    assert s["sharpness"]["source"] == pytest.approx(measured, abs=1e-3)
    out, src = volume(tmp_path / "o"), volume(small_exam_dir / "B50f")
    assert out.shape == src.shape and np.abs(out - src).max() > 1  # converted, same grid
    import pydicom

    first = pydicom.dcmread(sorted((tmp_path / "o").glob("*.dcm"))[0])
    assert first.Modality == "CT" and "sharpness 1.50" in str(first.ConvolutionKernel)


def test_like_takes_the_sharpness_of_the_given_series(small_exam_dir, tmp_path, cond_dir):
    from medseg.ct.models import measure_series

    ref = small_exam_dir / "B30f"
    r = _convert(small_exam_dir, tmp_path / "o", cond_dir, "--like", ref, "--reference", ref, "--no-pdf")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    sh = doc["summary"]["sharpness"]
    want = measure_series(small_exam_dir / "B30f").sharpness
    assert sh["target"] == pytest.approx(want, abs=1e-3) and "--like" in sh["target_from"]
    assert sh["target"] < sh["source"]  # B30f reads smoother than the B50f input
    qa = json.loads(Path(doc["outputs"]["qa_json"]).read_text())  # the QA report says which model ran
    assert any("sharpness-conditioned" in i and f"{sh['target']:.2f}" in i for i in qa["inputs"])


def test_to_a_kernel_without_direction_weights_uses_the_table(small_exam_dir, tmp_path, cond_dir):
    from medseg.ct.conditioned import known_sharpness

    # both kernels in the table: the measured source times the table's ratio (dose cancels out)
    r = _convert(small_exam_dir, tmp_path / "o", cond_dir, "--from", "Canon:FC51", "--to", "Canon:FC13")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)["summary"]
    assert s["model"] == "sharpness-conditioned" and s["target_kernel"] == "FC13"
    ratio = known_sharpness("FC13", "Canon")[0] / known_sharpness("FC51", "Canon")[0]
    assert s["sharpness"]["target"] == pytest.approx(s["sharpness"]["source"] * ratio, rel=1e-2)
    assert "table" in s["sharpness"]["target_from"]
    # only the target in the table: its table value
    r = _convert(small_exam_dir, tmp_path / "p", cond_dir, "--from", "Philips:XB", "--to", "Philips:B")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["sharpness"]["target"] == known_sharpness("B", "Philips")[0]
    # a direction with weights keeps using them
    r = _convert(small_exam_dir, tmp_path / "d", cond_dir, "--from", "B50f", "--to", "B30f")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["summary"]["model"] == "direction"


def _not_ct(src: Path, dst: Path) -> Path:
    import pydicom

    dst.mkdir()
    for f in sorted(src.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(dst / f.name)
    return dst


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--to-sharpness", "40"], "outside the range"),
        (["--to-sharpness", "0"], "--to-sharpness"),
        (["--to-sharpness", "nan"], "--to-sharpness"),
        (["--to-sharpness", "1.0", "--like", "LIKE"], "give one of them"),
        (["--like", "NOTCT"], "not a CT series"),
        (["--from", "B50f", "--to", "NOSUCH"], "--to-sharpness S or --like SERIES"),
        (["--from", "B50f", "--to", "B40f"], "would be about 1.34, interpolated"),  # a guess: only offered
        ([], "--to-sharpness S / --like SERIES"),
    ],
)
def test_refusals_exit_non_zero_with_words(small_exam_dir, tmp_path, cond_dir, args, words):
    repl = {"LIKE": small_exam_dir / "B30f", "NOTCT": _not_ct(small_exam_dir / "B30f", tmp_path / "mr")}
    r = _convert(small_exam_dir, tmp_path / "o", cond_dir, *[repl.get(a, a) for a in args])
    assert r.exit_code != 0 and words in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_ct_models_lists_the_conditioned_converter(cond_dir):
    r = run_cli("ct-models", "--models-dir", cond_dir, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["conditioned"]
    assert rows[0]["path"].endswith("cond.safetensors") and rows[0]["sharpness_range"] == [0.3, 5.0]
    human = run_cli("ct-models", "--models-dir", cond_dir)
    assert "conditioned on measured sharpness" in human.output
