"""Issue 10: stain QC before any score, and a Banff category only with enough PTCs.

Real pixels where they exist: the Aperio H&E SVS of the shared real data (skipped when absent),
its H&E thumbnail in tests/data/real, and scikit-image's DAB + hematoxylin IHC image, written here
as small pyramidal tiled TIFFs that OpenSlide's generic TIFF reader opens.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from medseg.pathology.batch import score_slides
from medseg.pathology.score import ScoreConfig, banff_category, score_slide

from .test_score import ColourDetector

ROOT = Path(__file__).resolve().parents[2]
REAL_HE_SVS = ROOT.parent / "shared" / "realdata" / "slide_cmu1_he_svs" / "CMU-1-Small-Region.svs"
HE_THUMB = ROOT / "tests" / "data" / "real" / "he_cmu1_thumb.png"


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float, tile: int = 256) -> Path:
    """A pyramidal tiled TIFF (levels 1, 2, 4, ... down to one tile), mpp in the resolution tags."""
    import tifffile
    from PIL import Image

    with tifffile.TiffWriter(path) as tw:
        level, ds = rgb, 1
        while True:
            res = 1e4 / (mpp * ds)
            tw.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if ds > 1 else 0,
                metadata=None,
            )
            if max(level.shape[:2]) <= tile:
                return path
            ds *= 2
            h, w = level.shape[:2]
            level = np.asarray(Image.fromarray(level).resize((max(1, w // 2), max(1, h // 2)), Image.BOX))


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["slide"]: r for r in csv.DictReader((out / "scores.csv").open(encoding="utf-8"))}


def _no_images(html: str) -> str:
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)


class OneDetection:
    """A detector that finds exactly one C4d+ PTC on a whole slide (the first tile it sees)."""

    config = ColourDetector.config
    source = "one-detection"

    def __init__(self) -> None:
        self.done = False

    def predict(self, tiles, *, min_score=0.5):
        out = []
        for _t in tiles:
            n = 0 if self.done else 1
            self.done = True
            out.append((np.array([[300.0, 300, 420, 420]])[:n], np.ones(n, int), np.full(n, 0.9)))
        return out


@pytest.fixture(scope="module")
def ihc_slide(tmp_path_factory) -> Path:
    """skimage's real IHC image (DAB + hematoxylin, 512 px) mirrored to 1024 px, at 0.5 um/px."""
    from skimage.data import immunohistochemistry

    img = immunohistochemistry()
    top = np.concatenate([img, img[:, ::-1]], axis=1)
    big = np.ascontiguousarray(np.concatenate([top, top[::-1]], axis=0))
    return write_pyramid(tmp_path_factory.mktemp("ihc") / "ihc.tiff", big, mpp=0.5)


@pytest.fixture(scope="module")
def fluorescence_slide(tmp_path_factory) -> Path:
    """A synthetic fluorescence slide: black background, bright blue nuclei in green cytoplasm."""
    rng = np.random.default_rng(0)
    img = np.zeros((1536, 1536, 3), np.uint8) + rng.integers(0, 12, (1536, 1536, 1), dtype=np.uint8)
    yy, xx = np.mgrid[-40:41, -40:41]
    for cx, cy in rng.integers(300, 1236, (120, 2)):
        r = int(rng.integers(10, 18))
        win = img[cy - 40 : cy + 41, cx - 40 : cx + 41]
        win[xx**2 + yy**2 < (2.2 * r) ** 2, 1] = 90  # cytoplasm (green)
        win[xx**2 + yy**2 < r**2, 2] = 220  # nucleus (blue, DAPI-like)
    return write_pyramid(tmp_path_factory.mktemp("fluo") / "fluo.tiff", img, mpp=0.5)


