"""Slide opening, tissue detection, the tile grid and its ownership rule, feasibility filtering."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.pathology.feasibility import FeasibilityHeuristic, always_feasible, load_hook
from medseg.pathology.slide import detect_tissue, open_slide, read_downsampled
from medseg.pathology.tiling import TileGrid, make_grid, plan_slide_tiles, read_ahead, read_tile
from medseg.synthetic.slides import SlideSpec, write_slide


def test_open_reads_mpp_and_override(small_slide):
    path, _a, _s = small_slide
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5) and s.mpp_source == "metadata"
    with open_slide(path, slide_mpp=0.25) as s:
        assert s.mpp == 0.25 and s.mpp_source == "--slide-mpp"


@pytest.mark.parametrize(
    "content, message",
    [(None, "slide not found"), (b"hello", "not a slide"), (b"II*\x00\x08\x00\x00\x00\x01\x00", "TIFF file")],
)
def test_bad_inputs_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "x.tiff"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        open_slide(path)
    assert "\n" not in str(info.value)


def test_missing_mpp_asks_for_slide_mpp(tmp_path):
    path = tmp_path / "nompp.tiff"
    write_slide(path, SlideSpec(width=1024, height=1024, seed=2), mpp_metadata=False)
    with pytest.raises(InputError, match="--slide-mpp"):
        open_slide(path)
    with open_slide(path, slide_mpp=0.5) as s:
        assert s.mpp == 0.5


def test_tissue_detection_on_low_resolution(small_slide):
    path, _a, synth = small_slide
    with open_slide(path) as s:
        tissue = detect_tissue(s)
    assert tissue.downsample >= 16
    x0, y0, x1, y1 = synth.tissue_box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert tissue.fraction(cx - 100, cy - 100, cx + 100, cy + 100) > 0.95  # centre of the tissue blob
    assert tissue.fraction(0, 0, 60, 60) == 0.0  # glass in the corner
    assert 0.3 < tissue.area_mm2(0.5) / ((x1 - x0) * (y1 - y0) * 0.25e-6) < 0.9


def test_no_tissue_is_an_error(tmp_path):
    path = tmp_path / "blank.tiff"
    write_slide(path, SlideSpec(width=1024, height=1024, seed=1, tissue_box=(5000, 5000, 6000, 6000)))
    with open_slide(path) as s, pytest.raises(InputError, match="no tissue"):
        detect_tissue(s)


def test_every_point_has_exactly_one_owner_whose_tile_contains_it_with_margin():
    grid = TileGrid(0.5, 0.5, tile=256, overlap=64, width=1000, height=700)
    xs = np.arange(0, 1000, 3.0)
    _r, col = grid.owner(xs, np.zeros_like(xs))
    starts = col * grid.stride
    interior = (xs >= 32) & (xs < grid.width - 32)
    # the owning tile holds the point at least overlap/2 px from its border (slide edges excepted)
    assert np.all(xs[interior] - starts[interior] >= 32)
    assert np.all(starts[interior] + 256 - xs[interior] >= 32)
    assert col.min() == 0 and col.max() == grid.n_cols - 1


def test_grid_at_coarser_target_uses_a_pyramid_level(tmp_path):
    path = tmp_path / "hires.tiff"
    write_slide(path, SlideSpec(width=4096, height=4096, mpp=0.25, seed=3))
    with open_slide(path) as s:
        grid = make_grid(s, target_mpp=1.0, tile=256, overlap=32)
        tiles = plan_slide_tiles(s, grid, detect_tissue(s))
        assert grid.scale == 4.0 and tiles[0].level == 1  # level 1 has downsample 4
        img = read_tile(s, tiles[0], 256)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8


def test_zero_size_tiles_rejected(small_slide):
    path, _a, _s = small_slide
    with open_slide(path) as s:
        with pytest.raises(InputError, match="tile"):
            make_grid(s, target_mpp=0.5, tile=0, overlap=0)
        with pytest.raises(InputError, match="overlap"):
            make_grid(s, target_mpp=0.5, tile=256, overlap=256)
        with pytest.raises(InputError, match="mpp"):
            make_grid(s, target_mpp=0, tile=256, overlap=0)


def test_read_ahead_keeps_order_bounds_memory_and_reports_errors():
    """Tiles come back in order through the engine prefetcher, a bounded number ahead of the
    consumer, with a failed read as that tile's exception (the others still come)."""
    import threading
    import time

    produced, consumed, ahead, lock = [0], [0], [0], threading.Lock()

    def reader(t):
        time.sleep(0.001)
        with lock:
            produced[0] += 1
            ahead[0] = max(ahead[0], produced[0] - consumed[0])
        if t == 7:
            raise InputError("boom")
        return np.full((2, 2, 3), t, np.uint8)

    got = []
    for t, item in read_ahead(range(40), reader, batch_size=3, workers=2, depth=2):
        got.append((t, item))
        time.sleep(0.002)  # a slow consumer: the readers must wait, not run ahead
        with lock:
            consumed[0] += 1
    assert [t for t, _ in got] == list(range(40))
    assert isinstance(got[7][1], InputError) and got[8][1][0, 0, 0] == 8
    # at most depth groups queued + one being read + the one being consumed
    assert ahead[0] <= (2 + 2) * 3, ahead[0]


