"""Odd but valid inputs of real-world exports that ct-convert reads."""

from __future__ import annotations

import pydicom
from pydicom.fileset import FileSet

from medseg.ct.convert import convert

from .conftest import convert_config


def test_a_dicomdir_file_reads_the_images_of_its_media_folder(small_exam_dir, tiny_weights, tmp_path):
    media = tmp_path / "media"
    fs = FileSet()
    for f in sorted((small_exam_dir / "B50f").iterdir()):
        fs.add(pydicom.dcmread(f))
    fs.write(media)  # DICOMDIR + PT000000/ST000000/SE000000/IM00000x, no extensions
    out = tmp_path / "out"
    result = convert(media / "DICOMDIR", out, convert_config(weights=tiny_weights))
    assert result.exit_code == 0 and result.items[0].metrics["slices"] == 5
    assert len(list(out.iterdir())) == 5
