"""Fixtures for the pathology tests: small synthetic slides written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.engine.weights import demo_weights_path
from medseg.pathology.detector import DEMO_WEIGHTS as DEMO_NAME

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "pathology"
DEMO_WEIGHTS = demo_weights_path(DEMO_NAME)
UNSEEN_SEED = 4242  # the demo weights were trained on seeds 1000-1005


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory) -> tuple[Path, Path, object]:
    """A 2048 x 1536 px synthetic slide at 0.5 um/px + its GeoJSON truth."""
    from medseg.synthetic.slides import SlideSpec, write_slide

    d = tmp_path_factory.mktemp("slides")
    path, ann = d / "small.tiff", d / "small.geojson"
    slide = write_slide(path, SlideSpec(width=2048, height=1536, seed=11, positive_fraction=0.4), geojson=ann)
    return path, ann, slide


@pytest.fixture(scope="session")
def demo_weights() -> Path:
    assert DEMO_WEIGHTS.is_file(), (
        "demo weights missing from medseg/weights: run scripts/make_sample_data_pathology.py"
    )
    return DEMO_WEIGHTS


@pytest.fixture(scope="session")
def border_slide(tmp_path_factory) -> tuple[Path, list[tuple[int, int]]]:
    """C4d+ PTCs placed on tile borders of the default grid (tile 1024, overlap 160 -> stride 864:
    tile 0 spans [0, 1024), tile 1 [864, 1888)): on both edges of the overlap, inside it, at a
    four-tile corner; plus one C4d- PTC and one PTC far from any border."""
    from medseg.synthetic.slides import PTC_NEG, PTC_POS, SlideSpec, SyntheticSlide, write_slide

    spec = SlideSpec(width=2400, height=2400, seed=5, tissue_box=(0, 0, 2400, 2400), tissue_fraction=1.0)
    synth = SyntheticSlide(spec)
    sites = [(864, 400), (1024, 600), (944, 800), (1024, 1024), (864, 864), (1700, 1900)]
    synth.set_objects(
        [[PTC_POS, x, y, 16, 14, 0.3, 4, 0] for x, y in sites] + [[PTC_NEG, 300, 300, 15, 15, 0, 2.5, 0]]
    )
    path = tmp_path_factory.mktemp("border") / "border.tiff"
    write_slide(path, synth)
    return path, sites
