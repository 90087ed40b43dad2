"""Whole-slide C4d scoring: tissue detection, tiling, Faster R-CNN PTC detection, Banff category.

Import-light on purpose (no torch here). Entry points, each taking paths + a typed config and
returning a :class:`medseg.results.RunResult` (training: the engine's ``TrainResult``):
``batch.score_slides`` (slide-score), ``prepare.prepare_dataset`` (slide-prepare),
``train.train_detector`` (slide-train, through ``medseg.engine.trainer.fit``) and
``evaluate.evaluate_results`` (slide-eval). The C4d label map, margins and categories live in
:mod:`medseg.pathology.labels`. See docs/pathology.md.
"""

from __future__ import annotations
