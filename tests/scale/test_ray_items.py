"""One Ray task per item for the folder commands (cells-segment, brain-segment): the same rows,
outputs and summaries as the local loop, a bad item a failed row with the same reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medseg.errors import InputError
from medseg.scale.items import RayMapper, _Failure, local_map


@pytest.fixture
def ray_here(ray_runtime):
    """The session's Ray runtime, with this module's functions shipped to workers by value."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_runtime


def _half(x: int) -> int:
    if x == 3:
        raise InputError("three is odd", path="/data/three.png")
    return x // 2


def test_local_map_yields_results_and_exceptions_in_order():
    out = list(local_map(_half, [4, 3, 8]))
    assert out[0] == 2 and out[2] == 4
    assert isinstance(out[1], InputError) and out[1].message == "three is odd"


def test_failure_survives_pickling_unchanged():
    import pickle

    exc = InputError("cannot read image", path="/x/a.png")
    back = pickle.loads(pickle.dumps(_Failure.of(exc))).rebuild()
    assert type(back) is InputError and back.message == exc.message and back.path == exc.path
    assert str(back) == str(exc)
    oserr = pickle.loads(pickle.dumps(_Failure.of(PermissionError(13, "denied", "/o/x.tif")))).rebuild()
    assert isinstance(oserr, PermissionError) and oserr.filename == "/o/x.tif" and oserr.strerror == "denied"


@pytest.mark.slow
def test_ray_mapper_keeps_order_and_reasons(ray_here):
    mapper = RayMapper(ray_here, max_in_flight=2)
    out = list(mapper(_half, [10, 3, 6, 2, 8]))
    assert [o for i, o in enumerate(out) if i != 1] == [5, 3, 1, 4]
    assert isinstance(out[1], InputError) and out[1].message == "three is odd"
    assert str(out[1].path) == "/data/three.png"


def _dies_once(marker_and_x: tuple[str, int]) -> int:
    """Kills its worker process the first time it runs for x == 2 (as a lost node would)."""
    import os

    marker, x = marker_and_x
    if x == 2 and not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(1)
    return x * 10


@pytest.mark.slow
def test_ray_mapper_reruns_an_item_whose_worker_died(ray_here, tmp_path):
    marker = str(tmp_path / "died")
    out = list(
        RayMapper(ray_here, max_in_flight=2, max_retries=2)(_dies_once, [(marker, i) for i in range(4)])
    )
    assert out == [0, 10, 20, 30] and Path(marker).exists()  # the item ran again, exactly one result each


# --- cells-segment -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cells_setup(tmp_path_factory):
    import torch

    from medseg.cells.io import to_uint8, write_png
    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.train import CellsTrainConfig, make_meta
    from medseg.engine.checkpoint import save_weights
    from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

    torch.manual_seed(0)
    config = CellsTrainConfig(model=CellModelConfig(base_channels=4), training_data="random init (test)")
    d = tmp_path_factory.mktemp("ray_cells")
    weights = d / "tiny.safetensors"
    save_weights(weights, build_model(config=config.model).state_dict(), make_meta(config, {}))
    img = d / "img"
    img.mkdir()
    for i in range(3):
        image, _ = synthetic_cells(910 + i, SyntheticCellsConfig(height=96, width=112))
        write_png(img / f"c{i}.png", to_uint8(image))
    (img / "broken.png").write_bytes(b"\x89PNG garbage")
    return img, weights


def _cells_config(weights: Path, **kw):
    from medseg.cells.segment import SegmentConfig

    return SegmentConfig(weights=weights, device="cpu", tile=300, report=False, progress=False, **kw)


def _rows(doc: dict, out: Path) -> list[dict]:
    """Items with timings dropped and output paths relative to their folder."""
    rows = []
    for it in doc["items"]:
        metrics = {k: v for k, v in it.get("metrics", {}).items() if k != "seconds"}
        outputs = {k: str(Path(v).relative_to(out)) for k, v in it.get("outputs", {}).items()}
        rows.append({**it, "metrics": metrics, "outputs": outputs})
    return rows


def _same_files(a: Path, b: Path, pattern: str) -> list[str]:
    names = sorted(p.name for p in a.glob(pattern))
    assert names == sorted(p.name for p in b.glob(pattern))
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    return names


