"""Figures shared by reports (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported lazily, once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig, *, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def bland_altman_figure(
    series: Sequence[tuple[str, np.ndarray, np.ndarray]], *, quantity: str, unit: str = ""
):
    """Bland-Altman panels, one per (label, measured, reference) triple.

    x = mean of the two measurements, y = measured - reference; lines at the bias and the
    95 % limits of agreement (bias +- 1.96 SD).
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, len(series), figsize=(5.2 * len(series), 4.2), squeeze=False)
    for ax, (label, measured, reference) in zip(axes[0], series):
        measured, reference = np.asarray(measured, float), np.asarray(reference, float)
        mean, diff = (measured + reference) / 2, measured - reference
        ax.scatter(mean, diff, s=28, color="#2a6f97", edgecolor="k", linewidth=0.4, zorder=3)
        bias = float(np.mean(diff)) if diff.size else float("nan")
        sd = float(np.std(diff, ddof=1)) if diff.size > 1 else float("nan")
        ax.axhline(bias, color="#c0392b", lw=1.5, label=f"bias {bias:+.2f}")
        ax.axhline(0, color="0.6", lw=0.8, ls=":")
        if np.isfinite(sd):
            for v, name in ((bias - 1.96 * sd, "-1.96 SD"), (bias + 1.96 * sd, "+1.96 SD")):
                ax.axhline(v, color="#c0392b", lw=1, ls="--")
                ax.annotate(
                    f"{name}: {v:+.2f}",
                    (1.0, v),
                    xycoords=("axes fraction", "data"),
                    ha="right",
                    va="bottom",
                    fontsize=8,
                    color="#c0392b",
                )
        ax.set_title(label)
        ax.set_xlabel(f"mean of both {quantity}{f' ({unit})' if unit else ''}")
        ax.set_ylabel(f"difference {quantity}{f' ({unit})' if unit else ''}")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
