"""QA report for brain-eval: summary and per-case tables (Dice, HD95, volumes), box plots, and per case
three orthogonal planes through the tumour with truth and prediction contours."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medseg.brain.segment import REGIONS
from medseg.reports.plots import pyplot

log = logging.getLogger("medseg.brain")

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


def tumour_planes(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) indices of the axial, coronal and sagittal planes through the tumour.

    Per axis, the plane holding the most whole tumour (truth and prediction together), so each plane
    cuts through the tumour even when it is irregular; the volume's centre when both are empty.
    """
    union = (truth > 0) | (pred > 0)
    if not union.any():
        return tuple(n // 2 for n in union.shape)  # type: ignore[return-value]
    return tuple(  # type: ignore[return-value]
        int(np.argmax(union.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3)
    )


def _plane(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D plane, rows top-to-bottom as a radiologist views it (superior up for coronal/sagittal)."""
    plane = np.take(volume, index, axis=axis)
    return plane[::-1] if axis != 0 else plane


def overlay_figure(
    name: str,
    image: np.ndarray | None,
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
):
    """Axial, coronal and sagittal planes through the tumour: truth (top) and prediction (bottom).

    Contours per region over FLAIR, pixels drawn at their physical aspect ratio (``spacing`` z, y, x).
    """
    from medseg.brain.segment import region_masks

    plt = pyplot()
    centre = tumour_planes(pred, truth)
    sz, sy, sx = spacing
    views = (("axial", 0, sy / sx), ("coronal", 1, sz / sx), ("sagittal", 2, sz / sy))
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.6))
    for row, (seg, title) in enumerate(((truth, "truth"), (pred, "prediction"))):
        masks = region_masks(seg)
        for col, (view, axis, aspect) in enumerate(views):
            ax = axes[row, col]
            if image is not None:
                ax.imshow(
                    _plane(image, axis, centre[axis]), cmap="gray", aspect=aspect, interpolation="nearest"
                )
            else:
                ax.imshow(np.zeros_like(_plane(seg, axis, centre[axis]), float), cmap="gray", aspect=aspect)
            for r in REGIONS:
                m = _plane(masks[r], axis, centre[axis])
                if m.any():
                    ax.contour(m.astype(float), levels=[0.5], colors=_COLOURS[r], linewidths=1.0)
            ax.set_title(f"{title}: {view} {'zyx'[axis]}={centre[axis]}", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{name} (WT yellow, TC orange, ET red)", fontsize=9)
    fig.tight_layout()
    return fig


def _background(name: str, image_path: Path | None, geo, warnings: list[str] | None) -> np.ndarray | None:
    """The FLAIR under a case's contours on the labels' grid ``geo``, or None (contours only).

    The FLAIR is only the figure's background: one that cannot be read, or lies on another grid, costs
    the case its background (with a warning), not the whole report.
    """
    from medseg.brain.io import error_reason, read_image
    from medseg.brain.orientation import to_training_orientation
    from medseg.errors import InputError

    if image_path is None or geo is None:
        return None
    try:
        image, igeo = read_image(image_path)
    except (InputError, OSError) as exc:
        msg = f"{name}: FLAIR not drawn under the contours ({error_reason(exc)})"
        log.warning(msg)
        if warnings is not None:
            warnings.append(msg)
        return None
    if igeo.same_grid(geo) == "":
        return image
    # the same voxels stored in another order (e.g. RAS vs LPS): reordered; another grid: contours only
    img, ig, _ = to_training_orientation(image[None], igeo)
    _, lg, to_labels = to_training_orientation(np.zeros((1, *geo.shape), np.uint8), geo)
    if ig.same_grid(lg) == "":
        return to_labels(img[0])
    log.info("%s: FLAIR on another grid than the labels (%s): contours only", name, igeo.same_grid(geo))
    return None


def write_eval_report(
    result: dict,
    out_dir: Path,
    *,
    inputs: list[str],
    overlays: list | None = None,
    max_overlays: int = 12,
    warnings: list[str] | None = None,
) -> dict[str, Path]:
    """report.html (+ metrics.json, metrics.csv) in ``out_dir``; failed cases are listed with their reason.

    ``overlays``: (case, FLAIR path or None, prediction, truth, labels' Geometry) per case drawn;
    ``warnings`` collects what could not be drawn.
    """
    from medseg.io.atomic import write_text
    from medseg.reports import Report
    from medseg.results import json_safe

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["cases"]
    cols = (
        ["case"]
        + [f"{m}_{r}" for m in ("dice", "hd95", "sensitivity", "specificity") for r in REGIONS]
        + [f"{w}_{r}_ml" for r in REGIONS for w in ("pred", "truth")]
    )
    rep = Report(
        "Brain tumour segmentation: evaluation",
        inputs=inputs,
        subtitle="Dice, HD95 (mm), sensitivity, specificity and volumes (mL, predicted and true) for whole "
        "tumour (WT), tumour core (TC), enhancing tumour (ET). A region empty in exactly one of prediction "
        "and truth scores Dice 0 and HD95 = the grid diagonal (BraTS: 373.13 mm).",
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
    for name, image_path, pred, truth, geo in (overlays or [])[:max_overlays]:
        image = _background(name, image_path, geo, warnings)
        rep.add_figure(
            f"Overlay: {name}",
            overlay_figure(name, image, pred, truth, geo.spacing if geo else (1.0, 1.0, 1.0)),
            caption="Axial, coronal and sagittal planes through the tumour over FLAIR; top: truth, "
            "bottom: prediction. Contours: WT yellow, TC orange, ET red.",
        )
    paths = {"html": rep.write_html(out_dir / "report.html")}
    paths["json"] = write_text(out_dir / "metrics.json", json.dumps(json_safe(result), indent=2) + "\n")

    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and not np.isfinite(value)) else str(value)

    csv = ",".join(cols) + "\n" + "".join(",".join(cell(r[c]) for c in cols) + "\n" for r in rows)
    paths["csv"] = write_text(out_dir / "metrics.csv", csv)
    return paths