@pytest.mark.slow
def test_cells_segment_on_ray_equals_local(ray_runtime, cells_setup, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    from medseg.cells.batch import segment_images

    img, weights = cells_setup
    local_out, ray_out = tmp_path / "local", tmp_path / "ray"
    local = segment_images([img], local_out, _cells_config(weights))
    args = ["cells-segment", str(img), "--out", str(ray_out), "--weights", str(weights), "--device", "cpu"]
    res = CliRunner().invoke(cli, [*args, "--tile", "300", "--no-report", "--json", "-q", "--ray"])
    assert res.exit_code == 5, res.output  # the broken image is a failed row, the batch went on
    doc = json.loads(res.stdout)
    assert doc["counts"] == {"ok": 3, "failed": 1, "skipped": 0} == local.counts
    assert _rows(doc, ray_out) == _rows(local.to_dict(), local_out)
    failed = [r for r in doc["items"] if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["name"].endswith("broken.png")
    assert "cannot read image" in failed[0]["reason"]
    drop = ("seconds", "out_dir")
    assert {k: v for k, v in doc["summary"].items() if k not in drop} == {
        k: v for k, v in local.summary.items() if k not in drop
    }
    names = _same_files(local_out, ray_out, "c*")
    assert len(names) == 9 and not list(ray_out.glob("broken*"))  # labels, overlay, CSV per image

    # --resume on Ray keeps the finished images and retries only the broken one
    again = segment_images([img], ray_out, _cells_config(weights, resume=True), mapper=RayMapper(ray_runtime))
    assert again.counts == {"ok": 0, "failed": 1, "skipped": 3}


# --- brain-segment -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brain_setup(tmp_path_factory):
    import shutil

    from click.testing import CliRunner
    from medseg_cli.main import cli

    from medseg.synthetic.brain import make_brain_case, write_brain_case

    root = tmp_path_factory.mktemp("ray_brain")
    cohort = root / "cohort"
    cohort.mkdir()
    cases = [write_brain_case(make_brain_case(seed), cohort, name=f"SYN_{seed}") for seed in (5101, 5102)]
    bad = cohort / "SYN_bad"
    shutil.copytree(cases[0], bad)
    for f in bad.iterdir():
        f.rename(bad / f.name.replace(cases[0].name, "SYN_bad"))
    (bad / "SYN_bad_flair.nii.gz").write_bytes(b"not a NIfTI file")  # fails inside the case's task
    w = root / "w"
    args = ["brain-train", str(cases[0]), "--out", str(w), "--local-channels", "4", "--global-channels"]
    args += ["6", "--epochs", "1", "--steps", "2", "--batch-size", "16", "--no-n4", "--json", "-q"]
    res = CliRunner().invoke(cli, [*args, "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return cohort, json.loads(res.stdout)["best_weights"]


@pytest.mark.slow
def test_brain_segment_on_ray_equals_local(ray_runtime, brain_setup, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    cohort, weights = brain_setup
    docs = {}
    for mode in ("local", "ray"):
        args = ["brain-segment", str(cohort), "--out", str(tmp_path / mode), "--weights", weights]
        args += ["--no-n4", "--device", "cpu", "--json", "-q"] + (["--ray"] if mode == "ray" else [])
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 5, res.output  # the corrupt case is a failed row, the batch went on
        docs[mode] = json.loads(res.stdout)
    assert docs["ray"]["counts"] == {"ok": 2, "failed": 1, "skipped": 0} == docs["local"]["counts"]
    assert _rows(docs["ray"], tmp_path / "ray") == _rows(docs["local"], tmp_path / "local")
    failed = [r for r in docs["ray"]["items"] if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["SYN_bad"] and "SYN_bad_flair" in failed[0]["reason"]
    assert docs["ray"]["summary"] == docs["local"]["summary"]
    assert len(_same_files(tmp_path / "local", tmp_path / "ray", "SYN_5*_seg.nii.gz")) == 2
    assert not list((tmp_path / "ray").glob("SYN_bad*"))

    def table(mode: str) -> list[list[str]]:  # volumes.csv without seconds, output paths relative
        text = (tmp_path / mode / "volumes.csv").read_text().replace(str(tmp_path / mode), "OUT")
        lines = [r.split(",") for r in text.splitlines()]
        col = lines[0].index("seconds")
        return [[v for j, v in enumerate(r) if j != col] for r in lines]

    assert table("ray") == table("local")


NO_RAY_RUN = """
import sys
from click.testing import CliRunner
from medseg_cli.main import cli
res = CliRunner().invoke(cli, ["cells-segment", sys.argv[1], "--out", sys.argv[2], "--weights", sys.argv[3],
                               "--device", "cpu", "--tile", "300", "--no-report", "-q"])
assert res.exit_code == 5, res.output
assert "ray" not in sys.modules, "Ray was imported"
print("NO-RAY-OK")
"""


def test_cells_segment_without_ray_flag_never_imports_ray(cells_setup, tmp_path):
    import subprocess
    import sys

    img, weights = cells_setup
    proc = subprocess.run(
        [sys.executable, "-c", NO_RAY_RUN, str(img), str(tmp_path / "out"), str(weights)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "NO-RAY-OK" in proc.stdout, proc.stdout + proc.stderr


# --- ct-report ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_setup(tmp_path_factory):
    import shutil

    import torch

    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights
    from medseg.synthetic.ct_phantom import PhantomConfig, write_cohort

    root = tmp_path_factory.mktemp("ray_ct")
    cohort = root / "cohort"
    write_cohort(
        cohort, [8101, 8102, 8103], kernels=("B30f", "B50f"), config=PhantomConfig(size=64, n_slices=4)
    )
    shutil.rmtree(cohort / "exam8102" / "B30f")  # no reference series: fails inside the exam's task
    cfg = KernelNetConfig("B50f", "B30f", channels=8, depth=3)
    net = build_kernel_net(config=cfg)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.fill_(-0.2)  # output = input - 200 HU
    weights = root / "B50f_to_B30f.safetensors"
    meta = CheckpointMeta(model=MODEL_NAME, task="B50f->B30f", config=cfg.to_dict(), training_data="test")
    save_weights(weights, net.state_dict(), meta)
    return cohort, weights


@pytest.mark.slow
def test_ct_report_on_ray_equals_local(ray_runtime, ct_setup, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    cohort, weights = ct_setup
    docs = {}
    for mode in ("local", "ray"):
        args = ["ct-report", str(cohort), "--from", "B50f", "--to", "B30f", "--out", str(tmp_path / mode)]
        args += ["--weights", str(weights), "--device", "cpu", "--no-pdf", "--save-masks", "--json", "-q"]
        res = CliRunner().invoke(cli, args + (["--ray"] if mode == "ray" else []))
        assert res.exit_code == 5, res.output  # the exam without a reference is a failed row
        docs[mode] = json.loads(res.stdout)
    assert docs["ray"]["counts"] == {"ok": 2, "failed": 1, "skipped": 0} == docs["local"]["counts"]
    assert _rows(docs["ray"], tmp_path / "ray") == _rows(docs["local"], tmp_path / "local")
    failed = [r for r in docs["ray"]["items"] if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["exam8102"] and "no B30f series" in failed[0]["reason"]
    assert docs["ray"]["summary"] == docs["local"]["summary"]
    for name in ("ct_qa.csv", "masks/exam8101_lungmask.nii.gz", "masks/exam8103_lungmask.nii.gz"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    html = {m: (tmp_path / m / "ct_qa.html").read_text().replace(str(tmp_path / m), "OUT") for m in docs}
    html = {m: re.sub(r"\d{4}-\d\d-\d\dT[\d:]+[+-]\d\d:\d\d", "TIME", h) for m, h in html.items()}
    assert html["ray"] == html["local"] and html["ray"].count("data:image/png") >= 2  # figures included


MISSING_RAY = """
import sys
sys.modules["ray"] = None  # as if the extra were not installed
from medseg_cli.main import main
sys.argv = ["medseg", "cells-segment", sys.argv[1], "--out", sys.argv[2], "--weights", sys.argv[3], "--ray"]
main()
"""


def test_cells_segment_ray_without_ray_installed_is_one_line(cells_setup, tmp_path):
    import subprocess
    import sys

    img, weights = cells_setup
    proc = subprocess.run(
        [sys.executable, "-c", MISSING_RAY, str(img), str(tmp_path / "out"), str(weights)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "pip install 'medseg[ray]'" in lines[0] and not (tmp_path / "out").exists()
