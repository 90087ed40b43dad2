"""Per-cell measurement table (``NAME_cells.csv``): one row per instance, skimage regionprops."""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np

CSV_COLUMNS = [
    "page",
    "label",
    "area",
    "centroid_y",
    "centroid_x",
    "perimeter",
    "eccentricity",
    "mean_intensity",
]


def cell_table(labels: np.ndarray, intensity: np.ndarray, page: int = 0) -> list[dict[str, Any]]:
    """Per-cell measurements (skimage regionprops); intensity is the raw (gray) plane."""
    from skimage.measure import regionprops

    rows = []
    for r in regionprops(labels, intensity_image=intensity):
        cy, cx = r.centroid
        rows.append(
            {
                "page": page,
                "label": int(r.label),
                "area": int(r.area),
                "centroid_y": round(float(cy), 2),
                "centroid_x": round(float(cx), 2),
                "perimeter": round(float(r.perimeter), 2),
                "eccentricity": round(float(r.eccentricity), 4),
                "mean_intensity": round(float(r.intensity_mean), 4),
            }
        )
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
