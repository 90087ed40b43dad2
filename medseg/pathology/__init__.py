"""Whole-slide C4d scoring: tissue detection, tiling, Faster R-CNN PTC detection, Banff category.

Import-light on purpose (no torch here); see :mod:`medseg.pathology.score` for the entry points
``score_slides`` (batch) and ``score_slide`` (one slide), and docs/pathology.md.
"""

from __future__ import annotations
