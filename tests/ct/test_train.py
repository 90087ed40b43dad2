from __future__ import annotations

import json

import pytest

from medseg.ct.cohort import discover_exams, split_exams
from medseg.ct.train import CTTrainConfig, train
from medseg.engine.checkpoint import read_meta
from medseg.errors import InputError, OutputExistsError
from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    write_cohort(root, [7001, 7002, 7003, 7004, 7005], kernels=("B30f", "B50f"),
                 config=PhantomConfig(size=48, n_slices=3))
    return root


def test_split_is_by_exam(pairs):
    exams = discover_exams([pairs])
    split = split_exams(exams, (0.6, 0.2, 0.2), seed=0)
    names = [e.name for part in split.values() for e in part]
    assert sorted(names) == sorted(e.name for e in exams) and len(set(names)) == len(names)
    assert [len(split[k]) for k in ("train", "val", "test")] == [3, 1, 1]


def test_train_validate_checkpoint_and_resume(pairs, tmp_path):
    cfg = CTTrainConfig(epochs=2, batch_size=2, channels=8, depth=3, lr=1e-3, steps_per_epoch=3, seed=1)
    out = tmp_path / "run"
    first = train([pairs], out, cfg, device="cpu")
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert all(h["val_rmse_hu"] > 0 for h in first["history"])
    meta = read_meta(out / "B50f_to_B30f.safetensors")
    assert meta.config["source_kernel"] == "B50f" and meta.config["channels"] == 8
    assert json.loads((out / "split.json").read_text())["test"]
    with pytest.raises(OutputExistsError):
        train([pairs], out, cfg, device="cpu")
    cfg.epochs = 3
    resumed = train([pairs], out, cfg, device="cpu", resume=True)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][:2] == first["history"]


def test_missing_kernel_is_reported(pairs, tmp_path):
    cfg = CTTrainConfig(source_kernel="B70f", target_kernel="B30f", epochs=1, channels=4, depth=2)
    with pytest.raises(InputError, match="no B70f series"):
        train([pairs], tmp_path / "x", cfg, device="cpu")


def test_ct_train_cli(pairs, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    out = tmp_path / "cli_run"
    args = ["ct-train", str(pairs), "--from", "B50f", "--to", "B30f", "--out", str(out), "--epochs", "1",
            "--crop", "32", "--steps-per-epoch", "1", "--batch-size", "2", "--device", "cpu", "--json", "-q"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["epochs"] == 1 and result["best_val_rmse_hu"] > 0
    assert read_meta(out / "B50f_to_B30f.safetensors").task == "B50f->B30f"
    assert CliRunner().invoke(cli, args).exit_code == 3  # exists: needs --resume or --overwrite
    bad = CliRunner().invoke(cli, [*args[:-2], "--split", "0.5,0.5", "--overwrite"])
    assert bad.exit_code == 2 and "three comma-separated fractions" in bad.output
