"""The C4d vocabulary, defined once: class names and label ids, box margins, colours, Banff categories.

Every module (detector, training data, scoring, evaluation, report, synthetic slides, CLI) imports
these, so a label id, a margin or a category name cannot drift between them. Import-light on
purpose (no NumPy): the CLI reads the margins for its option defaults.
"""

from __future__ import annotations

from collections.abc import Mapping

POSITIVE, NEGATIVE = "C4d+", "C4d-"
LABELS: dict[str, int] = {POSITIVE: 1, NEGATIVE: 2}  # detector class ids; 0 is the background
CLASS_NAMES: dict[int, str] = {v: k for k, v in LABELS.items()}
CLASSES: tuple[str, ...] = tuple(LABELS)
NUM_CLASSES = len(LABELS) + 1  # with the background

# Mask enlargement before a box is taken (target-resolution px), Kim et al. 2019: 50 px C4d+, 40 px C4d-.
DEFAULT_MARGINS: dict[str, int] = {POSITIVE: 50, NEGATIVE: 40}

COLORS: dict[str, tuple[int, int, int]] = {POSITIVE: (200, 90, 20), NEGATIVE: (40, 120, 220)}  # orange, blue

# Banff C4d categories for IHC on paraffin (percent of PTCs that are C4d+), and their names in words.
BANFF_CATEGORIES: tuple[str, ...] = ("C4d0", "C4d1", "C4d2", "C4d3", "not assessable")
BANFF_WORDS: dict[str, str] = {
    "C4d0": "negative",
    "C4d1": "minimal, under 10 %",
    "C4d2": "focal, 10-50 %",
    "C4d3": "diffuse, over 50 %",
    "not assessable": "no PTC found",
}

# PTCs a slide needs for a Banff category (--min-ptcs): the smallest N for which a slide without a C4d+
# PTC is below the 10 % C4d2 cut-off at 95 % one-sided confidence, 1 - 0.05 ** (1 / N) < 0.10 (N >= 29),
# rounded up; see docs/pathology.md.
DEFAULT_MIN_PTCS = 30

_ALIASES = {
    POSITIVE: ("c4d+", "c4d positive", "positive", "ptc+", "c4d_pos", "pos"),
    NEGATIVE: ("c4d-", "c4d negative", "negative", "ptc-", "c4d_neg", "neg"),
}


def class_of(name: str | None) -> str | None:
    """QuPath classification name -> ``C4d+`` / ``C4d-`` (None for anything else)."""
    if not name:
        return None
    key = str(name).strip().lower().replace("\u2212", "-")
    return next((cls for cls, aliases in _ALIASES.items() if key in aliases), None)


def counts_text(counts: Mapping[str, int], noun: str = "PTCs") -> str:
    """``{"C4d+": 52, "C4d-": 40}`` -> ``"52 C4d+ and 40 C4d- PTCs"`` (for messages, never a dict repr)."""
    return " and ".join(f"{int(counts.get(c, 0))} {c}" for c in CLASSES) + (f" {noun}" if noun else "")


def margins_text(margins: Mapping[str, float]) -> str:
    """``{"C4d+": 50, "C4d-": 40}`` -> ``"C4d+ 50 px, C4d- 40 px"``."""
    return ", ".join(f"{c} {margins[c]:g} px" for c in CLASSES if c in margins)


def category_key(category: str | None) -> str:
    """``"not assessable (3 PTCs)"`` -> ``"not assessable"``: the entry of :data:`BANFF_CATEGORIES`."""
    text = str(category or "")
    return "not assessable" if text.startswith("not assessable") else text


def category_text(category: str, percent: float | None) -> str:
    """``("C4d2", 37.5)`` -> ``"C4d2 (focal, 10-50 %): 37.5 % of PTCs C4d+"``."""
    if category.startswith("not assessable (") and percent is not None and percent == percent:
        return f"{category}: too few PTCs for a Banff category"
    words = BANFF_WORDS.get(category, "")
    text = f"{category} ({words})" if words and category != "not assessable" else category
    if percent is None or percent != percent:  # None or NaN
        return f"{text}: no PTC found" if category != "not assessable" else f"{text} (no PTC found)"
    return f"{text}: {percent:.1f} % of PTCs C4d+"
