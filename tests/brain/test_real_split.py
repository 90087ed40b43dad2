"""The seeded split of the 12 shared BraTS 2018 cases: reproducible, mixed, recorded in the repository."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPLIT = ROOT / "medseg" / "weights" / "brain" / "brats2018_split.json"


def test_split_is_the_seeded_draw_and_mixes_institutions_and_grades(repo_script):
    mod = repo_script("scripts/train_demo_weights_brain.py")
    split = mod.make_split(sorted(mod.CASES))
    assert split == mod.make_split(sorted(mod.CASES))  # seeded: the same every time
    saved = json.loads(SPLIT.read_text(encoding="utf-8"))
    assert (saved["train"], saved["validation"], saved["seed"]) == (
        split["train"],
        split["validation"],
        split["seed"],
    )
    assert len(split["train"]) == 9 and len(split["validation"]) == 3
    assert not set(split["train"]) & set(split["validation"])
    val = [mod.CASES[n] for n in split["validation"]]
    assert {inst for inst, _ in val} == {"2013", "CBICA", "TCIA"}
    assert {grade for _, grade in val} == {"HGG", "LGG"}
    train = [mod.CASES[n] for n in split["train"]]
    assert {inst for inst, _ in train} == {"2013", "CBICA", "TCIA"} and {g for _, g in train} == {
        "HGG",
        "LGG",
    }
