"""Network slimming of the cells unet2015: channels pruned to the requested ratio with the skip
connections, up-convolutions and head rewired; pruned weights save, load through the normal loader
(and as fine-tuning init) and run with the same output shape; cells-train refuses what cannot apply."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from medseg_cli.main import cli
from torch import nn

from medseg.cells.model import (
    CellModelConfig,
    build_model,
    load_model,
    prune_unet2015,
    prune_weights,
    unet2015_valid_input,
)
from medseg.engine.checkpoint import CheckpointMeta, save_weights

CFG = CellModelConfig(base_channels=4, depth=2, batch_norm=True, dropout=0.0)


def _sparse_unet(seed: int = 0) -> nn.Module:
    """A small unet2015 whose batch norms look sparsity-trained: about 40 % zero scales."""
    torch.manual_seed(seed)
    model = build_model(config=CFG)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    g = torch.Generator().manual_seed(seed)
    for bn in bns:
        n = bn.num_features
        bn.weight.data = torch.rand(n, generator=g) + 0.5
        bn.weight.data[torch.randperm(n, generator=g)[: int(0.4 * n)]] = 0.0
        bn.bias.data = torch.randn(n, generator=g) * 0.3
        bn.running_mean.data = torch.randn(n, generator=g) * 0.1
        bn.running_var.data = torch.rand(n, generator=g) + 0.5
    return model.eval()


def _zero_count(model: nn.Module) -> tuple[int, int]:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return sum(int((b.weight == 0).sum()) for b in bns), sum(b.num_features for b in bns)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_prune_unet2015_to_the_requested_ratio_same_output_shape(ratio):
    model = _sparse_unet()
    new, cfg, summary = prune_unet2015(model, CFG, ratio)
    total = summary["channels_before"]
    assert total == sum([4, 4, 8, 8, 16, 16, 8, 8, 4, 4])  # base 4, depth 2: every batch-normed conv
    pruned, floor = total - summary["channels_after"], sum(w == 1 for w in summary["widths"])
    # exact, except that a layer pruned away entirely keeps its largest channel
    assert round(ratio * total) - floor <= pruned <= round(ratio * total)
    if ratio < 0.5:
        assert pruned == round(ratio * total)
    assert cfg.widths == summary["widths"] and len(cfg.widths) == 10
    assert summary["params_after"] < summary["params_before"]
    size = unet2015_valid_input(60, 2)
    x = torch.randn(1, 1, size, size)
    assert new(x).shape == model(x).shape


def test_pruning_zero_scale_channels_keeps_the_output():
    """Channels with gamma = 0 emit the constant relu(beta): moved into the consumers, the output stays
    (exactly where the consumer is a valid conv; the up-convolutions average their 2x2 kernel, so no
    positive beta feeds them here)."""
    model = _sparse_unet(1)
    for block in [model.bottom, *model.dec]:  # the blocks whose outputs feed up-convolutions / the head
        block[4].bias.data = -block[4].bias.data.abs()
    zeros, total = _zero_count(model)
    new, _, summary = prune_unet2015(model, CFG, (zeros - 0.5) / total)
    assert summary["channels_after"] == total - zeros
    size = unet2015_valid_input(60, 2)
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        ref, out = model(x), new(x)
    assert float(ref.abs().max()) > 0
    assert torch.allclose(out, ref, atol=1e-4)


def test_pruned_weights_save_load_and_finetune_init(tmp_path):
    from medseg.cells.train import init_compatible, resolve_init

    src = tmp_path / "sparse.safetensors"
    meta = CheckpointMeta(
        model="medseg-cells-unet",
        task="cell-foreground-with-borders",
        config={**CFG.to_dict(), "instance_target": "3class"},
    )
    save_weights(src, _sparse_unet(2).state_dict(), meta)
    dst = tmp_path / "pruned.safetensors"
    summary = prune_weights(src, dst, 0.5)
    model, config, loaded_meta = load_model(dst)  # the normal loader rebuilds the widths
    assert loaded_meta.config["instance_target"] == "3class"  # still decoded as it was trained
    assert config.widths == summary["widths"]
    assert sum(p.numel() for p in model.parameters()) == summary["params_after"]
    size = unet2015_valid_input(60, 2)
    assert (
        model(torch.randn(1, 1, size, size)).shape == load_model(src)[0](torch.randn(1, 1, size, size)).shape
    )
    assert init_compatible(config, dst) and not init_compatible(CFG, dst)
    resolved, init = resolve_init(str(dst), None)  # cells-train --init pruned.safetensors
    assert resolved.widths == summary["widths"] and init == str(dst)


def test_old_configs_load_unchanged_and_widths_only_for_unet2015():
    old = {k: v for k, v in CFG.to_dict().items() if k != "widths"}  # weights written before slimming
    assert CellModelConfig.from_dict(old).widths is None
    assert (
        build_model(config=CellModelConfig.from_dict(old)).state_dict().keys()
        == build_model(config=CFG).state_dict().keys()
    )
    with pytest.raises(ValueError, match="apply to unet2015"):
        build_model(config=CellModelConfig(arch="basicunet", base_channels=4, widths=[1] * 10))
    with pytest.raises(ValueError, match="positive widths"):
        build_model(config=CellModelConfig(base_channels=4, depth=2, widths=[4, 4]))


def _train(*args):
    return CliRunner().invoke(cli, ["cells-train", "--synthetic", "2", "--out", "unused_out", *args])


def test_cli_lists_slim_and_refuses_in_words(tmp_path):
    text = CliRunner().invoke(cli, ["cells-train", "--help"]).output
    assert "--slim" in text and "--prune-ratio" in text and "--finetune-epochs" in text
    res = _train("--slim", "-1")
    assert res.exit_code == 2 and "--slim" in res.output
    for bad in ("0", "1", "1.5"):
        res = _train("--slim", "1e-4", "--prune-ratio", bad)
        assert res.exit_code == 2 and "--prune-ratio" in res.output
    res = _train("--init", "scratch", "--base-channels", "4", "--slim", "1e-4")  # no --batch-norm
    assert res.exit_code == 2 and "no batch norm" in res.output
    res = _train("--init", "scratch", "--arch", "basicunet", "--batch-norm", "--prune-ratio", "0.5")
    assert res.exit_code == 2 and "prunes unet2015" in res.output
    res = _train("--finetune-epochs", "3")
    assert res.exit_code == 2 and "--prune-ratio" in res.output
    assert not (tmp_path / "unused_out").exists()


def test_cells_train_slim_prune_finetune_end_to_end(tmp_path):
    """cells-train --slim --prune-ratio: sparse run, pruned weights, fine-tuned pruned net in OUT/best."""
    out = tmp_path / "slim"
    args = ["--synthetic", "2", "--init", "scratch", "--base-channels", "4", "--batch-norm", "--epochs", "1"]
    args += ["--steps", "1", "--tile", "100", "--batch-size", "2", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(
        cli, ["cells-train", *args, "--slim", "1e-3", "--prune-ratio", "0.5", "--finetune-epochs", "1"]
    )
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "slim.json").read_text())
    assert summary["channels_after"] == summary["channels_before"] // 2
    model, config, _ = load_model(out / "best.safetensors")
    assert config.widths == summary["widths"]
    assert sum(p.numel() for p in model.parameters()) == summary["params_after"]
    res = CliRunner().invoke(cli, ["cells-train", *args, "--slim", "1e-3", "--prune-ratio", "0.5"])
    assert res.exit_code != 0 and "--resume" in res.output  # a finished run is not overwritten silently


def test_shipped_slimmed_demo_weights_load_with_widths_and_say_what_they_are():
    from medseg.engine.weights import demo_weights_path

    model, config, meta = load_model(demo_weights_path("cells/demo_unet2015_slim70.safetensors"))
    assert config.widths is not None and sum(config.widths) == round(0.3 * 736)  # 70 % of 736 channels pruned
    assert sum(p.numel() for p in model.parameters()) < 50_000
    notes = json.loads(meta.notes)
    assert len(notes["validation_ids"]) == 60 and notes["network_slimming"]["prune_ratio"] == 0.7
    slimmed = notes["network_slimming"]["validation"]
    assert slimmed["pruned"]["ap50"] >= slimmed["full"]["ap50"] - 0.01  # shipped only within 0.01
    assert "REAL" in meta.training_data and "not for clinical use" in meta.training_data
    size = unet2015_valid_input(60, 4)
    assert model(torch.zeros(1, 1, size, size)).shape[1] == 2
