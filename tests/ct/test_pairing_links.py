"""ct-train pairing that survives shared storage and anonymisation (issue 20).

- A study assembled from symbolic links to series folders is read (``Path.rglob`` does not follow
  linked folders; :func:`medseg.io.walk.walk_files` does, each real folder once, so cycles end).
- Real Toshiba Aquilion PRIME data (tests/data/real/ct_toshiba: 2 slice pairs of one phantom
  acquisition reconstructed with FC13 and FC51, anonymised separately so every UID and the
  FrameOfReferenceUID differ; int16 with -2048 out-of-field padding) pair by acquisition
  (AcquisitionDate/Time, kVp, orientation, pixel grid, slice positions), say so, and train.
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import pytest

from medseg.ct.cohort import find_pairs
from medseg.ct.train import CTTrainConfig, train, train_text
from medseg.errors import InputError
from medseg.io.walk import walk_files

pydicom = pytest.importorskip("pydicom")

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
TOSHIBA = REAL / "ct_toshiba"
PHILIPS = REAL / "ct_philips"


def tiny(**overrides) -> CTTrainConfig:
    base = {"epochs": 1, "batch_size": 2, "channels": 8, "depth": 3, "steps_per_epoch": 2, "crop": 32}
    return CTTrainConfig(**{**base, **overrides})


def toshiba_study(root: Path, edit=None) -> Path:
    """The gzip-stored Toshiba slices as a study folder (FC13/ and FC51/), optionally edited."""
    for kernel in ("FC13", "FC51"):
        (root / kernel).mkdir(parents=True)
        for gz in sorted((TOSHIBA / kernel).glob("*.DCM.gz")):
            target = root / kernel / gz.name[: -len(".gz")]
            target.write_bytes(gzip.decompress(gz.read_bytes()))
            if edit is not None and kernel == "FC51":
                ds = pydicom.dcmread(target)
                edit(ds)
                ds.save_as(target)
    return root


def test_toshiba_series_pair_by_acquisition_although_every_uid_differs(tmp_path, caplog):
    study = toshiba_study(tmp_path / "study")
    soft, sharp = (pydicom.dcmread(next((study / k).iterdir())) for k in ("FC13", "FC51"))
    for tag in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert soft.get(tag) != sharp.get(tag)  # the data really are anonymised apart
    with caplog.at_level(logging.INFO, logger="medseg.ct"):
        [pair] = find_pairs([study], "FC13", "FC51")
    assert pair.paired_by.startswith(
        "acquisition (UIDs differ: same AcquisitionDate/Time 20210604 182247.150"
    )
    assert "120 kVp" in pair.paired_by and len(pair.source_index) == 2
    assert list(pair.positions) == pytest.approx([1618.5, 1632.5])
    assert "by acquisition (UIDs differ" in caplog.text  # the message says how they were paired


def test_toshiba_pairs_train(tmp_path):
    """Two slices, 14 mm apart: too few for held-out slabs, so everything trains (with the warning)."""
    study = toshiba_study(tmp_path / "study")
    result = train([study], tmp_path / "run", tiny(source_kernel="FC13", target_kernel="FC51"), device="cpu")
    [pair] = result.extra["pairs"]
    assert pair["slices"] == 2 and pair["paired_by"].startswith("acquisition")
    assert result.validated_on == "training data" and result.extra["input_rmse_hu"] > 20
    assert (tmp_path / "run" / "best.safetensors").is_file() and "FC13->FC51" in train_text(result)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda ds: setattr(ds, "AcquisitionTime", "101010.000"), "and acquisition date/time"),
        (lambda ds: setattr(ds, "KVP", "100"), "and kVp (120 vs 100)"),
        (lambda ds: delattr(ds, "AcquisitionTime") or delattr(ds, "AcquisitionDate"), "no AcquisitionDate"),
    ],
)
def test_another_acquisition_with_other_uids_is_refused(tmp_path, edit, reason):
    study = toshiba_study(tmp_path / "study", edit)
    with pytest.raises(InputError) as exc:
        find_pairs([study], "FC13", "FC51")
    text = str(exc.value)
    assert "different FrameOfReferenceUID" in text and reason in text and "\n" not in text


def test_a_study_made_of_symbolic_links_is_read(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / "bone").symlink_to(PHILIPS / "YA", target_is_directory=True)
    (study / "nested").mkdir()
    (study / "nested" / "standard").symlink_to(PHILIPS / "UB", target_is_directory=True)
    [pair] = find_pairs([study], "YA", "UB")
    assert len(pair.source_index) == 3 and pair.paired_by == "frame of reference"
    assert str(pair.source.path) == str(study / "bone")  # the link's name, as the user gave it
    result = train([study], tmp_path / "run", tiny(source_kernel="YA", target_kernel="UB"), device="cpu")
    assert result.extra["pairs"][0]["slices"] == 3


def test_a_linked_study_root_and_a_link_cycle(tmp_path):
    """The study itself a link; a link back to the study root (a cycle) and a dangling link are harmless."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "YA").symlink_to(PHILIPS / "YA", target_is_directory=True)
    (real / "UB").symlink_to(PHILIPS / "UB", target_is_directory=True)
    (real / "loop").symlink_to(real, target_is_directory=True)
    (real / "gone").symlink_to(tmp_path / "nowhere")
    link = tmp_path / "linked_study"
    link.symlink_to(real, target_is_directory=True)
    files = list(walk_files(link))
    assert len(files) == 6 and len({os.path.realpath(f) for f in files}) == 6  # each file once
    [pair] = find_pairs([link], "YA", "UB")
    assert len(pair.target_index) == 3
