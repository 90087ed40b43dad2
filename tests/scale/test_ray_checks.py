"""The Ray runner refuses what the local runner refuses, before it starts Ray: a --mpp that is not
the detector's training resolution (every PTC the wrong size in pixels)."""

from __future__ import annotations

import pytest

from medseg.errors import InputError
from medseg.pathology.score import ScoreConfig

pytest.importorskip("ray")


def test_ray_refuses_another_mpp_than_the_detector_was_trained_at(slide_batch, tmp_path, monkeypatch):
    import medseg.scale as scale
    from medseg.scale.slides import RayConfig, score_slides_ray

    def no_ray(*_a, **_k):  # the check must come first: Ray is never started
        raise AssertionError("Ray was started before the --mpp check")

    monkeypatch.setattr(scale, "connect", no_ray)
    with pytest.raises(InputError, match="not the resolution the detector was trained at"):
        score_slides_ray(
            slide_batch[:1], tmp_path / "out", ScoreConfig(target_mpp=1.0), RayConfig(), report=False
        )
    assert not (tmp_path / "out" / "scores.csv").exists()
