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
    """Per-cell measurements; intensity is the raw (gray) plane. Area, centroid, mean intensity and
    eccentricity come from per-label sums (one pass over the image: regionprops' per-cell moments took
    55 of 64 ms on a 512^2 H&E tile with 174 cells); the perimeter from skimage regionprops, as before.
    Equal to regionprops' values (tested)."""
    from skimage.measure import regionprops

    lab = labels.ravel().astype(np.int64)
    n = int(lab.max(initial=0)) + 1
    rr, cc = np.indices(labels.shape, dtype=np.float64)
    rr, cc = rr.ravel(), cc.ravel()

    def per_label(weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(lab, weights=weights, minlength=n)

    area = per_label()
    safe = np.maximum(area, 1)
    cy, cx = per_label(rr) / safe, per_label(cc) / safe
    # second central moments per label (the covariance of the pixel coordinates)
    var_r = per_label(rr * rr) / safe - cy**2
    var_c = per_label(cc * cc) / safe - cx**2
    cov = per_label(rr * cc) / safe - cy * cx
    half_trace, root = (var_r + var_c) / 2, np.sqrt(((var_r - var_c) / 2) ** 2 + cov**2)
    big, small = half_trace + root, np.maximum(half_trace - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.where(big > 0, np.sqrt(np.clip(1 - small / big, 0.0, 1.0)), 0.0)
    mean = per_label(intensity.ravel().astype(np.float64)) / safe
    rows = []
    for r in regionprops(labels):
        k = int(r.label)
        rows.append(
            {
                "page": page,
                "label": k,
                "area": int(area[k]),
                "centroid_y": round(float(cy[k]), 2),
                "centroid_x": round(float(cx[k]), 2),
                "perimeter": round(float(r.perimeter), 2),
                "eccentricity": round(float(ecc[k]), 4),
                "mean_intensity": round(float(mean[k]), 4),
            }
        )
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
