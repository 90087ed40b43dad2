"""Slide scoring: Banff rule, border PTCs counted once, outputs, batch failures and --resume."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field

import numpy as np
import pytest

from medseg.errors import OutputExistsError
from medseg.pathology.batch import score_slides
from medseg.pathology.labels import DEFAULT_MARGINS
from medseg.pathology.score import ScoreConfig, banff_category, score_slide
from medseg.results import RunResult
from medseg.synthetic.slides import SlideSpec, write_slide


@dataclass
class _Cfg:
    margins: dict = field(default_factory=lambda: dict(DEFAULT_MARGINS))


class ColourDetector:
    """Stand-in for the CNN that sees only the tile: a DAB-brown ring -> C4d+ box (enlarged, clipped).

    A ring cut by the tile border gives a truncated box, like a real detector would.
    """

    config = _Cfg()
    source = "colour-oracle"

    def predict(self, tiles, *, min_score=0.5):
        from scipy import ndimage as ndi

        out = []
        for t in tiles:
            t = t.astype(int)
            brown = (t[..., 0] - t[..., 2] > 60) & (t[..., 0] < 200)
            lab, n = ndi.label(ndi.binary_closing(brown, iterations=2))
            boxes = []
            for sl in ndi.find_objects(lab):
                if (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) < 30:
                    continue
                b = [sl[1].start - 50, sl[0].start - 50, sl[1].stop + 50, sl[0].stop + 50]
                boxes.append(np.clip(b, 0, [t.shape[1], t.shape[0], t.shape[1], t.shape[0]]))
            boxes = np.array(boxes, float).reshape(-1, 4)
            out.append((boxes, np.ones(len(boxes), int), np.full(len(boxes), 0.9)))
        return out


@pytest.mark.parametrize(
    "pos, neg, category",
    [
        (0, 10, "C4d0"),
        (1, 99, "C4d1"),
        (1, 9, "C4d2"),
        (5, 5, "C4d2"),
        (6, 4, "C4d3"),
        (0, 0, "not assessable"),
    ],
)
def test_banff_category(pos, neg, category):
    assert banff_category(pos, neg)[0] == category


def test_ptc_straddling_tile_borders_is_counted_once(border_slide):
    """PTCs on both edges of the overlap between tiles 0 and 1 and at a 4-tile corner: one each."""
    path, sites = border_slide
    cfg = ScoreConfig(tile=1024, overlap=160, feasibility="none", batch_size=3, workers=2)
    result = score_slide(path, ColourDetector(), cfg)
    centres = np.c_[
        (result.boxes[:, 0] + result.boxes[:, 2]) / 2, (result.boxes[:, 1] + result.boxes[:, 3]) / 2
    ]
    assert result.summary["c4d_pos"] == len(sites), centres
    for x, y in sites:  # each detection is the whole PTC (seen by the tile that owns it), not a fragment
        d = np.hypot(centres[:, 0] - x, centres[:, 1] - y)
        assert d.min() < 6


def test_without_core_ownership_fragments_would_be_double_counted(tmp_path):
    """The guard above can fail: merging by NMS alone keeps the truncated copy of a border PTC."""
    from medseg.pathology.score import class_nms

    full = np.array([[814.0, 350, 914, 450]])  # PTC at x=864 seen whole by tile 0
    fragment = np.array([[864.0, 350, 914, 450]])  # ... and cut at tile 1's left edge
    boxes, _l, _s = class_nms(np.r_[full, fragment], np.array([1, 1]), np.array([0.9, 0.9]), 0.5)
    assert len(boxes) == 2


def _rows(out):
    return {r["slide"]: r for r in csv.DictReader((out / "scores.csv").open())}


def test_batch_failures_outputs_resume(small_slide, tmp_path):
    path, _ann, _s = small_slide
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    not_slide = tmp_path / "notes.tiff"
    not_slide.write_text("not an image")
    nompp = tmp_path / "nompp.tiff"
    write_slide(nompp, SlideSpec(width=1024, height=1024, seed=2), mpp_metadata=False)
    out = tmp_path / "out"
    listing = tmp_path / "batch.csv"
    listing.write_text(f"path\n{nompp}\n{tmp_path / 'missing.svs'}\n")
    cfg = ScoreConfig(tile=512, overlap=128, batch_size=2)
    res = score_slides([path, truncated, not_slide, listing], out, cfg, detector=ColourDetector())
    assert isinstance(res, RunResult) and res.exit_code == 5
    by = {i.name: i for i in res.items}
    assert res.counts == {"ok": 1, "failed": 4, "skipped": 0}
    assert by["small"].ok and by["small"].metrics["c4d_pos"] > 0
    assert "--slide-mpp" in by["nompp"].reason and "not found" in by["missing"].reason
    assert "not a slide" in by["notes"].reason
    assert by["truncated"].status == "failed" and "truncated" in by["truncated"].reason
    assert not (out / "truncated").exists()  # a failed slide leaves no folder behind
    rows = _rows(out)
    assert [r["status"] for r in rows.values()].count("failed") == 4 and len(rows) == 5
    # per-slide outputs
    summary = json.loads((out / "small" / "summary.json").read_text())
    for key in (
        "c4d_pos",
        "c4d_neg",
        "percent_positive",
        "c4d_positive_ihc",
        "banff_category",
        "tissue_area_mm2",
        "tiles_read",
        "wall_s",
    ):
        assert key in summary
    assert by["small"].outputs["summary"] == str(out / "small" / "summary.json")
    gj = json.loads((out / "small" / "detections.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == summary["ptc_total"]
    f = gj["features"][0]
    assert (
        f["properties"]["classification"]["name"] in ("C4d+", "C4d-") and f["geometry"]["type"] == "Polygon"
    )
    assert (out / "small" / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert "Banff" in html and "small" in html and "data:image/png;base64" in html
    assert "None" not in html and "{&#39;" not in html and "{'" not in html  # words, not Python values
    # resume keeps the finished slide (and its row), retries the failed one
    res2 = score_slides([path, not_slide], out, cfg, detector=ColourDetector(), resume=True)
    assert res2.counts == {"ok": 0, "failed": 1, "skipped": 1} and res2.exit_code == 5
    assert set(_rows(out)) == {"small", "notes"}  # failures of slides not in this run are gone
    # a rerun without flags refuses before any work; --overwrite replaces
    with pytest.raises(OutputExistsError):
        score_slides([path], out, cfg, detector=ColourDetector())
    res3 = score_slides([path], out, cfg, detector=ColourDetector(), overwrite=True)
    assert res3.exit_code == 0 and set(_rows(out)) == {"small"}


def test_table_without_resume_describes_only_this_run(small_slide, tmp_path):
    """Issue 8: a failed row of an earlier run must not stay in scores.csv (with exit code 0)."""
    path, _ann, _s = small_slide
    bad = tmp_path / "bad.tiff"
    bad.write_text("corrupt")
    out = tmp_path / "out"
    cfg = ScoreConfig(tile=512, overlap=128)
    assert score_slides([path, bad], out, cfg, detector=ColourDetector()).exit_code == 5
    assert _rows(out)["bad"]["status"] == "failed"
    for flags in ({"resume": True}, {"overwrite": True}):
        res = score_slides([path], out, cfg, detector=ColourDetector(), **flags)
        assert res.exit_code == 0, flags
        rows = _rows(out)
        assert list(rows) == ["small"] and rows["small"]["status"] == "ok", flags
        html = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (out / "report.html").read_text())
        assert "bad" not in html  # (images left out: base64 may spell anything)


def test_failed_then_corrected_rerun_needs_no_overwrite(small_slide, tmp_path):
    path, _ann, _s = small_slide
    slide = tmp_path / "case.tiff"
    slide.write_bytes(path.read_bytes()[:5000])  # truncated copy
    out = tmp_path / "out"
    cfg = ScoreConfig(tile=512, overlap=128)
    res = score_slides([slide], out, cfg, detector=ColourDetector())
    assert res.exit_code == 5 and not (out / "case").exists()
    slide.write_bytes(path.read_bytes())  # the corrected file
    res = score_slides([slide], out, cfg, detector=ColourDetector())
    assert res.exit_code == 0 and _rows(out)["case"]["status"] == "ok"


def test_preflight_stops_before_any_work(small_slide, tmp_path):
    """Bad options and an unwritable --out are input errors before a slide is read."""
    from medseg.errors import InputError

    path, _ann, _s = small_slide
    blocker = tmp_path / "afile.txt"
    blocker.write_text("a regular file")
    with pytest.raises(InputError, match="afile.txt"):
        score_slides([path], blocker / "out", ScoreConfig(), detector=ColourDetector())
    with pytest.raises(InputError, match="overlap"):
        score_slides([path], tmp_path / "o", ScoreConfig(tile=256, overlap=256), detector=ColourDetector())
    with pytest.raises(InputError, match="feasibility"):
        score_slides(
            [path], tmp_path / "o", ScoreConfig(feasibility="no.such:hook"), detector=ColourDetector()
        )
    assert not (tmp_path / "o").exists()


def test_score_shows_one_progress_bar_per_slide(small_slide, tmp_path, monkeypatch):
    """slide-score's bar: one per slide, counting its tissue tiles; off when progress is off (--quiet)."""
    import medseg.engine.progress as progress

    path, _ann, _s = small_slide
    calls = []
    real = progress.progress_bar

    def spy(iterable, **kwargs):
        calls.append(kwargs)
        return real(iterable, **kwargs)

    monkeypatch.setattr(progress, "progress_bar", spy)
    cfg = ScoreConfig(tile=512, overlap=128)
    res = score_slides([path], tmp_path / "a", cfg, detector=ColourDetector(), progress=True, report=False)
    assert len(calls) == 1 and calls[0]["enabled"] and calls[0]["desc"] == "small"
    assert calls[0]["total"] == res.items[0].metrics["tiles_tissue"] > 1 and calls[0]["unit"] == "tile"
    score_slides([path], tmp_path / "b", cfg, detector=ColourDetector(), progress=False, report=False)
    assert len(calls) == 2 and not calls[1]["enabled"]
