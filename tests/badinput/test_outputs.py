"""Outputs never touch inputs (issue 17 §1), concurrent and interrupted runs (§3), one-line messages (§4).

§1 rows run through the shared harness: every command with inputs and an ``--out``, with ``--out``
equal to, inside or around an input, each with ``--overwrite``: exit 2, one line naming both, the
inputs byte-for-byte unchanged. The rule is ``check_apart`` in ``medseg/io/atomic.py``.

§3 tests start real ``medseg`` processes: two with the same ``--out`` (one wins, the other stops at
its pre-flight with exit 3 and nothing is mixed), and Ctrl-C (SIGINT) mid-run (exit 130, one JSON
document, nothing that blocks the rerun; training keeps whole epochs only).
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from .conftest import Case, cases_params, check_case

PHRASE = "would overwrite or change the input"


# --- inputs (built once per process, copied per row) -------------------------------------------


@functools.cache
def _template(kind: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"medseg-outputs-{kind}-"))
    if kind == "brain":
        from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case, write_brain_case

        write_brain_case(make_brain_case(5001, BrainPhantomConfig()), root / "cases", name="SYN")
    elif kind == "ct":
        from medseg.synthetic.ct_phantom import PhantomConfig, make_exam, write_exam_dicom

        exam = make_exam(4242, kernels=("B30f", "B50f"), config=PhantomConfig(size=64, n_slices=5))
        write_exam_dicom(exam, root / "exam", seed=4242, name="exam")
    elif kind == "cells":
        from medseg.cells.io import write_labels, write_png
        from medseg.synthetic.cells import SyntheticCellsConfig, synthetic_cells

        for sub in ("imgs", "masks"):
            (root / sub).mkdir()
        for i in range(2):
            image, labels = synthetic_cells(900 + i, SyntheticCellsConfig(height=64, width=64))
            write_png(root / "imgs" / f"c{i}.png", (np.clip(image, 0, 1) * 255).astype(np.uint8))
            write_labels(root / "masks" / f"c{i}_mask.tif", labels)
    return root


def copy(kind: str, tmp: Path, sub: str = "") -> Path:
    """A fresh copy of a template's folder ``sub`` (or all of it) under ``tmp``."""
    src = _template(kind) / sub if sub else _template(kind)
    dst = tmp / (sub or kind)
    shutil.copytree(src, dst)
    return dst


def brain_case(tmp: Path) -> Path:
    return copy("brain", tmp, "cases") / "SYN"


def write(tmp: Path, rel: str, data: bytes = b"not read") -> Path:
    p = tmp / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def slides(tmp: Path) -> Path:
    """A folder with a (fake) slide and its GeoJSON: pre-flight refuses before reading either."""
    write(tmp, "slides/s1.geojson", b'{"type": "FeatureCollection", "features": []}')
    return write(tmp, "slides/s1.svs").parent


def dataset(tmp: Path) -> Path:
    write(tmp, "ds/a.png")
    return write(tmp, "ds/annotations.json", json.dumps({"images": [{"file": "a.png"}]}).encode()).parent


def predictions(tmp: Path) -> Path:
    """A cells-segment output folder: label images and the run's own summary.json."""
    pred = copy("cells", tmp, "masks").rename(tmp / "pred")
    write(tmp, "pred/summary.json", b'{"command": "cells-segment"}')
    return pred


def caffe(tmp: Path) -> list:
    model, mean = write(tmp, "m.caffemodel"), write(tmp, "mean.binaryproto")
    return ["ct-import-caffe", model, "--mean", mean]


CPU = ("--device", "cpu")
CT = ("--from", "B50f", "--to", "B30f")


def _row(id: str, build, inputs: tuple[str, ...], out: str | None = None, marks=()) -> Case:
    return Case(id, build, 2, PHRASE, inputs=inputs, out=out, marks=marks)