def test_banff_needs_min_ptcs_and_one_detection_is_never_c4d3():
    assert banff_category(1, 0, 30) == ("not assessable (1 PTC)", 100.0)
    assert banff_category(20, 9, 30)[0] == "not assessable (29 PTCs)"
    assert banff_category(20, 10, 30)[0] == "C4d3"
    assert banff_category(0, 0, 30)[0] == "not assessable (0 PTCs)"
    assert banff_category(1, 0)[0] == "C4d3"  # the bare rule, without the evidence gate
    # the default is the smallest N where 0 of N C4d+ is below 10 % at 95 % one-sided confidence
    from medseg.pathology.labels import DEFAULT_MIN_PTCS

    n = next(n for n in range(1, 100) if 1 - 0.05 ** (1 / n) < 0.10)
    assert n == 29 and DEFAULT_MIN_PTCS >= n and ScoreConfig().min_ptcs == DEFAULT_MIN_PTCS


def test_one_detection_gives_not_assessable_with_counts(small_slide, tmp_path):
    path, _ann, _s = small_slide
    out = tmp_path / "out"
    cfg = ScoreConfig(tile=512, overlap=128, feasibility="none")
    res = score_slides([path], out, cfg, detector=OneDetection())
    (item,) = res.items
    assert item.ok and res.exit_code == 0
    m = item.metrics
    assert m["banff_category"] == "not assessable (1 PTC)" and m["c4d_pos"] == 1 and m["c4d_neg"] == 0
    assert m["c4d_positive_ihc"] is None and m["stain_qc_status"] == "passed"
    row = _rows(out)["small"]
    assert row["banff_category"] == "not assessable (1 PTC)" and row["ptc_total"] == "1"
    assert "--min-ptcs" in row["reason"] and row["min_ptcs"] == "30"
    assert float(row["feasible_area_mm2"]) > 0 and row["stain_qc_status"] == "passed"
    html = _no_images((out / "report.html").read_text(encoding="utf-8"))
    assert "C4d3" not in html.split("Score distribution")[0]  # the slide table says no C4d3
    assert "not assessable (1 PTC)" in html and "PTCs assessed" in html and "feasible tissue mm" in html


def test_enough_ptcs_give_a_category(small_slide, tmp_path):
    path, _ann, _s = small_slide
    cfg = ScoreConfig(tile=512, overlap=128, min_ptcs=5)
    result = score_slide(path, ColourDetector(), cfg)
    s = result.summary
    assert s["ptc_total"] >= 5 and s["banff_category"] == "C4d3" and s["c4d_positive_ihc"] is True
    assert s["stain_qc"]["kind"] == "brightfield_dab" and s["stain_qc"]["look"]
    assert 0 < s["feasible_area_mm2"] <= s["tissue_area_mm2"]


