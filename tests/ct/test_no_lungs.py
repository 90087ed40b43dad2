"""A scan without lungs (head, phantom): the emphysema measures are n/a and the result says why, in
the JSON item warnings, not only on the terminal."""

from __future__ import annotations

import numpy as np

from medseg.ct.convert import convert
from medseg.ct.report import NO_LUNGS, ReportConfig, run_ct_report
from medseg.io.dicom import new_uid
from medseg.io.dicom_write import write_ct_series

from .conftest import convert_config


def _head_exam(root):
    """A water cylinder with a bone ring in air, 'reconstructed' as B50f and B30f (no lungs)."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 31.5, xx - 31.5)
    head = np.where(r < 26, 30.0, -1000.0) + np.where((r >= 22) & (r < 26), 900.0, 0.0)
    rng = np.random.default_rng(3)
    study, frame = new_uid(), new_uid()
    for number, (kernel, noise) in enumerate((("B50f", 40.0), ("B30f", 10.0)), start=1):
        volume = np.stack([head + rng.normal(0, noise, head.shape) for _ in range(4)])
        write_ct_series(
            root / kernel, volume, spacing_zyx=(2.0, 0.8, 0.8), kernel=kernel, study_uid=study,
            series_uid=new_uid(), frame_uid=frame, series_number=number, description=f"head {kernel}",
        )  # fmt: skip
    return root


def test_no_lungs_is_said_in_the_result(tiny_weights, tmp_path):
    exam = _head_exam(tmp_path / "head")
    result = convert(
        exam / "B50f",
        tmp_path / "out",
        convert_config(weights=tiny_weights, pdf=False),
        reference=exam / "B30f",
    )
    item = result.items[0]
    assert item.metrics["laa950_reference"] != item.metrics["laa950_reference"]  # NaN: n/a
    assert NO_LUNGS in item.warnings and NO_LUNGS in result.warnings

    cfg = ReportConfig(
        source="B50f", target="B30f", weights=tiny_weights, device="cpu", pdf=False, conditioned=False
    )
    report = run_ct_report([exam], tmp_path / "qa", cfg)
    assert report.items[0].status == "ok" and NO_LUNGS in report.items[0].warnings
