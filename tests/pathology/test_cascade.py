"""IDK cascade (--cascade): the gate skips only tiles it is sure hold no PTC; counts stay as heavy-only."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest

from medseg.engine.weights import demo_weights_path
from medseg.errors import ModelError
from medseg.pathology.cascade import (
    DEMO_GATE,
    CascadeDetector,
    GateConfig,
    choose_skip_threshold,
    fit_temperature,
    load_gate,
)

GATE = demo_weights_path(DEMO_GATE)
# the cascade's counts per class may differ from heavy-only by this much (see docs/pathology.md)
COUNT_TOLERANCE = {"abs": 2, "rel": 0.03}


@pytest.fixture(scope="module")
def gate():
    assert GATE.is_file(), "demo gate missing from medseg/weights: run scripts/make_cascade_gate_pathology.py"
    return load_gate(GATE)


class _Heavy:
    """A stand-in detector: one box per tile, records which tiles it saw."""

    config = SimpleNamespace(arch="light", margins={"C4d+": 50, "C4d-": 40})
    source = "heavy.safetensors"

    def __init__(self):
        self.seen = []

    def describe(self):
        return {"device": "cpu"}

    def predict(self, tiles, *, min_score=0.5):
        self.seen.append(tiles[:, 0, 0, 0].tolist())
        return [(np.array([[1.0, 2, 3, 4]]), np.array([1]), np.array([0.9])) for _ in tiles]


def test_cascade_runs_the_detector_only_where_the_gate_is_unsure():
    probs = {0: 0.001, 1: 0.5, 2: 0.99, 3: 0.01}  # tile id (first pixel) -> gate probability
    fake_gate = SimpleNamespace(
        config=GateConfig(skip_below=0.02),
        source="gate.safetensors",
        probabilities=lambda t: np.array([probs[int(v)] for v in t[:, 0, 0, 0]]),
    )
    heavy = _Heavy()
    cascade = CascadeDetector(heavy, fake_gate)
    tiles = np.zeros((4, 8, 8, 3), np.uint8)
    tiles[:, 0, 0, 0] = [0, 1, 2, 3]
    out = cascade.predict(tiles, min_score=0.3)
    assert heavy.seen == [[1, 2]]  # the sure-empty tiles 0 and 3 never reach the detector
    assert [len(b) for b, _l, _s in out] == [0, 1, 1, 0] and out[0][0].shape == (0, 4)
    assert cascade.config is heavy.config and cascade.source == heavy.source
    assert cascade.describe()["cascade"]["tiles_skipped"] == 2 and cascade.describe()["device"] == "cpu"
    assert cascade.slide_fields() == {"cascade": True, "cascade_tiles_gated": 4, "cascade_tiles_skipped": 2}
    assert cascade.slide_fields()["cascade_tiles_gated"] == 0  # per slide: counted since the last call


def test_calibration_helpers():
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.5
    true_logits = np.where(labels, 1.0, -1.0) * 2 + rng.normal(0, 2, 4000)
    # labels drawn from sigmoid(z) with z = logits / 3: the fit recovers T ~ 3
    z = rng.normal(0, 3, 4000)
    drawn = rng.random(4000) < 1 / (1 + np.exp(-z))
    assert 2.5 < fit_temperature(3 * z, drawn) < 3.6
    probs = 1 / (1 + np.exp(-true_logits))
    t = choose_skip_threshold(probs, labels)
    assert t <= 0.05 and (probs[labels] >= t).all()
    with pytest.raises(ValueError):
        choose_skip_threshold(probs, np.zeros(4000, bool))


def test_gate_refuses_detector_weights(demo_weights):
    with pytest.raises(ModelError, match="c4d-cascade-gate"):
        load_gate(demo_weights)


def _tiles(slide, origins, size=1024):
    import io

    from PIL import Image

    out = []
    for x, y in origins:
        buf = io.BytesIO()
        Image.fromarray(slide.render(x, y, size, size)).save(buf, format="JPEG", quality=85)
        out.append(np.asarray(Image.open(buf).convert("RGB")))
    return np.stack(out)


def _core_ptcs(slide, x, y, inset=64, size=1024):
    cx, cy = slide.ptcs[:, 1] - x, slide.ptcs[:, 2] - y
    return int(((cx >= inset) & (cx < size - inset) & (cy >= inset) & (cy < size - inset)).sum())


def test_gate_skips_ptc_free_tissue_but_never_c4d_negative_ptcs(gate):
    """Sure-empty = no PTC at all. PTC-free tissue (glomeruli with brown loops, tubules) at the tissue
    edge is skipped; no tile with a PTC in its core is, also when every PTC is C4d- (no DAB at all)."""
    from medseg.synthetic.slides import SlideSpec, SyntheticSlide

    spec = SlideSpec(width=4096, height=3072, seed=4243, positive_fraction=0.0, arc_fraction=0.15)
    neg_only = SyntheticSlide(spec)
    empty = SyntheticSlide(SlideSpec(width=4096, height=3072, seed=4244, arc_fraction=0.15))
    empty.without_ptcs(0, 0, 4096, 3072)
    origins = [(900, 700), (2000, 1000), (1500, 1400), (0, 0), (3072, 0), (0, 2048), (3072, 2048)]
    p_neg = gate.probabilities(_tiles(neg_only, origins))
    has_ptc = np.array([_core_ptcs(neg_only, x, y) > 0 for x, y in origins])
    assert has_ptc.sum() >= 5
    assert (p_neg[has_ptc] >= gate.config.skip_below).all(), p_neg  # C4d- PTCs: the detector runs
    p_empty = gate.probabilities(_tiles(empty, origins))
    edges = p_empty[3:]  # the four corner tiles: PTC-free tissue edge on glass
    assert (edges < gate.config.skip_below).sum() >= 2, edges  # confidently empty: skipped


@pytest.mark.slow
def test_cascade_counts_stay_within_tolerance_of_heavy_only(gate, demo_weights, tmp_path):
    """One patchy slide (PTC-free left half), scored heavy-only and through the CLI with --cascade:
    counts per class within the stated tolerance, the skip counts recorded in summary, CSV and JSON."""
    from click.testing import CliRunner
    from medseg_cli.main import cli

    from medseg.pathology.detector import load_detector
    from medseg.pathology.score import ScoreConfig, score_slide
    from medseg.synthetic.slides import SlideSpec, SyntheticSlide, write_slide

    spec = SlideSpec(width=3600, height=2400, seed=4245, positive_fraction=0.4)
    path = tmp_path / "patchy.tiff"
    write_slide(path, SyntheticSlide(spec).without_ptcs(0, 0, 1800, 2400))
    heavy = score_slide(path, load_detector(demo_weights, device="cpu"), ScoreConfig(device="cpu", workers=1))
    res = CliRunner().invoke(
        cli, ["slide-score", str(path), "--out", str(tmp_path / "out"), "--cascade", "--device", "cpu",
              "--workers", "1", "--json", "--quiet"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "patchy" / "summary.json").read_text())
    assert summary["cascade"] is True and summary["cascade_tiles_gated"] == summary["tiles_feasible"]
    # the demo gate is cautious: inner PTC-free tissue mostly stays "I don't know" (docs/pathology.md)
    assert 0 <= summary["cascade_tiles_skipped"] <= summary["tiles_feasible"]
    for key in ("c4d_pos", "c4d_neg"):
        ref = heavy.summary[key]
        assert abs(summary[key] - ref) <= max(COUNT_TOLERANCE["abs"], COUNT_TOLERANCE["rel"] * ref), key
    row = next(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    assert row["cascade_tiles_skipped"] == str(summary["cascade_tiles_skipped"])
    assert json.loads(res.stdout)["summary"]["cascade"]["tiles_skipped"] == summary["cascade_tiles_skipped"]
