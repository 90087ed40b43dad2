"""Network slimming of the brain TwoPathCNN: optional batch norm (off by default: old weights load
unchanged), maxout features pruned to the requested ratio, the pruned net saved with its widths and
loaded by brain-segment's loader, the brain-train stages, and refusals in words."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.brain.models import BrainNetConfig, FreezableBatchNorm2d, build_model, prune_twopath
from medseg.brain.preprocess import PreprocessConfig
from medseg.brain.segment import load_brain_model
from medseg.brain.train import BrainTrainConfig, PhaseConfig, train
from medseg.engine.checkpoint import read_meta
from medseg.engine.weights import demo_weights_path
from medseg.errors import InputError

CFG = BrainNetConfig(local_channels=6, global_channels=10, batch_norm=True)


def _sparse_twopath(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(config=CFG)
    g = torch.Generator().manual_seed(seed)
    for layer in (model.local1, model.local2, model.global1):
        bn, n = layer.bn, layer.bn.num_features
        bn.weight.data = torch.rand(n, generator=g) + 0.5
        bn.weight.data[torch.randperm(n, generator=g)[: int(0.4 * n)]] = 0.0
        bn.bias.data = torch.randn(n, generator=g)
        bn.running_mean.data = torch.randn(n, generator=g)
        bn.running_var.data = torch.rand(n, generator=g) + 0.5
    return model.eval()


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_prune_twopath_to_the_requested_ratio_keeps_zero_scale_output(ratio):
    model = _sparse_twopath()
    new, cfg, summary = prune_twopath(model, CFG, ratio)
    assert summary["channels_before"] == 22
    assert 22 - summary["channels_after"] == round(ratio * 22)
    assert cfg.widths == summary["widths"] and summary["params_after"] < summary["params_before"]
    x = torch.randn(2, 4, 40, 40)
    with torch.no_grad():
        ref, out = model(x), new(x)
    assert out.shape == ref.shape
    if ratio == 0.3:  # 8 of 22 scales are 0: pruning only those is exact (beta moved into the biases)
        assert torch.allclose(out, ref, atol=1e-4)


def test_batch_norm_off_by_default_and_shipped_weights_load_unchanged():
    plain = build_model(config=BrainNetConfig(local_channels=4, global_channels=6))
    assert not any("bn" in k for k in plain.state_dict())
    path = demo_weights_path("brain/brain_twopath_brats2018.safetensors")
    model, meta, _ = load_brain_model(path)
    assert "batch_norm" not in meta.config["net"]  # written before slimming existed
    assert not any("bn" in k for k in model.state_dict())
    with pytest.raises(ValueError, match="apply to twopath"):
        build_model(config=BrainNetConfig(arch="input-cascade", widths=[2, 2, 2]))


def test_frozen_batch_norm_keeps_its_statistics_in_train_mode():
    bn = FreezableBatchNorm2d(3).train()
    bn.weight.requires_grad_(False)
    before = bn.running_mean.clone()
    x = torch.randn(4, 3, 5, 5) + 3
    out = bn(x)
    assert torch.equal(bn.running_mean, before)
    assert torch.allclose(out, (x - 0) / torch.sqrt(torch.tensor(1 + bn.eps)))


def _cfg(**kw) -> BrainTrainConfig:
    return BrainTrainConfig(
        net=BrainNetConfig(local_channels=4, global_channels=6, batch_norm=True),
        preprocess=PreprocessConfig(n4=False),
        phase1=PhaseConfig(epochs=1, steps_per_epoch=3),
        phase2=PhaseConfig(epochs=1, steps_per_epoch=2, lr=0.001),
        batch_size=16,
        val_patches=40,
        training_data="synthetic test cases",
        **kw,
    )


def test_train_slim_prune_finetune_then_phase2_loads_with_widths(brain_cases, tmp_path):
    result = train(brain_cases, tmp_path, _cfg(slim=1e-3, prune_ratio=0.5, finetune_epochs=1), device="cpu")
    assert list(result.extra["stages"]) == ["phase1", "pruned-finetune", "phase2"]
    widths = result.extra["slim"]["widths"]
    assert sum(widths) == 14 - round(0.5 * 14)
    assert read_meta(result.best_weights).config["net"]["widths"] == widths
    model, _, _ = load_brain_model(result.best_weights)  # brain-segment's loader rebuilds the widths
    assert [model.local1.out_ch, model.local2.out_ch, model.global1.out_ch] == widths
    assert model(torch.randn(1, 4, 40, 40)).shape == (1, 5, 8, 8)


def test_train_refuses_slimming_in_words(brain_cases, tmp_path):
    no_bn = _cfg(slim=1e-4)
    no_bn.net.batch_norm = False
    with pytest.raises(InputError, match="no batch norm"):
        train(brain_cases, tmp_path / "a", no_bn, device="cpu")
    cascade = _cfg(prune_ratio=0.5)
    cascade.net.arch = "input-cascade"
    with pytest.raises(InputError, match="prunes a twopath"):
        train(brain_cases, tmp_path / "b", cascade, device="cpu")
    with pytest.raises(InputError, match="strictly between"):
        train(brain_cases, tmp_path / "c", _cfg(prune_ratio=1.0), device="cpu")


def test_cli_lists_slim_and_refuses(tmp_path):
    text = CliRunner().invoke(cli, ["brain-train", "--help"]).output
    assert "--slim" in text and "--prune-ratio" in text and "--batch-norm" in text

    def run(*args):
        return CliRunner().invoke(cli, ["brain-train", str(tmp_path), "--out", str(tmp_path / "o"), *args])

    res = run("--slim", "1e-4")
    assert res.exit_code != 0 and "no batch norm" in res.output
    res = run("--slim", "-0.1", "--batch-norm")
    assert res.exit_code == 2 and "--slim" in res.output
    res = run("--batch-norm", "--prune-ratio", "1")
    assert res.exit_code == 2 and "--prune-ratio" in res.output
    assert not (tmp_path / "o").exists()


def test_plan_stages_slimming_and_init_weights(tmp_path):
    from medseg.brain.train import plan_stages

    stages = plan_stages(tmp_path, _cfg(slim=1e-3, prune_ratio=0.5, init_weights="w.safetensors"), None)
    assert [(s.name, s.slim, s.prune) for s in stages] == [
        ("phase1", 1e-3, None),
        ("pruned-finetune", 0.0, 0.5),
        ("phase2", 0.0, None),
    ]
    assert str(stages[0].init) == "w.safetensors"
    assert stages[2].init == tmp_path / "pruned-finetune" / "best.safetensors"
