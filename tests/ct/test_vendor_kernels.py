"""Kernels of every vendor: names as scanners write them, vendor-qualified weights, real Philips data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.ct.kernels import (
    KernelSpec,
    kernel_values,
    normalise_kernel,
    parse_kernel,
    tag_agrees,
    vendor_name,
)
from medseg.ct.models import canonical_kernel, demo_file_name, find_model, list_models
from medseg.errors import InputError, ModelError

from .conftest import run_cli, volume

PHILIPS = Path(__file__).resolve().parents[1] / "data" / "real" / "ct_philips"


def save_tiny(path: Path, source: str, target: str, manufacturer: str | None, offset_hu: float = -200.0):
    """An untrained converter whose output is input + ``offset_hu``, saved with vendor metadata."""
    import torch

    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net
    from medseg.engine.checkpoint import CheckpointMeta, save_weights

    cfg = KernelNetConfig(source, target, channels=4, depth=2)
    net = build_kernel_net(config=cfg)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.fill_(offset_hu / 1000.0)
    config = cfg.to_dict() | ({"manufacturer": manufacturer} if manufacturer else {})
    meta = CheckpointMeta(model=MODEL_NAME, task=f"{source}->{target}", config=config, training_data="test")
    return save_weights(path, net.state_dict(), meta)


@pytest.mark.parametrize(
    ("text", "vendor", "expected"),
    [
        ("b50f", None, "B50f"),
        ("B50", None, "B50f"),
        (" B30f ", None, "B30f"),
        ("ub", None, "UB"),
        ("YA", "Philips", "YA"),
        ("standard", None, "STANDARD"),
        ("Br40", None, "Br40"),
        ("Qr40", None, "Qr40"),
        ("Bl57", None, "Bl57"),
        ("FC13", None, "FC13"),
        ("B50", "GE", "B50"),  # the Siemens default suffix is Siemens' only
        ("BONE  PLUS", None, "BONE PLUS"),
    ],
)
def test_any_scanner_name_is_a_kernel(text, vendor, expected):
    assert normalise_kernel(text, vendor) == expected


def test_vendor_names_from_manufacturer_tags():
    assert vendor_name("SIEMENS") == vendor_name("Siemens Healthineers") == "Siemens"
    assert vendor_name("Philips Medical Systems") == vendor_name("philips") == "Philips"
    assert vendor_name("GE MEDICAL SYSTEMS") == vendor_name("GE") == vendor_name("GE Healthcare") == "GE"
    assert vendor_name("TOSHIBA") == vendor_name("Canon Medical Systems") == "Canon"
    assert vendor_name("") is None and vendor_name(None) is None
    assert vendor_name("Acme Medical Devices") == "Acme Medical Devices"


def test_parse_kernel_with_vendor_prefix_and_option():
    assert parse_kernel("Philips:B") == KernelSpec("B", "Philips")
    assert parse_kernel("B", vendor="philips medical systems") == KernelSpec("B", "Philips")
    assert parse_kernel("siemens:b50") == KernelSpec("B50f", "Siemens")
    with pytest.raises(InputError, match="names vendor Philips but --vendor is GE"):
        parse_kernel("Philips:B", vendor="GE")
    with pytest.raises(InputError, match="empty kernel name"):
        parse_kernel("GE:")


def test_canonical_kernel_keeps_working_for_callers():
    """ct-train/cohort call canonical_kernel: any non-empty name, tags with a strength value."""
    assert canonical_kernel("b50f") == "B50f" and canonical_kernel("B50") == "B50f"
    assert canonical_kernel("UB") == "UB" and canonical_kernel("Philips:YA") == "YA"
    assert canonical_kernel("Br40d\\3") == "Br40d"  # Siemens: kernel + iterative strength
    assert canonical_kernel("", strict=False) is None
    with pytest.raises(InputError):
        canonical_kernel("  ")


def test_multi_valued_and_empty_tags():
    assert kernel_values(pydicom.multival.MultiValue(str, ["B30f", "SOFT"])) == ["B30f", "SOFT"]
    assert (
        kernel_values("Br40d\\3") == ["Br40d", "3"] and kernel_values("") == [] and kernel_values(None) == []
    )
    assert tag_agrees(["Br50f", "3"], KernelSpec("B50f"), "Siemens")  # same Siemens sharpness family
    assert tag_agrees(["B30f", "SOFT"], KernelSpec("SOFT"), None)
    assert not tag_agrees(["YA"], KernelSpec("UB"), "Philips")


def test_kernel_names_in_file_names_are_safe():
    name = demo_file_name("FC13 AIDR/3D", "../FC51\\x")
    assert "/" not in name and "\\" not in name and " " not in name and not name.startswith(".")
    assert name.endswith(".safetensors")


@pytest.fixture(scope="module")
def philips_models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("philips_models")
    save_tiny(folder / "philips_ya_ub.safetensors", "YA", "UB", "Philips Medical Systems")
    return folder


def test_weights_carry_vendor_and_models_are_listed_by_vendor(philips_models, tiny_weights):
    entries = {(e.group, e.source, e.target) for e in list_models([philips_models, tiny_weights.parent])}
    assert ("Philips", "YA", "UB") in entries
    assert ("Siemens", "B50f", "B30f") in entries  # old weights without a manufacturer: inferred
    r = run_cli("ct-models", "--models-dir", philips_models, "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["models"]
    philips = [row for row in rows if row["vendor"] == "Philips"]
    assert philips and philips[0]["from"] == "YA" and philips[0]["manufacturer_recorded"]
    text = run_cli("ct-models", "--models-dir", philips_models).output
    assert "Philips:\n  YA -> UB" in text and "Siemens:" in text


def test_old_weights_without_manufacturer_still_load(tiny_weights):
    entry = find_model("b50", "B30f", weights=tiny_weights)
    assert (entry.source, entry.target, entry.vendor) == ("B50f", "B30f", None)
    with pytest.raises(ModelError, match="not YA->UB"):
        find_model("YA", "UB", weights=tiny_weights)


def test_same_names_of_two_vendors_are_told_apart(tmp_path):
    save_tiny(tmp_path / "p.safetensors", "B", "C", "Philips")
    save_tiny(tmp_path / "h.safetensors", "B", "C", "Hitachi")
    with pytest.raises(InputError, match="several vendors"):
        find_model("B", "C", models_dirs=[tmp_path])
    assert find_model("Philips:B", "C", models_dirs=[tmp_path]).path.name == "p.safetensors"
    assert find_model("B", "C", vendor="Fujifilm", models_dirs=[tmp_path]).path.name == "h.safetensors"
    assert find_model("B", "C", input_vendor="Philips", models_dirs=[tmp_path]).vendor == "Philips"
    with pytest.raises(ModelError, match="no weights for GE:B->C"):
        find_model("B", "C", vendor="GE", models_dirs=[tmp_path])


@pytest.mark.skipif(not (PHILIPS / "YA").is_dir(), reason="tests/data/real/ct_philips missing")
def test_real_philips_ya_to_ub_end_to_end(philips_models, tmp_path):
    """The real Philips bone series converted to the standard kernel by Philips weights."""
    weights = philips_models / "philips_ya_ub.safetensors"
    out = tmp_path / "ub"
    r = run_cli(
        "ct-convert", PHILIPS / "YA", "--from", "YA", "--to", "UB", "--weights", weights,
        "--out", out, "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["vendor"] == "Philips" and doc["summary"]["source_kernel"] == "YA"
    item = doc["items"][0]
    assert item["metrics"]["input_kernel_tag"] == ["YA"]
    assert not any("ConvolutionKernel" in w for w in item["warnings"]), item["warnings"]
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 3
    ds = pydicom.dcmread(files[0])
    assert ds.ConvolutionKernel == "UB" and ds.Manufacturer.startswith("Philips")
    np.testing.assert_allclose(volume(out), volume(PHILIPS / "YA") - 200, atol=0.51)
    # the models folder finds the same weights without --weights, also with --vendor
    r = run_cli(
        "ct-convert", PHILIPS / "YA", "--from", "ya", "--to", "ub", "--vendor", "Philips",
        "--models-dir", philips_models, "--out", tmp_path / "ub2", "--device", "cpu", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output


@pytest.mark.skipif(not (PHILIPS / "UB").is_dir(), reason="tests/data/real/ct_philips missing")
def test_from_ub_is_no_unknown_kernel(philips_models, tmp_path):
    """`--from UB` is a kernel; without weights for UB->YB (and YB not in the sharpness table of the
    conditioned converter, which UB->YA now falls back to) it says so (exit 4), listing what exists."""
    r = run_cli(
        "ct-convert", PHILIPS / "UB", "--from", "UB", "--to", "YB", "--models-dir", philips_models,
        "--out", tmp_path / "ya", "--device", "cpu", "-q",
    )  # fmt: skip
    assert r.exit_code == 4, r.output
    assert "unknown kernel" not in r.output
    assert "no weights for UB->YB" in r.output and "Philips: YA->UB" in r.output
    assert not (tmp_path / "ya").exists()


@pytest.mark.skipif(not (PHILIPS / "YA").is_dir(), reason="tests/data/real/ct_philips missing")
def test_tag_and_vendor_mismatch_are_reported(philips_models, tmp_path):
    """A Philips series given as GE input and a kernel tag that is not --from: warnings, no crash."""
    weights = save_tiny(tmp_path / "ge.safetensors", "BONE", "STANDARD", "GE")
    r = run_cli(
        "ct-convert", PHILIPS / "YA", "--from", "GE:BONE", "--to", "STANDARD", "--weights", weights,
        "--out", tmp_path / "o", "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    warnings = json.loads(r.stdout)["warnings"]
    assert any("ConvolutionKernel is 'YA' but --from is BONE" in w for w in warnings), warnings
    assert any("Manufacturer" in w and "GE" in w for w in warnings), warnings


def _retag(src: Path, dst: Path, kernel) -> Path:
    shutil.copytree(src, dst)
    for f in dst.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        if kernel is None:
            del ds.ConvolutionKernel
        else:
            ds.ConvolutionKernel = kernel
        ds.save_as(f)
    return dst


@pytest.mark.parametrize(
    ("kernel", "fragment"),
    [
        (["B50f", "SOFT"], "several values ['B50f', 'SOFT']"),
        ("", "no ConvolutionKernel tag"),
        (None, "no Conv"),
    ],
)
def test_multi_valued_or_empty_kernel_tag_is_reported(
    small_exam_dir, tiny_weights, tmp_path, kernel, fragment
):
    src = _retag(small_exam_dir / "B50f", tmp_path / "in", kernel)
    r = run_cli(
        "ct-convert", src, "--from", "B50f", "--to", "B30f", "--weights", tiny_weights,
        "--out", tmp_path / "o", "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert any(fragment in w for w in doc["warnings"]), doc["warnings"]
    assert doc["items"][0]["metrics"]["input_kernel_tag"] == ([] if not kernel else kernel)


def test_kernel_name_with_spaces_and_slashes(small_exam_dir, tmp_path):
    """A vendor name like 'FC13 AIDR/3D' works as a kernel and never becomes a path."""
    models = tmp_path / "models"
    models.mkdir()
    save_tiny(models / "canon.safetensors", "FC13 AIDR/3D", "FC51", "TOSHIBA")
    out = tmp_path / "o"
    r = run_cli(
        "ct-convert", small_exam_dir / "B50f", "--from", "Canon:FC13 AIDR/3D", "--to", "FC51",
        "--models-dir", models, "--out", out, "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert pydicom.dcmread(next(out.glob("*.dcm"))).ConvolutionKernel == "FC51"
    assert {p.name for p in tmp_path.iterdir()} == {"models", "o"}
    r = run_cli(
        "ct-convert", small_exam_dir / "B50f", "--from", "FC51", "--to", "x/../y z",
        "--models-dir", models, "--out", tmp_path / "o2", "--device", "cpu", "-q",
    )  # fmt: skip
    assert r.exit_code == 4 and "no weights for FC51->X/../Y Z" in r.output, r.output
    assert not (tmp_path / "o2").exists()


@pytest.mark.skipif(not (PHILIPS / "YA").is_dir(), reason="tests/data/real/ct_philips missing")
def test_ct_report_on_the_real_philips_pair(philips_models, tmp_path):
    """The QA cohort report finds the Philips series by their tags, names compared case-insensitively."""
    r = run_cli(
        "ct-report", PHILIPS, "--from", "ya", "--to", "ub", "--vendor", "Philips", "--models-dir",
        philips_models, "--out", tmp_path / "qa", "--no-pdf", "--device", "cpu", "--json", "-q",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["summary"]["vendor"] == "Philips" and doc["summary"]["ok"] == 1
    metrics = doc["items"][0]["metrics"]
    # bone (YA) vs standard (UB) kernel: about 100 HU apart inside the phantom, measured on part of the image
    assert metrics["rmse_original_hu"] > 50 and 0 < metrics["rmse_voxels_pct"] < 100
