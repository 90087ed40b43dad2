"""Per-stain demo weights: without --weights, an image whose stain has a shipped specialist is
segmented by it, every other image by the main demo weights; with --weights, that file does all.

The routing is tested with the shipped slim demo file standing in for a specialist, so the test holds
whichever specialists are shipped (docs/cells.md says which and why).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from medseg_cli.main import cli

import medseg.cells.segment as segment
from medseg.cells.io import read_image
from medseg.cells.model import DEMO_COMPANIONS, DEMO_WEIGHTS
from medseg.engine.weights import demo_weights_path

VAL = Path(__file__).resolve().parents[2] / "tests" / "data" / "real" / "dsb2018_val" / "images"
HE = VAL / "673baf65ae5c571d6be452eb41e79ef3fc2eb3fd238e621c6b7621763b429989.png"
FLUO = VAL / "2b50b1e3fa5c5aa39bc84ebfaea9961b7199c4d2488ae0b48d0b3459807d59d2.png"
STAND_IN = "cells/demo_unet2015_slim70.safetensors"
# the main weights' output is the mean of theirs and their shipped companions' (docs/cells.md)
MAIN = " + ".join(Path(n).name for n in (DEMO_WEIGHTS, *DEMO_COMPANIONS.get(DEMO_WEIGHTS, ())))


@pytest.fixture
def stand_in(monkeypatch):
    assert demo_weights_path(STAND_IN).is_file()
    monkeypatch.setattr(segment, "DEMO_WEIGHTS_BY_STAIN", {"he": STAND_IN})
    return demo_weights_path(STAND_IN).name


def test_demo_routes_he_to_its_specialist_and_fluorescence_to_the_main_weights(stand_in):
    seg = segment.CellSegmenter(segment.SegmentConfig(device="cpu"))
    assert seg.is_demo and set(seg.stain_weights) == {"he"}
    assert seg.for_stain("fluo") is seg and seg.for_stain("phase") is seg
    he = seg.for_stain("he")
    assert he is not seg and he.weights.name == stand_in and he.is_demo
    assert seg.for_stain("he") is he  # loaded once
    r_he = seg.analyse(read_image(HE, allow_stack=False, keep_color=True)[0][0])
    r_fl = seg.analyse(read_image(FLUO, allow_stack=False, keep_color=True)[0][0])
    assert (r_he.stain.stain, r_he.weights) == ("he", stand_in)
    assert (r_fl.stain.stain, r_fl.weights) == ("fluo", MAIN)
    assert seg.describe()["weights_by_stain"] == {"he": str(demo_weights_path(STAND_IN))}


def test_given_weights_take_every_stain(stand_in):
    main = demo_weights_path(DEMO_WEIGHTS)
    seg = segment.CellSegmenter(segment.SegmentConfig(weights=main, device="cpu"))
    assert not seg.stain_weights and seg.for_stain("he") is seg and not seg.companions
    assert "weights_by_stain" not in seg.describe()


def test_cli_records_which_weights_segmented_each_image(stand_in, tmp_path):
    images = tmp_path / "in"
    images.mkdir()
    for p in (HE, FLUO):
        (images / p.name).write_bytes(p.read_bytes())
    res = CliRunner().invoke(
        cli,
        ["cells-segment", str(images), "--out", str(tmp_path / "out"), "--device", "cpu"]
        + ["--runtime", "torch", "--json", "-q"],
    )
    assert res.exit_code == 0, res.output
    items = {Path(i["name"]).name: i["metrics"] for i in json.loads(res.stdout)["items"]}
    assert items[HE.name]["weights"] == stand_in and items[HE.name]["stain"] == "he"
    assert items[FLUO.name]["weights"] == MAIN
    report = (tmp_path / "out" / "report.html").read_text()
    assert f"Images of stain he: weights {stand_in}" in report and Path(DEMO_WEIGHTS).name in report


def test_demo_main_weights_average_their_companions_maps():
    import numpy as np

    names = DEMO_COMPANIONS[DEMO_WEIGHTS]
    assert names and all(demo_weights_path(n).is_file() for n in names)
    seg = segment.CellSegmenter(segment.SegmentConfig(device="cpu"))
    assert [c.weights for c in seg.companions] == [demo_weights_path(n) for n in names]
    assert seg.describe()["averaged_with"] == [str(demo_weights_path(n)) for n in names]
    plane = read_image(FLUO, allow_stack=False, keep_color=True)[0][0].astype(np.float32)
    plane = plane.mean(axis=-1) if plane.ndim == 3 else plane  # a grey image stored as RGB
    alone = [
        segment.CellSegmenter(segment.SegmentConfig(weights=demo_weights_path(n), device="cpu"))
        for n in (DEMO_WEIGHTS, *names)
    ]
    maps = [s.predict_maps(plane, scale=0.8) for s in alone]
    assert np.abs(maps[0] - maps[1]).max() > 0.05  # two different nets, so the mean is not either
    np.testing.assert_allclose(seg.predict_maps(plane, scale=0.8), np.mean(maps, axis=0), atol=1e-5)


def test_a_companion_of_another_target_is_refused(monkeypatch):
    from medseg.errors import ModelError

    borders = Path(__file__).resolve().parents[1] / "data" / "cells_synthetic_demo_unet2015.safetensors"
    monkeypatch.setattr(segment, "DEMO_COMPANIONS", {DEMO_WEIGHTS: (str(borders),)})
    with pytest.raises(ModelError, match="companion net must share the instance target"):
        segment.CellSegmenter(segment.SegmentConfig(device="cpu"))


def test_the_shipped_brightfield_specialist_is_averaged_with_its_companion():
    from medseg.cells.model import DEMO_WEIGHTS_BY_STAIN

    seg = segment.CellSegmenter(segment.SegmentConfig(device="cpu"))
    he = seg.for_stain("he")
    want = [demo_weights_path(n) for n in DEMO_COMPANIONS[DEMO_WEIGHTS_BY_STAIN["he"]]]
    assert want and [c.weights for c in he.companions] == want
    assert he.weights_name == " + ".join(p.name for p in [he.weights, *want])


def test_nets_are_compiled_only_for_the_stains_that_ran():
    """An H&E image runs the shipped specialists only: the main nets' Predictors are never built (they
    cost ~0.05 s a net to compile), and a fluorescence image never builds the specialists'."""
    seg = segment.CellSegmenter(segment.SegmentConfig(device="cpu"))
    mains = [seg, *seg.companions]
    assert all(n._predictor is None for n in mains)
    r = seg.analyse(read_image(HE, allow_stack=False, keep_color=True)[0][0])
    assert r.stain.stain == "he" and r.labels.max() > 0
    if seg.stain_weights.get("he"):  # a shipped specialist took it
        he = seg.for_stain("he")
        assert all(n._predictor is not None for n in (he, *he.companions))
        assert all(n._predictor is None for n in mains)
        described = seg.describe()  # the summary reports the runtime that ran, building nothing more
        assert described["runtime"] == he.predictor.describe()["runtime"]
        assert all(n._predictor is None for n in mains)
    fresh = segment.CellSegmenter(segment.SegmentConfig(device="cpu"))
    fresh.analyse(read_image(FLUO, allow_stack=False, keep_color=True)[0][0])
    assert all(n._predictor is not None for n in (fresh, *fresh.companions))
    assert not fresh._specialists  # never loaded


def test_an_unusable_device_is_refused_before_any_image():
    import torch

    from medseg.errors import MedsegError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    with pytest.raises(MedsegError, match="CUDA"):
        segment.CellSegmenter(segment.SegmentConfig(device="cuda:7"))
