"""The 2015 U-Net's geometry (572 -> 388, 16b + 60) and the padded BasicUNet variant."""

from __future__ import annotations

import pytest
import torch

from medseg.cells.model import (
    CellModelConfig,
    UNet2015,
    build_model,
    model_margin,
    unet2015_margin,
    unet2015_output_size,
    unet2015_valid_input,
    valid_tile,
)


def test_paper_geometry():
    assert unet2015_output_size(572) == 388
    assert unet2015_margin() == 92
    valid = [s for s in range(100, 700) if unet2015_output_size(s) is not None]
    assert valid == [16 * b + 60 for b in range(8, 40) if 16 * b + 60 < 700]  # 188 -> 4 is the smallest
    assert unet2015_valid_input(573) == 588


def test_unet2015_forward_shape_and_channels():
    torch.manual_seed(0)
    model = UNet2015(in_channels=1, num_classes=2, base_channels=4).eval()
    with torch.no_grad():
        y = model(torch.zeros(2, 1, 188, 188))
    assert y.shape == (2, 2, 4, 4)
    default = UNet2015()
    assert default.down[0][0].out_channels == 64 and default.bottom[0].out_channels == 1024
    with pytest.raises(TypeError):
        UNet2015(1, 2)  # keyword-only builder


def test_he_normal_init():
    torch.manual_seed(0)
    model = UNet2015(base_channels=32)
    conv = model.dec[0][2]  # 3x3, 256 -> 256
    fan_in = conv.in_channels * 9
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)


def test_basicunet_padded_same_size():
    config = CellModelConfig(arch="basicunet", base_channels=4)
    model = build_model(config=config).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 64, 96)).shape == (1, 2, 64, 96)
    assert model_margin(config) >= 107
    assert valid_tile(config, 100) % 16 == 0


def test_config_roundtrip_and_unknown_arch():
    config = CellModelConfig(base_channels=8, batch_norm=True)
    assert CellModelConfig.from_dict({**config.to_dict(), "future_field": 1}) == config
    with pytest.raises(ValueError, match="unknown arch"):
        build_model(config=CellModelConfig(arch="resnet"))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_widened_unet2015_computes_the_same_function(batch_norm):
    """Net2Net widening (a CPU-budget fine-tune starts from the trained narrow net): same output,
    twice the channels everywhere, and noise changes it only a little."""
    from medseg.cells.model import widen_unet2015

    cfg = CellModelConfig(base_channels=4, depth=2, batch_norm=batch_norm, num_classes=3, dropout=0.0)
    torch.manual_seed(0)
    narrow = build_model(config=cfg)
    narrow.train()
    for _ in range(3):  # non-trivial batch-norm statistics
        narrow(torch.randn(2, 1, 92, 92))
    narrow.eval()
    wide, wide_cfg = widen_unet2015(narrow, cfg, 2)
    assert wide_cfg.base_channels == 8 and wide.widths == [2 * w for w in narrow.widths]
    x = torch.randn(1, 1, 92, 92)
    with torch.no_grad():
        ref = narrow(x)
        assert torch.allclose(wide(x), ref, atol=1e-4)
        noisy, _ = widen_unet2015(narrow, cfg, 2, noise=0.01)
        diff = (noisy(x) - ref).abs().max()
    assert 0 < diff < 0.2 * ref.abs().max()
    params = sum(p.numel() for p in wide.parameters()) / sum(p.numel() for p in narrow.parameters())
    assert 3.5 < params < 4.1


def test_widened_weights_file_keeps_the_metadata(tmp_path):
    """What ``train_demo_weights_cells.py --widen`` starts from: an ordinary weights file, wider, whose
    instance target still says how to decode it."""
    from medseg.cells.model import load_model, widen_weights
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = CellModelConfig(base_channels=4, depth=2, batch_norm=True, num_classes=3, dropout=0.0)
    src, dst = tmp_path / "narrow.safetensors", tmp_path / "wide.safetensors"
    meta = CheckpointMeta(
        model="medseg-cells-unet",
        task="cell-foreground-with-borders",
        config={**cfg.to_dict(), "instance_target": "3class"},
    )
    save_weights(src, build_model(config=cfg).state_dict(), meta)
    widen_weights(src, dst, 2)
    model, config, loaded = load_model(dst)
    assert config.base_channels == 8 and loaded.config["instance_target"] == "3class"
    assert loaded.metrics["widen"] == 2
    x = torch.randn(1, 1, 92, 92)
    with torch.no_grad():
        assert torch.allclose(model(x), load_model(src)[0](x), atol=1e-4)
