"""ct-train --resume continues the same run: the exams of each part of the split are its identity."""

from __future__ import annotations


def test_resume_identity_is_the_split_without_its_wording():
    from medseg.ct.train import CTTrainTask

    task = CTTrainTask.__new__(CTTrainTask)
    task.split = {
        "mode": "exams",
        "description": "by exam (3 exams)",
        "train": ["e1"],
        "val": ["e2"],
        "test": ["e3"],
    }
    assert task.resume_identity() == {
        "split": {"mode": "exams", "train": ["e1"], "val": ["e2"], "test": ["e3"]}
    }
