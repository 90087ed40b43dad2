"""HTML QA report of a slide-score batch (through :mod:`medseg.reports`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.pathology.labels import BANFF_CATEGORIES, COLORS, NEGATIVE, POSITIVE, category_key

log = logging.getLogger("medseg.pathology")

MAX_THUMBNAILS = 40


def distribution_figure(rows: list[dict]):
    """Percent-positive histogram with the Banff boundaries, and slides per category."""
    from medseg.reports.plots import pyplot

    plt = pyplot()
    ok = [r for r in rows if r.get("status") == "ok"]
    pct = np.array([float(r["percent_positive"]) for r in ok if r.get("percent_positive") not in (None, "")])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.hist(pct, bins=np.linspace(0, 100, 21), color="#8c510a", edgecolor="k")
    for x, lab in ((10, "10 %"), (50, "50 %")):
        a.axvline(x, color="#2a6f97", ls="--", lw=1)
        a.annotate(lab, (x, 1.0), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8)
    a.set_xlabel("C4d+ PTCs (% of PTCs)")
    a.set_ylabel("slides")
    a.set_xlim(0, 100)
    counts = [sum(category_key(r.get("banff_category")) == c for r in ok) for c in BANFF_CATEGORIES]
    b.bar(
        range(len(BANFF_CATEGORIES)),
        counts,
        color=["#f6e8c3", "#dfc27d", "#bf812d", "#8c510a", "#cccccc"],
        edgecolor="k",
    )
    b.set_xticks(
        range(len(BANFF_CATEGORIES)), [c if c.startswith("C4d") else "n/a" for c in BANFF_CATEGORIES]
    )
    b.set_ylabel("slides")
    b.set_title("Banff C4d category (IHC, paraffin)")
    fig.tight_layout()
    return fig


def _qc_text(r: dict, *, reasons: bool = True) -> str:
    """The stain-QC verdict of a row in words ("passed", "failed: ...", "skipped by --skip-stain-qc ...");
    without ``reasons`` for the slides table, whose "reason" column already says why."""
    status = r.get("stain_qc_status") or ""
    if not status:
        return ""
    text = status
    if str(r.get("stain_qc_skipped")).lower() == "true" and status != "passed":
        text += " (not blocking: --skip-stain-qc)"
    if reasons and r.get("stain_qc_reasons"):
        text += f": {r['stain_qc_reasons']}"
    if r.get("stain_qc_flags"):
        text += f"; flags: {r['stain_qc_flags']}"
    return text


def _table_row(r: dict) -> dict:
    """A batch row for the HTML table, in words (no None, no Python values)."""
    from medseg.pathology.score import slide_text

    ok = r.get("status") == "ok"
    pct = r.get("percent_positive")

    def num(key: str) -> str:
        value = r.get(key)
        return "" if value in (None, "") or not ok else str(value)

    return {
        "slide": r.get("slide", ""),
        "status": r.get("status", ""),
        "result": slide_text(r) if ok else "",
        "category": (r.get("banff_category") or "") if ok else "",
        "PTCs assessed": num("ptc_total"),
        "C4d+": num("c4d_pos"),
        "C4d-": num("c4d_neg"),
        "% C4d+": "" if pct in (None, "") or not ok else f"{float(pct):.1f}",
        "C4d positive (IHC)": {"true": "yes", "false": "no"}.get(str(r.get("c4d_positive_ihc")).lower(), "")
        if ok
        else "",
        "tissue mm²": "" if r.get("tissue_area_mm2") in (None, "") else r.get("tissue_area_mm2"),
        "feasible tissue mm²": num("feasible_area_mm2"),
        "tiles scored / read": f"{r.get('tiles_feasible')} / {r.get('tiles_read')}" if ok else "",
        "seconds": r.get("wall_s", "") if ok else "",
        "stain QC": _qc_text(r, reasons=False),
        "reason": r.get("reason") or "",
    }


def write_batch_report(out: str | Path, rows: list[dict]) -> Path:
    """``out/report.html``: table of slides, failures, score distribution, overlay thumbnails."""
    from medseg.reports import Report

    out = Path(out)
    report = Report(
        "C4d whole-slide scoring",
        inputs=[str(r.get("path", "")) for r in rows],
        subtitle="Peritubular capillary C4d (IHC, paraffin): Faster R-CNN detection, Banff category",
        notice="Research tool: detections and categories must be reviewed by a pathologist.",
    )
    report.add_table("Slides", [_table_row(r) for r in rows])
    failed = [r for r in rows if r.get("status") == "failed"]
    if failed:
        report.add_table("Failed slides", failed, ["slide", "path", "reason"])
    qc_failed = [r for r in rows if r.get("status") == "qc_failed"]
    if qc_failed:
        report.add_table(
            "Not scored: stain QC failed (not a brightfield DAB IHC, or no tissue)",
            [
                {"slide": r.get("slide", ""), "stain QC": _qc_text(r), "path": r.get("path", "")}
                for r in qc_failed
            ],
        )
    report.add_figure(
        "Score distribution",
        distribution_figure(rows),
        "C4d1 minimal < 10 %, C4d2 focal 10-50 %, C4d3 diffuse > 50 % of PTCs; "
        "any C4d+ PTC means C4d > 0 on IHC.",
    )
    shown = 0
    for r in rows:
        png = out / str(r.get("slide", "")) / "overlay.png"
        if r.get("status") not in ("ok", "qc_failed") or not png.is_file() or shown >= MAX_THUMBNAILS:
            continue
        qc = f" {r['stain_qc_summary']}." if r.get("stain_qc_summary") else ""
        if not qc and r.get("stain_qc_status"):  # rows kept from an earlier table (--resume)
            qc = f" Stain QC {_qc_text(r)}."
        if r.get("status") == "ok":
            title = f"{r['slide']}: {r.get('banff_category')}"
            caption = (
                f"{r.get('c4d_pos')} {POSITIVE} ({_colour(POSITIVE)}) and {r.get('c4d_neg')} {NEGATIVE} "
                f"({_colour(NEGATIVE)}) PTCs; green: tissue outline.{qc}"
            )
        else:
            title, caption = f"{r['slide']}: not scored (stain QC)", f"Thumbnail; green: tissue outline.{qc}"
        report.add_figure(title, png.read_bytes(), caption)
        shown += 1
    return report.write_html(out / "report.html")


def _colour(cls: str) -> str:
    return {(200, 90, 20): "orange", (40, 120, 220): "blue"}.get(tuple(COLORS[cls]), "coloured circles")
