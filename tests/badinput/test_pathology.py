"""Damaged annotations and impossible numbers for the slide commands (issue 17 §2): refused in words.

One row per case, run through the real CLI by the shared harness (exit code, one line with the
phrase, inputs unchanged, nothing in --out, --json valid). GeoJSON with NaN / infinite coordinates
(Python's JSON reader accepts the ``NaN`` and ``Infinity`` literals) used to give 0 training boxes
in ``slide-prepare`` and a "C4d+ PTC" - hence Banff C4d3 - in ``slide-eval``; empty and zero-area
PTC polygons were counted too. The checks live in ``medseg/pathology/prepare.py``
(``check_annotation_files``, pre-flight of slide-prepare and slide-eval) and ``cli/_types.py``
(NaN / inf / <= 0 numeric options), with the same rules in ``ScoreConfig.check`` /
``PrepareConfig.check`` for library calls.
"""

from __future__ import annotations

import functools
import json
import math
import tempfile
from pathlib import Path

import pytest

from .conftest import Case, cases_params, check_case, run_cli

CPU = ("--device", "cpu")


@functools.cache
def _slide() -> tuple[bytes, list[dict]]:
    """A small synthetic C4d slide (1024 x 768 px, 0.5 um/px) and its truth features, made once."""
    from medseg.synthetic.slides import SlideSpec, write_slide

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.tiff"
        synth = write_slide(path, SlideSpec(width=1024, height=768, seed=21))
        return path.read_bytes(), synth.ptc_features()


def _features(damage: str | None) -> list[dict]:
    feats = json.loads(json.dumps(_slide()[1]))
    assert len(feats) > 3
    ring = feats[2]["geometry"]["coordinates"][0]
    if damage == "nan":
        ring[5][0] = math.nan
    elif damage == "inf":
        ring[3][1] = math.inf
    elif damage == "degenerate":
        feats[2]["geometry"]["coordinates"] = [[ring[0], ring[0], ring[0], ring[0]]]
    elif damage == "line":
        feats[2]["geometry"]["coordinates"] = [[[10, 10], [20, 20], [30, 30], [10, 10]]]
    elif damage == "empty":
        feats[2]["geometry"]["coordinates"] = [[]]
    elif damage == "point-nan":
        feats[2]["geometry"] = {"type": "Point", "coordinates": [math.nan, 40.0]}
    return feats


def slide_and_truth(tmp: Path, damage: str | None = None) -> tuple[Path, Path]:
    """``slides/s1.tiff`` and ``slides/s1.geojson`` (feature index 2 damaged as asked)."""
    (tmp / "slides").mkdir(exist_ok=True)
    slide = tmp / "slides" / "s1.tiff"
    slide.write_bytes(_slide()[0])
    truth = tmp / "slides" / "s1.geojson"
    # json.dumps writes NaN / Infinity literals, as a careless exporter would
    truth.write_text(json.dumps({"type": "FeatureCollection", "features": _features(damage)}))
    return slide, truth


def eval_inputs(tmp: Path, damage: str) -> list:
    """slide-eval RESULTS TRUTH: an (empty) results folder and a damaged truth GeoJSON."""
    (tmp / "results").mkdir()
    _slide_path, truth = slide_and_truth(tmp, damage)
    return ["slide-eval", tmp / "results", truth]


def prepare(tmp: Path, damage: str, *extra: str) -> list:
    slide, _truth = slide_and_truth(tmp, damage)
    return ["slide-prepare", slide, "--out", tmp / "out", *extra]


def score(tmp: Path, *extra: str) -> list:
    slide, _truth = slide_and_truth(tmp)
    return ["slide-score", slide, "--out", tmp / "out", *CPU, *extra]


