"""QA report for brain-eval: summary and per-case tables, Dice/HD95 box plots, overlay slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medseg.brain.segment import REGIONS
from medseg.reports.plots import pyplot

_COLOURS = {"WT": "#f1c40f", "TC": "#e67e22", "ET": "#e74c3c"}


def boxplot_figure(rows: list[dict]):
    """Dice and HD95 per region across cases."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, metric, unit in ((axes[0], "dice", ""), (axes[1], "hd95", " (mm)")):
        data = [[r[f"{metric}_{g}"] for r in rows if np.isfinite(r[f"{metric}_{g}"])] for g in REGIONS]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(REGIONS) + 1), REGIONS)
        for i, vals in enumerate(data, start=1):
            ax.scatter(
                np.full(len(vals), i) + np.linspace(-0.08, 0.08, len(vals)), vals, s=12, color="k", zorder=3
            )
        ax.set_title(f"{'Dice' if metric == 'dice' else 'HD95'}{unit}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def overlay_figure(name: str, image: np.ndarray | None, pred: np.ndarray, truth: np.ndarray):
    """The slice with most tumour: ground truth (left) and prediction (right) over FLAIR."""
    from medseg.brain.segment import region_masks

    plt = pyplot()
    z = int(np.argmax((truth > 0).sum((1, 2)) + (pred > 0).sum((1, 2))))
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.6))
    for ax, seg, title in ((axes[0], truth, "ground truth"), (axes[1], pred, "prediction")):
        if image is not None:
            ax.imshow(image[z], cmap="gray")
        masks = region_masks(seg)
        for r in REGIONS:
            if masks[r][z].any():
                ax.contour(masks[r][z].astype(float), levels=[0.5], colors=_COLOURS[r], linewidths=1.0)
        ax.set_title(f"{name} z={z}: {title}", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    return fig


def write_eval_report(
    result: dict, out_dir: Path, *, inputs: list[str], overlays: list | None = None, max_overlays: int = 12
) -> dict[str, Path]:
    """report.html (+ metrics.json, metrics.csv) in ``out_dir``; failed cases are listed with their reason."""
    from medseg.brain.io import read_image
    from medseg.io.atomic import write_text
    from medseg.reports import Report
    from medseg.results import json_safe

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["cases"]
    cols = ["case"] + [f"{m}_{r}" for m in ("dice", "hd95") for r in REGIONS]
    rep = Report(
        "Brain tumour segmentation: evaluation",
        inputs=inputs,
        subtitle="Dice and HD95 (mm) for whole tumour (WT), tumour core (TC), enhancing tumour (ET)",
        notice="Research software, not for clinical use.",
    )
    summary_rows = [
        {"metric": k, **{s: v[s] for s in ("mean", "sd", "median", "n", "n_undefined")}}
        for k, v in result["summary"].items()
    ]
    rep.add_table("Summary", summary_rows, ["metric", "mean", "sd", "median", "n", "n_undefined"])
    rep.add_table("Per case", rows, cols)
    if result.get("failed"):
        rep.add_table("Cases not evaluated", result["failed"], ["case", "reason"])
    if rows:
        rep.add_figure("Distribution over cases", boxplot_figure(rows))
    for name, image_path, pred, truth in (overlays or [])[:max_overlays]:
        image = read_image(image_path)[0] if image_path is not None else None
        rep.add_figure(
            f"Overlay: {name}",
            overlay_figure(name, image, pred, truth),
            caption="Contours: WT yellow, TC orange, ET red.",
        )
    paths = {"html": rep.write_html(out_dir / "report.html")}
    paths["json"] = write_text(out_dir / "metrics.json", json.dumps(json_safe(result), indent=2) + "\n")

    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else str(value)

    csv = ",".join(cols) + "\n" + "".join(",".join(cell(r[c]) for c in cols) + "\n" for r in rows)
    paths["csv"] = write_text(out_dir / "metrics.csv", csv)
    return paths