def test_read_ahead_stops_reading_when_closed():
    import contextlib
    import time

    reads = []

    def reader(t):
        reads.append(t)
        time.sleep(0.001)
        return t

    stream = read_ahead(range(1000), reader, batch_size=4, workers=2, depth=2)
    with contextlib.closing(stream):
        for t, _ in stream:
            if t == 5:
                break
    n = len(reads)
    time.sleep(0.05)
    assert len(reads) == n < 40  # the reader thread is joined on close: no read after it


def test_one_prefetcher_and_one_meaning_per_tile_planner():
    """The pathology package has no reader pool of its own and no second ``plan_tiles``."""
    import medseg.pathology.tiling as tiling

    assert not hasattr(tiling, "stream_tiles") and not hasattr(tiling, "plan_tiles")


def test_feasibility_heuristic():
    rng = np.random.default_rng(0)
    glass = np.full((256, 256, 3), 243, np.uint8)
    tissue = np.clip(rng.normal(0, 25, (256, 256, 3)) + [200, 170, 205], 0, 255).astype(np.uint8)
    blurred = np.full((256, 256, 3), [200, 170, 205], np.uint8)
    mostly_glass = glass.copy()
    mostly_glass[:, :70] = tissue[:, :70]
    h = FeasibilityHeuristic()
    assert h(tissue) == (True, "ok")
    assert not h(glass)[0] and "background" in h(glass)[1]
    assert not h(mostly_glass)[0]
    assert not h(blurred)[0] and "focus" in h(blurred)[1]
    assert load_hook("none") is always_feasible
    assert (
        load_hook("medseg.pathology.feasibility:always_feasible").func is always_feasible
    )  # answers checked
    with pytest.raises(InputError):
        load_hook("no.such.module:f")


def test_read_downsampled_bounds_output(small_slide):
    path, _a, _s = small_slide
    with open_slide(path) as s:
        img, ds = read_downsampled(s, 16)
    assert ds == 16 and img.shape == (1536 // 16, 2048 // 16, 3)


def test_aperio_svs_is_read_through_openslide_with_its_mpp(tmp_path):
    """An Aperio SVS (MPP in the ImageDescription, not in resolution tags) opens with the aperio driver."""
    spec = SlideSpec(width=2048, height=1536, seed=11, positive_fraction=0.4, mpp=0.25)
    write_slide(tmp_path / "s.svs", spec, flavour="aperio")
    slide = open_slide(tmp_path / "s.svs")
    assert slide.vendor == "aperio" and slide.mpp_source == "metadata"
    assert abs(slide.mpp - 0.25) < 1e-3
    write_slide(tmp_path / "n.svs", spec, flavour="aperio", mpp_metadata=False)
    with pytest.raises(InputError, match="--slide-mpp"):
        open_slide(tmp_path / "n.svs")


def test_tissue_mask_drops_specks_below_the_minimum_area():
    """Small-object removal (skimage): a dust speck goes, a piece of tissue of the minimum size stays."""
    from medseg.pathology.slide import tissue_mask_from_rgb

    rgb = np.full((96, 96, 3), 245, np.uint8)
    rgb[10:40, 10:40] = (150, 100, 160)  # tissue
    rgb[70:72, 70:72] = (150, 100, 160)  # dust: a few mask pixels after smoothing
    mask = tissue_mask_from_rgb(rgb, min_area_px=30)
    assert mask[25, 25] and not mask[60:80, 60:80].any()
    assert tissue_mask_from_rgb(rgb, min_area_px=1)[60:80, 60:80].any()


def test_black_scanner_padding_is_not_tissue():
    """Outside the scanned area scanners write black; its optical density is the highest of all,
    but it is not tissue (it inflated tissue_area_mm2)."""
    from medseg.pathology.slide import tissue_mask_from_rgb

    rgb = np.full((120, 160, 3), 235, np.uint8)  # glass
    rgb[20:100, 20:80] = (200, 120, 160)  # stained tissue
    rgb[:, 120:] = 0  # padding band
    mask = tissue_mask_from_rgb(rgb)
    assert mask[30:90, 30:70].all()
    assert not mask[:, 125:].any()
