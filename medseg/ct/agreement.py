"""Emphysema-index agreement across a ct-report cohort, measured the way the anchors report it.

The KSIIM challenge and Jin & Kim 2019 judge a kernel converter by how well the emphysema index of
the converted series agrees with the reference kernel's: the Bland-Altman bias and 95 % limits of
agreement (bias +- 1.96 SD of the differences) and the intraclass correlation ICC(A,1) (two-way,
absolute agreement, single measures; Shrout & Fleiss ICC(2,1)). Both for LAA-950 (percentage
points) and Perc15 (HU), original vs reference and converted vs reference (and, where ct-report ran
it, the sharpness-conditioned converter vs reference). Written into the QA
JSON (``summary.bland_altman_laa950``/``bland_altman_perc15``), the HTML/PDF report and
``ct_qa_agreement.csv`` (one row per quantity and comparison).
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from medseg.ct.metrics import bland_altman

QUANTITIES = {"laa950": ("LAA-950", "percentage points"), "perc15": ("Perc15", "HU")}
COMPARISONS = ("original", "converted")
AGREEMENT_COLUMNS = ["quantity", "unit", "comparison", "n", "bias", "sd", "loa_low", "loa_high", "icc"]


def finite_mean(values: np.ndarray) -> float:
    """Mean of the finite values; NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def finite_sd(values: np.ndarray) -> float:
    """Sample SD (n - 1) of the finite values; NaN below two."""
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if finite.size > 1 else float("nan")


def agreement_summary(
    values: Any, comparisons: tuple[str, ...] = COMPARISONS
) -> dict[str, dict[str, dict[str, float]]]:
    """``bland_altman_<quantity>`` -> comparison -> Bland-Altman + ICC; ``values(name)`` gives the
    cohort's array of one per-exam metric (e.g. ``laa950_converted``); ``comparisons`` may add
    ``conditioned`` (ct-report's second converter, :mod:`medseg.ct.report_conditioned`)."""
    return {
        f"bland_altman_{q}": {
            f"{c}_vs_reference": bland_altman(values(f"{q}_{c}"), values(f"{q}_reference")).to_dict()
            for c in comparisons
        }
        for q in QUANTITIES
    }


def agreement_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per quantity and comparison (for the report table and the CSV)."""
    rows = []
    for q, (label, unit) in QUANTITIES.items():
        for name, vals in summary.get(f"bland_altman_{q}", {}).items():
            rows.append({"quantity": label, "unit": unit, "comparison": name.replace("_", " "), **vals})
    return rows


def agreement_csv(summary: dict[str, Any]) -> str:
    """``ct_qa_agreement.csv``: empty cells where a value cannot be computed (one exam: no SD, no ICC)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=AGREEMENT_COLUMNS)
    writer.writeheader()
    for row in agreement_rows(summary):
        writer.writerow(
            {
                k: (f"{v:.4f}" if math.isfinite(v) else "") if isinstance(v, float) else v
                for k, v in row.items()
                if k in AGREEMENT_COLUMNS
            }
        )
    return buf.getvalue()


def agreement_line(label: str, vals: dict[str, Any], fmt: str, unit: str = "") -> str:
    """'LABEL: bias +0.28 points, 95 % limits of agreement +0.12 to +0.45, ICC(A,1) 0.990' (parts
    that exist; n/a for a bias that cannot be computed)."""

    def num(v: Any) -> str:
        return format(v, fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "n/a"

    bias = num(vals.get("bias"))
    text = f"{label}: bias {bias}{unit if bias != 'n/a' else ''}"
    sd = vals.get("sd")
    if isinstance(sd, (int, float)) and np.isfinite(sd):
        text += f", 95 % limits of agreement {num(vals.get('loa_low'))} to {num(vals.get('loa_high'))}"
    icc = vals.get("icc")
    if isinstance(icc, (int, float)) and np.isfinite(icc):
        text += f", ICC(A,1) {icc:.3f}"
    return text
