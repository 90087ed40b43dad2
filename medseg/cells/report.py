"""HTML QA report for a cells-segment batch (built with medseg.reports.Report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.reports import Report
from medseg.results import FAILED, RunResult


def _number(value: object) -> object:
    return "-" if value is None else value


def segmentation_report(
    result: RunResult, thumbs: list[tuple[str, np.ndarray, int]], areas: list[int]
) -> Report:
    """Batch table, failures, overlays of the first images and the cell-area distribution."""
    from medseg.reports.plots import pyplot

    plt = pyplot()
    s = result.summary
    notice = (
        "Demo weights (see their training data in the summary) - research use, not for clinical use."
        if s["demo_weights"]
        else f"Weights: {s['weights']} ({s.get('training_data') or 'no training description'})"
    )
    subtitle = f"{s['segmented']} images segmented, {s['failed']} failed, {s['total_cells']} cells"
    if s["kept_from_earlier_run"]:
        subtitle += f" ({s['kept_from_earlier_run']} images kept from an earlier run)"
    report = Report(
        "Cell segmentation QA", inputs=[i.name for i in result.items], subtitle=subtitle, notice=notice
    )
    model, settings = s["model"], s["settings"]
    inst = settings["instances"]
    report.add_text(
        "Method",
        (
            f"{model['arch']} (base {model['base_channels']} channels), overlap-tile inference with mirrored "
            f"borders, tile {settings['tile']}, device {s['device']} ({s.get('runtime', 'torch')}), "
            f"precision {s['amp']}"
            f"{', channels-last' if s['channels_last'] else ''}. Instances: threshold {inst['threshold']}, "
            f"watershed on the distance transform (h = {inst['h']} px) of components less solid than "
            f"{inst['solidity']}, min size {inst['min_size']} px."
            + "".join(
                f" Images of stain {stain}: weights {Path(w).name}."
                for stain, w in sorted((s.get("weights_by_stain") or {}).items())
            )
        ),
    )
    report.add_table(
        "Images",
        [
            {
                "image": Path(i.name).name,
                "status": i.status,
                "pages": i.metrics.get("pages", "-"),
                "size": f"{i.metrics['height']}x{i.metrics['width']}" if "height" in i.metrics else "-",
                "type": f"{i.metrics['dtype']} {i.metrics['color']}" if "dtype" in i.metrics else "-",
                "weights": _weights_cell(i.metrics.get("weights")),
                "cells": _number(i.metrics.get("cells")),
                "median area (px)": _number(i.metrics.get("median_area")),
                "seconds": _number(i.metrics.get("seconds")),
            }
            for i in result.items
            if i.status != FAILED
        ],
    )
    if result.failed:
        report.add_table("Failed inputs", [{"image": i.name, "reason": i.reason} for i in result.failed])
    for name, thumb, cells in thumbs:
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.imshow(thumb)
        ax.set_axis_off()
        report.add_figure(f"Overlay: {name}", fig, caption=f"{cells} cells (outlines)")
    if areas:
        values = np.asarray(areas, float)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(values, bins=40, color="#2a6f97")
        ax.set_xlabel("cell area (px)")
        ax.set_ylabel("cells")
        report.add_figure(
            "Cell areas",
            fig,
            caption=f"{values.size} cells segmented in this run, median {np.median(values):.0f} px",
        )
    return report


def _weights_cell(weights: str | list[str] | None) -> str:
    """The weights file name(s) that segmented an image (a list for a stack)."""
    if not weights:
        return "-"
    return weights if isinstance(weights, str) else ", ".join(sorted(set(weights)))