ROWS = [
    # brain: the case folder holds the expert labels (<case>_seg.nii.gz) that brain-eval scores against
    _row(
        "brain-segment-out-is-case",
        lambda t: ["brain-segment", brain_case(t), "--out", t / "cases/SYN", "--overwrite", *CPU],
        ("cases",),
    ),
    _row(
        "brain-segment-out-is-t1",
        lambda t: [
            "brain-segment",
            brain_case(t),
            "--out",
            t / "cases/SYN/SYN_t1.nii.gz",
            "--overwrite",
            *CPU,
        ],
        ("cases",),
    ),
    _row(
        "brain-segment-out-contains-case",
        lambda t: ["brain-segment", brain_case(t), "--out", t / "cases", "--overwrite", *CPU],
        ("cases",),
    ),
    _row(
        "brain-train-out-inside-case",
        lambda t: ["brain-train", brain_case(t), "--out", t / "cases/SYN/run", "--overwrite", *CPU],
        ("cases",),
        "cases/SYN/run",
    ),
    _row(
        "brain-eval-out-is-predictions",
        lambda t: [
            "brain-eval",
            brain_case(t),
            "--pred",
            copy("brain", t / "p", "cases"),
            "--out",
            t / "p/cases",
            "--overwrite",
        ],  # fmt: skip
        ("cases", "p"),
    ),
    # CT
    _row(
        "ct-import-caffe-out-is-model",
        lambda t: [*caffe(t), *CT, "--out", t / "m.caffemodel", "--overwrite"],
        ("m.caffemodel", "mean.binaryproto"),
    ),
    _row(
        "ct-convert-out-inside-input",
        lambda t: [
            "ct-convert",
            copy("ct", t, "exam") / "B50f",
            *CT,
            "--out",
            t / "exam/B50f/conv",
            "--overwrite",
        ],
        ("exam",),
        "exam/B50f/conv",
    ),
    _row(
        "ct-convert-out-is-reference",
        lambda t: [
            "ct-convert",
            copy("ct", t, "exam") / "B50f",
            *CT,
            "--reference",
            t / "exam/B30f",
            "--out",
            t / "exam/B30f",
            "--overwrite",
        ],  # fmt: skip
        ("exam",),
    ),
    _row(
        "ct-train-out-inside-pairs",
        lambda t: ["ct-train", copy("ct", t, "exam"), *CT, "--out", t / "exam/run", "--overwrite", *CPU],
        ("exam",),
        "exam/run",
    ),
    _row(
        "ct-report-out-is-exam",
        lambda t: ["ct-report", copy("ct", t, "exam"), *CT, "--out", t / "exam", "--overwrite", *CPU],
        ("exam",),
    ),
    # cells
    _row(
        "cells-segment-out-is-input",
        lambda t: ["cells-segment", copy("cells", t, "imgs"), "--out", t / "imgs", "--overwrite", *CPU],
        ("imgs",),
    ),
    _row(
        "cells-segment-out-inside-input",
        lambda t: ["cells-segment", copy("cells", t, "imgs"), "--out", t / "imgs/seg", "--overwrite", *CPU],
        ("imgs",),
        "imgs/seg",
    ),
    _row(
        "cells-segment-out-contains-input",
        lambda t: [
            "cells-segment",
            copy("cells", t / "data", "imgs") / "c0.png",
            "--out",
            t / "data",
            "--overwrite",
        ],
        ("data",),
    ),
    _row(
        "cells-train-out-is-images",
        lambda t: [
            "cells-train",
            "--images",
            copy("cells", t, "imgs"),
            "--masks",
            copy("cells", t, "masks"),
            "--out",
            t / "imgs",
            "--overwrite",
            "--init",
            "scratch",
            *CPU,
        ],  # fmt: skip
        ("imgs", "masks"),
    ),
    _row(
        "cells-eval-out-is-predictions-summary",
        lambda t: [
            "cells-eval",
            predictions(t),
            "--truth",
            copy("cells", t, "masks"),
            "--out",
            t / "pred/summary.json",
            "--overwrite",
        ],  # fmt: skip
        ("pred", "masks"),
    ),
    # pathology
    _row(
        "slide-score-out-is-slides",
        lambda t: ["slide-score", slides(t), "--out", t / "slides", "--overwrite", *CPU],
        ("slides",),
    ),
    _row(
        "slide-prepare-out-is-slides",
        lambda t: ["slide-prepare", slides(t) / "s1.svs", "--out", t / "slides", "--overwrite"],
        ("slides",),
    ),
    _row(
        "slide-train-out-is-dataset",
        lambda t: ["slide-train", dataset(t), "--out", t / "ds", "--overwrite", *CPU],
        ("ds",),
    ),
    _row(
        "slide-train-out-inside-dataset",
        lambda t: ["slide-train", dataset(t), "--out", t / "ds/run", "--overwrite", *CPU],
        ("ds",),
        "ds/run",
    ),
]


@pytest.mark.parametrize("case", cases_params(ROWS))
def test_output_apart_from_inputs(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)
