"""The per-cell table equals skimage regionprops' measurements (it computes most of them from per-label
sums for speed), on a real annotated DSB 2018 image with many cells."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from skimage.measure import regionprops

from medseg.cells.table import CSV_COLUMNS, cell_table, csv_text

MASKS = Path(__file__).resolve().parents[1] / "data" / "real" / "dsb2018_val" / "masks"


def test_table_equals_regionprops_on_real_labels():
    labels = tifffile.imread(sorted(MASKS.glob("*.tif"))[0]).astype(np.int32)
    intensity = np.random.default_rng(0).normal(100, 20, labels.shape).astype(np.float32)
    rows = cell_table(labels, intensity, page=2)
    props = regionprops(labels, intensity_image=intensity)
    assert len(rows) == len(props) > 10
    for row, p in zip(rows, props):
        assert row["label"] == p.label and row["page"] == 2 and row["area"] == p.area
        assert row["centroid_y"] == round(float(p.centroid[0]), 2)
        assert row["centroid_x"] == round(float(p.centroid[1]), 2)
        assert row["perimeter"] == round(float(p.perimeter), 2)
        assert abs(row["eccentricity"] - float(p.eccentricity)) <= 6e-5
        assert abs(row["mean_intensity"] - float(p.intensity_mean)) <= 6e-5


def test_empty_and_line_shaped_labels():
    assert cell_table(np.zeros((8, 8), np.int32), np.zeros((8, 8), np.float32)) == []
    labels = np.zeros((9, 9), np.int32)
    labels[4, 1:8] = 3  # a line: eccentricity 1
    labels[0, 0] = 5  # one pixel: eccentricity 0
    rows = {r["label"]: r for r in cell_table(labels, np.ones((9, 9), np.float32))}
    assert rows[3]["eccentricity"] == 1.0 and rows[5]["eccentricity"] == 0.0
    assert csv_text(list(rows.values())).splitlines()[0] == ",".join(CSV_COLUMNS)
