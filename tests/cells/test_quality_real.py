"""The shipped demo weights on real DSB 2018 VALIDATION images (never trained on), and what their
metadata records about the data and the split (issue 18).

The 12 images in ``tests/data/real/dsb2018_val`` (8 fluorescence, 4 colour brightfield) were chosen by
rule from the 60 validation ids before any result was seen (tests/data/real/LICENSES.md). The pass
marks are what the weights reach there minus a margin, not the issue's 0.80 (see docs/cells.md for
the measured numbers on all 60 validation images).
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from medseg_cli.main import cli

from medseg.cells.model import DEMO_COMPANIONS, DEMO_WEIGHTS, DEMO_WEIGHTS_BY_STAIN
from medseg.engine.checkpoint import read_meta
from medseg.engine.weights import demo_weights_path

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "medseg" / "weights" / "cells" / "dsb2018_split.json"
VAL = ROOT / "tests" / "data" / "real" / "dsb2018_val"

# measured with the shipped weights (3class instance target) on these 12 images: dataset AP@0.5 0.589
# (fluorescence 0.715, brightfield 0.473; mAP@0.5:0.95 0.269), minus 0.05. NOT the 0.80: the
# weights do not reach it (docs/cells.md: 0.631 on all 60 validation images). Since --diameter auto became
# the default (session 6): 0.590 (fluorescence 0.718, brightfield 0.473; mAP 0.274), all 60: 0.665. With the
# brightfield specialist taking H&E images (session 7): 0.627 (fluorescence 0.718, brightfield 0.534; mAP
# 0.308), all 60: 0.694.
# With the second main net averaged in (session 13): 0.631 (fluorescence 0.727, brightfield 0.534; mAP
# 0.309), all 60: 0.705; and the specialist's companion: 0.653 (brightfield 0.576; mAP 0.322), all 60: 0.713.
# Session 14 (the seed-1 main net in place of the second, the 3class mask threshold 0.6): 0.678 (fluorescence
# 0.735, brightfield 0.616; mAP 0.371), all 60: 0.746 (mAP 0.496).
# Session 15 (seeds split where one interior holds two cores): 0.690 (fluorescence 0.759, brightfield 0.616;
# mAP 0.376), all 60: 0.770 (mAP 0.511).
MIN_AP50 = {"all": 0.64, "fluorescence": 0.70, "brightfield": 0.56}
MIN_MAP = 0.32


def test_split_is_seeded_stratified_and_disjoint():
    split = json.loads(SPLIT.read_text())
    val, train = split["validation"], split["train"]
    assert len(val) == 60 and len(train) == 540 and not set(val) & set(train)
    assert split["seed"] == 2018
    kinds = list(val.values())
    assert (kinds.count("fluorescence"), kinds.count("brightfield"), kinds.count("grey_brightfield")) == (
        49,
        9,
        2,
    )
    test_ids = [p.stem for p in (VAL / "images").glob("*.png")]
    assert len(test_ids) >= 10 and set(test_ids) <= set(val)


def test_demo_weights_metadata_records_data_split_and_use():
    meta = read_meta(demo_weights_path(DEMO_WEIGHTS))
    notes = json.loads(meta.notes)
    split = json.loads(SPLIT.read_text())
    assert notes["validation_ids"] == sorted(split["validation"])
    assert notes["split_seed"] == split["seed"] == 2018
    for words in ("Data Science Bowl", "2018", "BBBC038", "CC0", "research use, not for clinical use"):
        assert words in meta.training_data + notes["dataset"] + notes["licence"] + notes["use"], words
    assert notes["train_cpu_seconds"] > 0
    assert meta.config["instance_target"] == "3class"  # the instance method chosen on real data


def test_companion_metadata_records_data_split_and_use():
    for name in DEMO_COMPANIONS[DEMO_WEIGHTS]:
        meta = read_meta(demo_weights_path(name))
        notes = json.loads(meta.notes)
        assert notes["validation_ids"] == sorted(json.loads(SPLIT.read_text())["validation"])
        assert notes["split_seed"] == 2018 and notes["init"] == "scratch" and notes["train_cpu_seconds"] > 0
        assert "trained from scratch" in meta.training_data and "CC0" in meta.training_data
        assert "research use, not for clinical use" in meta.training_data
        assert (
            meta.config["instance_target"]
            == read_meta(demo_weights_path(DEMO_WEIGHTS)).config["instance_target"]
        )


def test_brightfield_specialist_metadata_records_its_kinds_split_and_use():
    path = demo_weights_path(DEMO_WEIGHTS_BY_STAIN["he"])
    assert DEMO_WEIGHTS_BY_STAIN["ihc"] == DEMO_WEIGHTS_BY_STAIN["he"]
    meta = read_meta(path)
    notes = json.loads(meta.notes)
    split = json.loads(SPLIT.read_text())
    assert notes["validation_ids"] == sorted(split["validation"]) and notes["split_seed"] == 2018
    assert notes["kinds"] == ["brightfield", "grey_brightfield"]
    assert "only its brightfield and grey_brightfield images" in meta.training_data
    assert "research use, not for clinical use" in meta.training_data
    assert meta.config["instance_target"] == "3class" and notes["train_cpu_seconds"] > 0
    for name in DEMO_COMPANIONS[DEMO_WEIGHTS_BY_STAIN["he"]]:  # averaged with it: the same kinds and split
        companion = read_meta(demo_weights_path(name))
        extra = json.loads(companion.notes)
        assert extra["kinds"] == notes["kinds"] and extra["validation_ids"] == notes["validation_ids"]
        assert "research use, not for clinical use" in companion.training_data


def test_quality_on_real_validation_images(tmp_path):
    import torch

    torch.set_num_threads(2)
    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli,
        ["cells-segment", str(VAL / "images"), "--out", str(out), "--device", "cpu", "--json", "-q"]
        + ["--no-report"],
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["cells-eval", str(out), "--truth", str(VAL / "masks"), "--json", "-q"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)["summary"]
    got = {"all": s["ap50"], **{k: g["ap50"] for k, g in s["groups"].items()}}
    print(got, s["map_50_95"])
    for kind, floor in MIN_AP50.items():
        assert got[kind] >= floor, (kind, got)
    assert s["map_50_95"] >= MIN_MAP, s["map_50_95"]  # the outlines' fit, not only their count
    assert s["images"] == 12
