"""ct-report's second converter: the sharpness-conditioned one, next to the direction's own weights.

Why: issue 20 asks how the one-file converter (:mod:`medseg.ct.conditioned`) compares with the
per-direction weights on the anchors' emphysema measures (ICC and 95 % limits of agreement of
LAA-950 and Perc15). So each exam is converted a second time, as ``ct-convert --from X --to Y``
would convert it with the conditioned net: the source sharpness measured from the exam's source
series, the target the measured source times the table's target/source ratio
(:func:`medseg.ct.models.plan_sharpness`). Its numbers go into the exam's metrics with the suffix
``_conditioned`` and into the agreement as the comparison ``conditioned vs reference``.

The row is added when the conditioned weights are found and both kernels are in the sharpness table
(measured or nominal, not an interpolated guess); ``ReportConfig.conditioned`` False leaves it out,
True makes its absence an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseg.errors import InputError, ModelError

log = logging.getLogger("medseg.ct")

PREFIX = "conditioned"  # metric suffix and agreement comparison name
METRICS = [
    "rmse_conditioned_hu",
    "rmse_reduction_conditioned_pct",
    "laa950_conditioned",
    "perc15_conditioned",
    "sharpness_plan_source",
    "sharpness_plan_target",
]


@dataclass
class ConditionedRow:
    """The conditioned converter as ct-report runs it for one cohort (picklable for Ray workers)."""

    entry: Any  # medseg.ct.models.ConditionedEntry
    source: str
    target: str
    vendor: str | None
    device: str = "auto"
    amp: str | bool | None = "auto"

    def describe(self) -> dict[str, Any]:
        lo, hi = self.entry.sharpness_range
        return {
            "model": "sharpness-conditioned",
            "weights": str(self.entry.path),
            "demo_weights": self.entry.demo,
            "sharpness_range": [lo, hi],
            "target_from": "table ratio x measured source (as ct-convert --from/--to)",
        }

    def convert(self, original: np.ndarray, spacing_zyx, batch_size: int | None = None):
        """(converted volume, SharpnessPlan) for one exam; InputError when the planned target lies
        outside the sharpness range the weights were trained on."""
        from medseg.ct.convert import convert_volume
        from medseg.ct.fingerprint import kernel_fingerprint
        from medseg.ct.models import load_conditioned, plan_sharpness, slice_predictor

        fp = kernel_fingerprint(original, tuple(spacing_zyx[1:]))
        if not (fp.sharpness > 0):
            raise InputError("the source series' sharpness could not be measured (no body or soft tissue)")
        plan = plan_sharpness(self.entry, fp, source=self.source, target=self.target, vendor=self.vendor)
        net = load_conditioned(self.entry, plan.source, plan.target)
        predictor = slice_predictor(net, device=self.device, amp=self.amp)
        return convert_volume(predictor, original, batch_size=batch_size), plan


def conditioned_row(
    choice: bool | None, source, target, *, models_dirs=(), device: str = "auto", amp="auto"
) -> ConditionedRow | None:
    """The conditioned converter for the report's extra row, or None when it cannot run here.

    ``choice`` None: add it when possible; False: never; True: an error (ModelError) when it cannot run.
    ``source``/``target`` are :class:`medseg.ct.kernels.KernelSpec` (as ``kernel_specs`` gives them)."""
    from medseg.ct.conditioned import known_sharpness
    from medseg.ct.models import find_conditioned

    if choice is False:
        return None
    vendor = target.vendor or source.vendor
    known = {k.name: known_sharpness(k.name, vendor) for k in (source, target)}
    unknown = [name for name, hit in known.items() if hit is None or hit[1] == "interpolated"]
    try:
        if unknown:
            raise ModelError(
                f"the sharpness of {' and '.join(unknown)} is not in the table: no conditioned-converter row"
            )
        entry = find_conditioned(models_dirs=models_dirs)
    except ModelError as exc:
        if choice:
            raise
        log.info("ct-report: %s", exc.message)
        return None
    return ConditionedRow(entry, source.name, target.name, vendor, device=device, amp=amp)


def nan_metrics() -> dict[str, float]:
    """The row's metrics of an exam it could not convert."""
    return {k: float("nan") for k in METRICS}


def summary_part(values) -> dict[str, Any]:
    """Cohort means of the row's RMSE and sharpness; ``values(name)`` gives the per-exam array."""

    def mean(name: str) -> float:
        v = values(name)
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else float("nan")

    return {
        "rmse_conditioned_hu_mean": mean("rmse_conditioned_hu"),
        "rmse_reduction_conditioned_pct_mean": mean("rmse_reduction_conditioned_pct"),
        "sharpness_plan_source_mean": mean("sharpness_plan_source"),
        "sharpness_plan_target_mean": mean("sharpness_plan_target"),
    }


def has_values(values) -> bool:
    """Whether any exam of the cohort has the conditioned row's LAA-950."""
    return bool(np.isfinite(values("laa950_conditioned")).any())


def summary_text(summary: dict[str, Any], described: dict[str, Any] | None) -> str:
    """The row in words: which model, which weights, its sharpness and its RMSE reduction."""

    def num(key: str, fmt: str) -> str:
        v = summary.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and np.isfinite(v) else "n/a"

    weights = f" ({described['weights']})" if described and described.get("weights") else ""
    return (
        f"sharpness-conditioned converter{weights}: sharpness {num('sharpness_plan_source_mean', '.2f')} -> "
        f"{num('sharpness_plan_target_mean', '.2f')} (cohort mean; source measured, target = table ratio x "
        f"source), mean RMSE {num('rmse_conditioned_hu_mean', '.1f')} HU, reduction "
        f"{num('rmse_reduction_conditioned_pct_mean', '.1f')} %; its agreement is the 'conditioned vs "
        "reference' row"
    )
