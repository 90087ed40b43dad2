"""Ctrl-C in the middle of ct-convert: exit 130, nothing published, and the --json document does not
report the unfinished series as done."""

from __future__ import annotations

import json

from .conftest import run_cli


def test_interrupted_conversion_reports_nothing_done(small_exam_dir, tiny_weights, tmp_path, monkeypatch):
    import medseg.io.dicom_write as dicom

    write = dicom.write_derived_slice
    calls = []

    def interrupt_on_the_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    monkeypatch.setattr(dicom, "write_derived_slice", interrupt_on_the_third)
    out = tmp_path / "out"
    res = run_cli(
        "ct-convert", small_exam_dir / "B50f", "--from", "B50f", "--to", "B30f", "--out", out,
        "--weights", tiny_weights, "--device", "cpu", "--json",
    )  # fmt: skip
    assert res.exit_code == 130, res.output
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 130 and doc["error"] == "interrupted"
    assert (
        doc["counts"]["ok"] == 0 and not doc["outputs"] and not any(i["status"] == "ok" for i in doc["items"])
    )
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []
