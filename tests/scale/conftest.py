"""Fixtures for the Ray tests: one local Ray runtime (num_cpus=2) per session, small synthetic
slides written once, and deterministic stand-in detectors that Ray can ship to its workers."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from medseg.pathology.labels import DEFAULT_MARGINS


@dataclass
class _Cfg:
    margins: dict = field(default_factory=lambda: dict(DEFAULT_MARGINS))


class ColourDetector:
    """Sees only the tile: a DAB-brown ring -> C4d+ box, a blue-ish dark ring -> none (deterministic,
    independent of the batch it runs in, so local and fused Ray batches must agree exactly)."""

    config = _Cfg()
    source = "colour-oracle"

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def predict(self, tiles, *, min_score=0.5):
        from scipy import ndimage as ndi

        if self.delay_s:
            time.sleep(self.delay_s * len(tiles))  # a model that costs time per tile
        out = []
        for t in tiles:
            t = t.astype(int)
            brown = (t[..., 0] - t[..., 2] > 60) & (t[..., 0] < 200)
            lab, _n = ndi.label(ndi.binary_closing(brown, iterations=2))
            boxes, scores = [], []
            for k, sl in enumerate(ndi.find_objects(lab)):
                if (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) < 30:
                    continue
                b = [sl[1].start - 50, sl[0].start - 50, sl[1].stop + 50, sl[0].stop + 50]
                boxes.append(np.clip(b, 0, [t.shape[1], t.shape[0], t.shape[1], t.shape[0]]))
                scores.append(0.6 + 0.3 * ((k * 7) % 10) / 10)
            boxes = np.array(boxes, float).reshape(-1, 4)
            scores = np.array(scores, float)
            keep = scores >= min_score
            out.append((boxes[keep], np.ones(int(keep.sum()), int), scores[keep]))
        return out


@pytest.fixture(scope="session")
def ray_runtime():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[ColourDetector.__module__])
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def slide_batch(tmp_path_factory) -> list[Path]:
    """4 small synthetic slides (1 to 6 tissue tiles at tile 1024) + 1 corrupt file."""
    from medseg.synthetic.slides import SlideSpec, write_slide

    d = tmp_path_factory.mktemp("ray_slides")
    specs = {
        "s1": SlideSpec(width=2048, height=1536, seed=21, positive_fraction=0.5),
        "s2": SlideSpec(width=1600, height=1200, seed=22, positive_fraction=0.1),
        "s3": SlideSpec(width=1024, height=1024, seed=23, positive_fraction=0.3),
        "s4": SlideSpec(width=2048, height=2048, seed=24, positive_fraction=0.0),
    }
    paths = []
    for name, spec in specs.items():
        write_slide(d / f"{name}.tiff", spec)
        paths.append(d / f"{name}.tiff")
    bad = d / "s5_corrupt.tiff"
    bad.write_bytes(paths[0].read_bytes()[:4000])  # truncated TIFF
    return [*paths, bad]
