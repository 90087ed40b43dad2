"""HTML QA report of a slide-score batch (through :mod:`medseg.reports`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("medseg.pathology")

CATEGORIES = ["C4d0", "C4d1", "C4d2", "C4d3", "not assessable"]
MAX_THUMBNAILS = 40


def distribution_figure(rows: list[dict]):
    """Percent-positive histogram with the Banff boundaries, and slides per category."""
    from medseg.reports.plots import pyplot

    plt = pyplot()
    ok = [r for r in rows if r.get("status") in ("ok", "skipped (complete)")]
    pct = np.array([float(r["percent_positive"]) for r in ok if r.get("percent_positive") not in (None, "")])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.hist(pct, bins=np.linspace(0, 100, 21), color="#8c510a", edgecolor="k")
    for x, lab in ((10, "10 %"), (50, "50 %")):
        a.axvline(x, color="#2a6f97", ls="--", lw=1)
        a.annotate(lab, (x, 1.0), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8)
    a.set_xlabel("C4d+ PTCs (% of PTCs)")
    a.set_ylabel("slides")
    a.set_xlim(0, 100)
    counts = [sum(r.get("banff_category") == c for r in ok) for c in CATEGORIES]
    b.bar(range(len(CATEGORIES)), counts, color=["#f6e8c3", "#dfc27d", "#bf812d", "#8c510a", "#cccccc"], edgecolor="k")
    b.set_xticks(range(len(CATEGORIES)), ["C4d0", "C4d1", "C4d2", "C4d3", "n/a"])
    b.set_ylabel("slides")
    b.set_title("Banff C4d category (IHC, paraffin)")
    fig.tight_layout()
    return fig


def write_batch_report(out: str | Path, rows: list[dict]) -> Path:
    """``out/report.html``: table of slides, failures, score distribution, overlay thumbnails."""
    from medseg.reports import Report

    out = Path(out)
    report = Report("C4d whole-slide scoring", inputs=[str(r.get("path", "")) for r in rows],
                    subtitle="Peritubular capillary C4d (IHC, paraffin): Faster R-CNN detection, Banff category",
                    notice="Research tool: detections and categories must be reviewed by a pathologist.")
    cols = ["slide", "status", "banff_category", "c4d_positive_ihc", "percent_positive", "c4d_pos", "c4d_neg",
            "tissue_area_mm2", "tiles_feasible", "tiles_read", "wall_s", "reason"]
    report.add_table("Slides", rows, cols)
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        report.add_table("Failed slides", failed, ["slide", "path", "reason"])
    report.add_figure("Score distribution", distribution_figure(rows),
                      "C4d1 minimal < 10 %, C4d2 focal 10-50 %, C4d3 diffuse > 50 % of PTCs; "
                      "any C4d+ PTC means C4d > 0 on IHC.")
    shown = 0
    for r in rows:
        png = out / str(r.get("slide", "")) / "overlay.png"
        if r.get("status") == "failed" or not png.is_file() or shown >= MAX_THUMBNAILS:
            continue
        report.add_figure(f"{r['slide']}: {r.get('banff_category')}", png.read_bytes(),
                          f"{r.get('c4d_pos')} C4d+ (orange) / {r.get('c4d_neg')} C4d- (blue) PTCs; "
                          "green: tissue outline.")
        shown += 1
    return report.write_html(out / "report.html")
