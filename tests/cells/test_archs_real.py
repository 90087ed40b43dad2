"""benchmarks/cells_archs.py --real: the ids it trains on never include a validation id, and the
real-data plumbing (split -> 3class samples -> any arch trained -> cells_real scoring) runs end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DSB_STAGE1 = ROOT.parent / "shared" / "realdata" / "nuclei_dsb2018_stage1"


def _archs():
    name = "cells_archs_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "cells_archs.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_real_ids_keep_validation_and_held_out_apart():
    archs = _archs()
    script, bench = archs.real_modules()
    split = json.loads(script.SPLIT.read_text())
    held_ids = bench.held_out_ids()
    train, held, val = archs.real_ids(split, held_ids)
    assert len(val) == 60 and set(val) == set(split["validation"])
    assert len(held) == 20 and set(held) <= set(split["train"])
    assert not set(train) & set(val), "a validation id would be trained on"
    assert not set(train) & set(held), "a held-out id would be trained on"
    assert len(train) == len(split["train"]) - 20
    assert set(val.values()) == {"fluorescence", "brightfield", "grey_brightfield"}


def test_real_ids_refuse_an_overlapping_split():
    archs = _archs()
    split = {"train": ["a", "b", "c"], "validation": {"c": "fluorescence"}}
    with pytest.raises(ValueError, match="overlap"):
        archs.real_ids(split, ["a"])
    with pytest.raises(ValueError, match="training split"):
        archs.real_ids({"train": ["a", "b"], "validation": {"c": "fluorescence"}}, ["c"])


@pytest.mark.slow
@pytest.mark.skipif(
    not (DSB_STAGE1 / "index.tsv").is_file(), reason="needs ../shared/realdata/nuclei_dsb2018_stage1"
)
def test_real_mode_trains_a_padded_arch_on_3class_and_scores_it():
    import tifffile
    import torch

    archs = _archs()
    torch.set_num_threads(1)
    train, held, val = archs.load_real(DSB_STAGE1, class_cap=10.0, limit=4)
    assert len(train) == 4 and len(held) == 1 and len(val) == 2
    assert all(s.target.max() <= 2 for s in train)  # 3class targets: background, interior, boundary
    args = SimpleNamespace(width=4, epochs=2, lr=2e-3, budget=2.0, class_cap=10.0, real=DSB_STAGE1, repeats=1)
    image = tifffile.imread(archs.DSB / "img2d.tif")[:128, :128]
    row = archs.run_arch_real("hed", args, train, held, val, image)
    assert row["target"] == "3class" and row["steps"] >= 2 and row["params"] > 0
    assert row["true_cells"] > 0 and 0.0 <= row["ap50"] <= 1.0
    assert set(row["ap50_kinds"]) <= {"fluorescence", "brightfield", "grey_brightfield"}
    assert np.isfinite(row["mpx_s"]) and row["mpx_s"] > 0
    assert "| `hed` |" in archs.real_table([row])