@pytest.mark.skipif(not REAL_HE_SVS.is_file(), reason="shared real data (../shared/realdata) not present")
def test_real_he_svs_is_qc_failed_through_the_cli(demo_weights, tmp_path):
    """The real Aperio H&E: status qc_failed, reason H&E / no DAB, no Banff category, exit 0."""
    from click.testing import CliRunner
    from medseg_cli.main import cli

    out = tmp_path / "out"
    res = CliRunner().invoke(
        cli, ["slide-score", str(REAL_HE_SVS), "--out", str(out), "--device", "cpu", "--json", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (item,) = doc["items"]
    assert item["status"] == "skipped" and item["metrics"]["status"] == "qc_failed"
    assert "H&E" in item["reason"] and "no DAB" in item["reason"]
    assert (
        item["metrics"]["banff_category"] is None and item["metrics"]["stain_qc_kind"] == "brightfield_no_dab"
    )
    row = _rows(out)["CMU-1-Small-Region"]
    assert row["status"] == "qc_failed" and row["banff_category"] == "" and "H&E" in row["stain_qc_reasons"]
    assert float(row["stain_qc_eosin_fraction"]) > 0.25 and row["c4d_pos"] == ""
    summary = json.loads((out / "CMU-1-Small-Region" / "summary.json").read_text())
    assert summary["stain_qc"]["passed"] is False and summary["banff_category"] is None
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "not scored (stain QC)" in html and "looks like H&amp;E" in _no_images(html)
    # --skip-stain-qc scores it anyway and says so in the outputs
    res = CliRunner().invoke(
        cli,
        ["slide-score", str(REAL_HE_SVS), "--out", str(out), "--device", "cpu", "--json", "--quiet"]
        + ["--skip-stain-qc", "--overwrite", "--feasibility", "none"],
    )
    assert res.exit_code == 0, res.output
    (item,) = json.loads(res.stdout)["items"]
    assert item["status"] == "ok" and item["metrics"]["stain_qc_status"] == "failed"
    assert item["metrics"]["stain_qc_skipped"] is True and "--skip-stain-qc" in item["reason"]
    assert not str(item["metrics"]["banff_category"]).startswith("C4d3") or item["metrics"]["ptc_total"] >= 30


def test_real_he_pixels_fail_qc_without_shared_data(tmp_path):
    """The same real H&E (its thumbnail in tests/data/real) as a pyramidal TIFF: qc_failed, no
    detector run."""
    from PIL import Image

    rgb = np.asarray(Image.open(HE_THUMB).convert("RGB"))
    path = write_pyramid(
        tmp_path / "he.tiff", np.ascontiguousarray(np.repeat(np.repeat(rgb, 4, 0), 4, 1)), 2.0
    )
    res = score_slides([path], tmp_path / "out", ScoreConfig(), detector=OneDetection())
    (item,) = res.items
    assert res.exit_code == 0 and item.status == "skipped" and item.metrics["status"] == "qc_failed"
    assert "H&E" in item.reason and item.metrics["banff_category"] is None
    # the command line says it in words, and a QC failure keeps exit code 0
    from click.testing import CliRunner
    from medseg_cli.main import cli

    res = CliRunner().invoke(
        cli, ["slide-score", str(path), "--out", str(tmp_path / "cli"), "--device", "cpu"]
    )
    assert res.exit_code == 0, res.output
    assert "he: not scored: stain QC failed: no DAB stain found: looks like H&E" in res.stdout
    assert "0 slide(s) scored, 0 failed, 1 not scored (stain QC)" in res.stdout
    # slide-eval does not judge a detector that never ran on the slide
    from medseg.pathology.evaluate import evaluate_results

    truth = tmp_path / "he.geojson"
    truth.write_text('{"type": "FeatureCollection", "features": []}')
    ev = evaluate_results(tmp_path / "out", [truth])
    assert ev.items[0].status == "skipped" and "stain QC" in ev.items[0].reason and ev.exit_code == 0
    assert ev.summary["overall"]["slides"] == 0


def test_real_ihc_image_passes_qc(ihc_slide, tmp_path):
    """skimage's real DAB IHC passes the stain QC; with few PTCs it is 'not assessable', not failed."""
    res = score_slides([ihc_slide], tmp_path / "out", ScoreConfig(), detector=OneDetection())
    (item,) = res.items
    assert item.ok, item.reason
    assert item.metrics["stain_qc_status"] == "passed" and item.metrics["stain_qc_kind"] == "brightfield_dab"
    assert item.metrics["banff_category"].startswith("not assessable")
    assert _rows(tmp_path / "out")["ihc"]["stain_qc_status"] == "passed"


def test_fluorescence_slide_is_qc_failed_and_batch_goes_on(fluorescence_slide, small_slide, tmp_path):
    path, _ann, _s = small_slide
    out = tmp_path / "out"
    res = score_slides(
        [fluorescence_slide, path], out, ScoreConfig(tile=512, overlap=128), detector=ColourDetector()
    )
    by = {i.name: i for i in res.items}
    assert res.exit_code == 0 and by["small"].ok  # a QC failure is an outcome, not a crash
    fl = by["fluo"]
    assert fl.status == "skipped" and fl.metrics["status"] == "qc_failed"
    assert "fluorescence" in fl.reason and "dark background" in fl.reason
    rows = _rows(out)
    assert rows["fluo"]["status"] == "qc_failed" and rows["fluo"]["stain_qc_kind"] == "fluorescence"
    assert rows["fluo"]["banff_category"] == "" and res.summary["qc_failed"] == 1
    assert (out / "fluo" / "overlay.png").is_file()  # the thumbnail for the report
    # --resume scores it again (a QC failure is not a finished slide); --skip-stain-qc lets it through
    res = score_slides(
        [fluorescence_slide],
        out,
        ScoreConfig(tile=512, overlap=128, skip_stain_qc=True),
        detector=ColourDetector(),
        resume=True,
    )
    (item,) = res.items
    assert (
        item.ok and item.metrics["stain_qc_status"] == "failed" and item.metrics["stain_qc_skipped"] is True
    )
    assert "stain QC failed, scored anyway" in item.reason


def test_all_background_slide_is_a_row_with_a_reason(tmp_path):
    path = write_pyramid(tmp_path / "glass.tiff", np.full((1024, 1024, 3), 242, np.uint8), mpp=0.5)
    res = score_slides([path], tmp_path / "out", ScoreConfig(), detector=OneDetection())
    (item,) = res.items
    assert item.status == "skipped" and item.metrics["status"] == "qc_failed" and "no tissue" in item.reason
    row = _rows(tmp_path / "out")["glass"]
    assert row["status"] == "qc_failed" and "no tissue" in row["reason"] and row["banff_category"] == ""


def test_hematoxylin_only_fails_after_the_second_look(tmp_path):
    """The real IHC image with its DAB removed by colour deconvolution: the thumbnail shows no DAB,
    the second look at 1 um/px confirms it -> qc_failed "hematoxylin only"."""
    from skimage.color import hed2rgb, rgb2hed
    from skimage.data import immunohistochemistry

    hed = rgb2hed(immunohistochemistry())
    hed[..., 2] = 0
    h = (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)
    canvas = np.full((1536, 1536, 3), 240, np.uint8)
    canvas[256:768, 256:768] = h
    canvas[768:1280, 768:1280] = h[::-1]
    path = write_pyramid(tmp_path / "honly.tiff", canvas, mpp=0.5)
    result = score_slide(path, OneDetection(), ScoreConfig())
    s = result.summary
    assert s["status"] == "qc_failed" and "hematoxylin only" in s["reason"] and s["banff_category"] is None
    assert "tissue tiles at 1.0 um/px" in s["stain_qc"]["look"] and len(result.boxes) == 0


def test_options_checked_before_any_work(small_slide, tmp_path):
    from medseg.errors import InputError

    path, _ann, _s = small_slide
    for bad, match in (({"min_ptcs": 0}, "--min-ptcs"), ({"reader": "bioformats"}, "--reader")):
        with pytest.raises(InputError, match=match):
            score_slides([path], tmp_path / "o", ScoreConfig(**bad), detector=OneDetection())
    assert not (tmp_path / "o").exists()


def test_report_shows_qc_verdict_flags_and_thumbnail(tmp_path):
    """Blur and pen flags reach the HTML report with the thumbnail (rows as score_slides makes them)."""
    from PIL import Image

    from medseg.pathology.report import write_batch_report

    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "a" / "overlay.png")
    flags = (
        "out of focus: 35 % of tissue tiles look blurred; ink or pen marks on 2.0 % of the tissue+ink area"
    )
    row = {
        "slide": "a",
        "status": "qc_failed",
        "reason": "stain QC failed: dark background",
        "stain_qc_status": "failed",
        "stain_qc_reasons": "dark background (median brightness 12/255)",
        "stain_qc_flags": flags,
        "stain_qc_summary": "stain QC FAILED (fluorescence): dark background (median brightness 12/255)",
        "tissue_area_mm2": 1.5,
    }
    html = (write_batch_report(tmp_path, [row])).read_text(encoding="utf-8")
    text = _no_images(html)
    assert "out of focus: 35 %" in text and "ink or pen marks" in text and "not scored (stain QC)" in text
    assert "stain QC FAILED (fluorescence)" in text and html.count("data:image/png;base64") >= 2
    assert "None" not in text