SLIDES = ("slides",)
ROWS = [
    # damaged annotations: slide-prepare (pre-flight, nothing written)
    Case("prepare-geojson-nan", lambda t: prepare(t, "nan"), 2, "feature index 2 (C4d", SLIDES),
    Case("prepare-geojson-inf", lambda t: prepare(t, "inf"), 2, "NaN or infinite values", SLIDES),
    Case("prepare-geojson-degenerate", lambda t: prepare(t, "degenerate"), 2, "degenerate polygon", SLIDES),
    Case("prepare-geojson-collinear", lambda t: prepare(t, "line"), 2, "zero area", SLIDES),
    Case("prepare-geojson-empty-polygon", lambda t: prepare(t, "empty"), 2, "empty Polygon", SLIDES),
    Case(
        "prepare-geojson-point-nan",
        lambda t: prepare(t, "point-nan", "--point-size", "15"),
        2,
        "Point coordinates contain NaN",
        SLIDES,
    ),
    # damaged truth: slide-eval (pre-flight, before any slide is compared)
    Case(
        "eval-truth-nan", lambda t: eval_inputs(t, "nan"), 2, "feature index 2", ("slides", "results"), None
    ),
    Case(
        "eval-truth-inf", lambda t: eval_inputs(t, "inf"), 2, "NaN or infinite", ("slides", "results"), None
    ),
    Case(
        "eval-truth-degenerate",
        lambda t: eval_inputs(t, "degenerate"),
        2,
        "degenerate polygon",
        ("slides", "results"),
        None,
    ),
    Case(
        "eval-truth-empty", lambda t: eval_inputs(t, "empty"), 2, "empty Polygon", ("slides", "results"), None
    ),
    # impossible numbers
    Case("score-slide-mpp-nan", lambda t: score(t, "--slide-mpp", "nan"), 2, "not a finite number", SLIDES),
    Case("score-slide-mpp-inf", lambda t: score(t, "--slide-mpp", "inf"), 2, "not a finite number", SLIDES),
    Case("score-slide-mpp-zero", lambda t: score(t, "--slide-mpp", "0"), 2, "not in the range x>0", SLIDES),
    Case(
        "score-slide-mpp-negative", lambda t: score(t, "--slide-mpp", "-1"), 2, "not in the range x>0", SLIDES
    ),
    Case("score-mpp-nan", lambda t: score(t, "--mpp", "nan"), 2, "not a finite number", SLIDES),
    Case("score-min-score-nan", lambda t: score(t, "--min-score", "nan"), 2, "not a finite number", SLIDES),
    Case(
        "prepare-slide-mpp-nan", lambda t: prepare(t, None, "--slide-mpp", "nan"), 2, "not a finite", SLIDES
    ),
    Case(
        "prepare-point-size-nan", lambda t: prepare(t, None, "--point-size", "nan"), 2, "not a finite", SLIDES
    ),
    Case("prepare-mpp-zero", lambda t: prepare(t, None, "--mpp", "0"), 2, "not in the range x>0", SLIDES),
    Case(
        "eval-iou-nan",
        lambda t: [*eval_inputs(t, None)[:3], "--iou", "nan"],
        2,
        "not a finite number",
        ("slides", "results"),
        None,
    ),
    Case(
        "train-lr-nan",
        lambda t: ["slide-train", (t / "ds").mkdir() or t / "ds", "--out", t / "out", "--lr", "nan", *CPU],
        2,
        "not a finite number",
        ("ds",),
    ),
]


@pytest.mark.parametrize("case", cases_params(ROWS))
def test_bad_slide_input(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)


def test_the_same_inputs_undamaged_are_accepted(tmp_path: Path) -> None:
    """Control: the slide and truth the rows damage are prepared as usual (boxes written)."""
    slide, _truth = slide_and_truth(tmp_path)
    res = run_cli("slide-prepare", slide, "--out", tmp_path / "out", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert sum(doc["summary"]["boxes"].values()) > 0, doc["summary"]


@pytest.mark.parametrize(
    "field, value",
    [("slide_mpp", math.nan), ("target_mpp", math.inf), ("slide_mpp", -1.0), ("min_score", math.nan)],
)
def test_library_configs_refuse_impossible_numbers(field: str, value: float) -> None:
    """Library calls get the same refusal as the CLI (NaN passes every ``x <= 0`` test)."""
    from medseg.errors import InputError
    from medseg.pathology.prepare import PrepareConfig
    from medseg.pathology.score import ScoreConfig

    with pytest.raises(InputError, match="finite|in \\[0, 1\\]"):
        ScoreConfig(**{field: value}).check()
    if field in ("slide_mpp", "target_mpp"):
        with pytest.raises(InputError, match="finite"):
            PrepareConfig(**{field: value}).check()
