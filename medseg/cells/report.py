"""HTML QA report for a cells-segment batch (built with medseg.reports.Report)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.reports import Report

MAX_FIGURES = 6
MAX_EDGE = 768


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / MAX_EDGE)))
    return rgb[::step, ::step]


def segmentation_report(summary: dict[str, Any], results: list[dict[str, Any]], *, demo: bool) -> Report:
    """Batch table, failures, overlays of the first images and the cell-area distribution."""
    from medseg.reports.plots import pyplot

    plt = pyplot()
    notice = ("Demo weights trained on synthetic images only - not for clinical use." if demo else
              f"Weights: {summary['weights']} ({summary.get('training_data') or 'no training description'})")
    report = Report("Cell segmentation QA", inputs=[r["image"] for r in results] + [f["image"] for f in summary["failures"]],
                    subtitle=f"{summary['n_ok']} images segmented, {summary['n_failed']} failed, "
                             f"{summary['total_cells']} cells", notice=notice)
    model = summary["model"]
    report.add_text("Method", (
        f"{model['arch']} (base {model['base_channels']} channels), overlap-tile inference with mirrored "
        f"borders, tile {summary['config']['tile']}, device {summary['device']}, AMP {summary['amp']}. "
        f"Instances: threshold {summary['config']['instances']['threshold']}, watershed on the distance "
        f"transform (h = {summary['config']['instances']['h']} px), min size "
        f"{summary['config']['instances']['min_size']} px."))
    report.add_table("Images", [
        {"image": Path(r["image"]).name, "pages": r["pages"], "size": f"{r['height']}x{r['width']}",
         "type": f"{r['dtype']} {r['color']}", "cells": r["cells"], "median area (px)": r["median_area"],
         "seconds": r["seconds"]} for r in results])
    if summary["failures"]:
        report.add_table("Failed inputs", [{"image": f["image"], "reason": f["error"]} for f in summary["failures"]])
    for r in results[:MAX_FIGURES]:
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(_thumbnail(r["_overlay"]))
        ax.set_axis_off()
        report.add_figure(f"Overlay: {Path(r['image']).name}", fig, caption=f"{r['cells']} cells (outlines)")
    areas = np.concatenate([np.asarray(r["_areas"], float) for r in results]) if results else np.zeros(0)
    if areas.size:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(areas, bins=40, color="#2a6f97")
        ax.set_xlabel("cell area (px)")
        ax.set_ylabel("cells")
        report.add_figure("Cell areas", fig, caption=f"{areas.size} cells, median {np.median(areas):.0f} px")
    return report
