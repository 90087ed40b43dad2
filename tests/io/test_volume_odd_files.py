"""Volume files that are not what their name says: a pipe, an empty file, NIfTI-2 (session 16 audit)."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from medseg.errors import InputError
from medseg.io.volume import read_volume_sitk


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "case_t1.nii.gz"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_volume_sitk(fifo)


def test_an_empty_file_says_so(tmp_path):
    empty = tmp_path / "case_t2.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        read_volume_sitk(empty)


def test_nifti2_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "case_t1.nii.gz"
    nib.save(nib.Nifti2Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    with pytest.raises(InputError, match="NIfTI-2.*NIfTI-1"):
        read_volume_sitk(path)


def test_nifti1_still_reads(tmp_path):
    path = tmp_path / "case_t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4)), path)
    volume, _meta = read_volume_sitk(path)
    assert volume.shape == (6, 5, 4) and float(volume.sum()) == 120.0
