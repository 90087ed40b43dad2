"""Small synthetic CT data and tiny models for the CT tests (seeds differ from the demo weights')."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, write_exam_dicom

SMALL = PhantomConfig(size=64, n_slices=5)


@pytest.fixture(scope="session")
def small_exam_dir(tmp_path_factory) -> Path:
    """One tiny exam (B30f + B50f DICOM series in kernel folders)."""
    out = tmp_path_factory.mktemp("ct_small") / "exam"
    write_exam_dicom(make_exam(4242, kernels=("B30f", "B50f"), config=SMALL), out, seed=4242, name="exam")
    return out


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A small untrained B50f->B30f converter whose output is input - 200 HU (exactly known)."""
    import torch

    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = KernelNetConfig("B50f", "B30f", channels=8, depth=3)
    net = build_kernel_net(config=cfg)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.fill_(-0.2)  # residual = -0.2 * hu_scale = -200 HU
    path = tmp_path_factory.mktemp("ct_models") / "B50f_to_B30f.safetensors"
    save_weights(
        path,
        net.state_dict(),
        CheckpointMeta(
            model=MODEL_NAME,
            task="B50f->B30f",
            config=cfg.to_dict(),
            training_data="test fixture (untrained)",
        ),
    )
    return path


def tree_digest(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def volume(folder: Path) -> np.ndarray:
    from medseg.io.dicom import open_series, read_series

    return read_series(open_series(folder))[0]


def convert_config(**overrides):
    """A ConvertConfig for the B50f->B30f direction on the CPU (tests override what they need)."""
    from medseg.ct.convert import ConvertConfig

    return ConvertConfig(**{"source": "B50f", "target": "B30f", "device": "cpu", **overrides})


def run_cli(*args):
    """Invoke ``medseg`` in-process: ``.stdout`` holds the --json document, ``.output`` both streams."""
    from click.testing import CliRunner
    from medseg_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def edited_copy(src: Path, dst: Path, edit) -> Path:
    """A copy of the DICOM series folder ``src`` at ``dst`` with ``edit(ds)`` applied to every file."""
    import shutil

    import pydicom

    shutil.copytree(src, dst)
    for f in sorted(dst.iterdir()):
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)
    return dst
