"""QA reports shared by every pipeline: one HTML builder (self-contained) and a PDF variant."""

from __future__ import annotations

from medseg.reports.builder import Report
from medseg.reports.plots import bland_altman_figure, figure_png, pyplot

__all__ = ["Report", "bland_altman_figure", "figure_png", "pyplot"]
