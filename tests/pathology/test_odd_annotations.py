"""Odd annotations and training data for slide-prepare, slide-eval and slide-train (robustness
audit); each case was answered wrongly before:

- annotations lying wholly outside the slide made training tiles with no PTC (exit 0); points with
  a third coordinate were skipped; a GeoJSON with a byte-order mark was unreadable;
- one --annotations file for several slides gave each the same PTCs; two slides named s1 wrote the
  same tile files; 0/255 or colour masks gave tiles without PTCs;
- slide-eval gave categories from one PTC, ignored point truth and truth folders;
- slide-train: a malformed annotations.json was an internal error, a dataset without one class
  trained a detector that gives every slide the same category.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError

from .test_readers import _image


def _shifted(truth: Path, out: Path, dx: float) -> Path:
    fc = json.loads(truth.read_text())
    for f in fc["features"]:
        f["geometry"]["coordinates"] = [[[x + dx, y] for x, y in f["geometry"]["coordinates"][0]]]
    out.write_text(json.dumps(fc))
    return out


def test_annotations_outside_the_slide_fail_that_slide(tmp_path, small_slide):
    from medseg.pathology.prepare import prepare_dataset

    slide, truth, _synth = small_slide
    ann = _shifted(truth, tmp_path / "far.geojson", 100_000)
    run = prepare_dataset([slide], tmp_path / "ds", annotations=ann)
    assert run.exit_code == 5 and not (tmp_path / "ds").exists()
    assert "all 45 annotated PTCs lie outside the slide (2048 x 1536 px" in run.items[0].reason or (
        "annotated PTCs lie outside the slide" in run.items[0].reason
    )


def test_points_with_a_third_coordinate_are_ptcs(tmp_path):
    from medseg.pathology.prepare import read_geojson_boxes

    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"classification": {"name": "C4d+"}},
             "geometry": {"type": "MultiPoint", "coordinates": [[100, 200, 0], [300, 400, 0]]}},
            {"type": "Feature", "properties": {"classification": {"name": "C4d-"}},
             "geometry": {"type": "Point", "coordinates": [50, 60, 1.5]}},
        ],
    }  # fmt: skip
    (tmp_path / "z.geojson").write_text(json.dumps(fc))
    rows = read_geojson_boxes(tmp_path / "z.geojson", point_size=10)
    centres = ((rows[:, :2] + rows[:, 2:4]) / 2).tolist()
    assert centres == [[100, 200], [300, 400], [50, 60]]


def test_eval_categories_follow_min_ptcs(tmp_path):
    from medseg.pathology.evaluate import evaluate_slide

    feat = {
        "type": "Feature",
        "properties": {"classification": {"name": "C4d+"}, "detection_box": [0, 0, 40, 40], "score": 0.9},
        "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]]},
    }
    (tmp_path / "d.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [feat]}))
    summary = {"min_ptcs": 30, "slide_size": [1000, 1000]}
    m = evaluate_slide(
        tmp_path / "d.geojson", tmp_path / "d.geojson", margins={"C4d+": 10, "C4d-": 10}, scale=1.0,
        summary=summary,
    )  # fmt: skip
    assert m["predicted_category"].startswith("not assessable") and m["category_agrees"]


@pytest.mark.parametrize(
    "meta, phrase",
    [
        ([1, 2], "not a JSON object"),
        ({"images": {"a": 1}}, '"images" is not a list'),
        ({"images": [{"boxes": []}]}, "record 0: 'file' must be a path inside"),
        ({"images": [{"file": "../x.png", "boxes": [], "labels": []}]}, "'file' must be a path inside"),
        ({"images": [{"file": "a.png", "boxes": [[1, 2, float("nan"), 4]], "labels": [1]}]}, "NaN"),
        ({"images": [{"file": "a.png", "boxes": [[1, 2, 3]], "labels": [1]}]}, "lists of 4 numbers"),
        ({"images": [{"file": "a.png", "boxes": [[1, 2, 3, 4]], "labels": [7]}]}, "'labels' must be one of"),
        ({"images": [{"file": "a.png", "boxes": [[5, 2, 3, 4]], "labels": [1]}]}, "x1 < x0"),
    ],
)
def test_damaged_training_dataset_is_refused_before_training(tmp_path, meta, phrase):
    """A hand-edited or foreign annotations.json was an internal error (exit 1, AttributeError /
    KeyError) or a crash minutes into training."""
    from medseg.pathology.train import load_dataset

    (tmp_path / "annotations.json").write_text(json.dumps(meta))
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match=phrase):
        load_dataset(tmp_path)


@pytest.mark.parametrize("kind", ["binary255", "colour", "grey_rgb"])
def test_mask_tiles_without_class_values_are_refused(tmp_path, kind):
    """A 0/255 binary mask or a coloured one gave a tile with no PTC (exit 0): a detector trained
    on it learns that PTCs are background."""
    from PIL import Image

    from medseg.pathology.prepare import prepare_dataset

    m = np.zeros((64, 64), np.uint8)
    m[10:20, 10:20], m[40:50, 30:45] = 1, 2
    mask = {
        "binary255": (m > 0).astype(np.uint8) * 255,
        "colour": np.stack([m * 100, m * 50, m], -1).astype(np.uint8),
        "grey_rgb": np.stack([m] * 3, -1),
    }[kind]
    (tmp_path / "tiles").mkdir()
    Image.fromarray(_image(64, 64)).save(tmp_path / "tiles" / "t.png")
    Image.fromarray(mask).save(tmp_path / "tiles" / "t_mask.png")
    run = prepare_dataset([], tmp_path / "ds", masks=tmp_path / "tiles")
    if kind == "grey_rgb":  # a grey label mask saved as RGB is still a label mask
        assert run.exit_code == 0 and run.summary["boxes"] == {"C4d+": 1, "C4d-": 1}
    else:
        assert run.exit_code == 5 and not (tmp_path / "ds").exists()
        assert ("found 255" if kind == "binary255" else "colour mask") in run.items[0].reason


def test_eval_takes_a_truth_folder_and_counts_a_file_once(tmp_path):
    """A folder was "truth file not found"; the same file given twice was counted twice."""
    from medseg.pathology.evaluate import _truth_files

    (tmp_path / "t").mkdir()
    for n in ("b.geojson", "a.svs.geojson", "notes.txt"):
        (tmp_path / "t" / n).write_text("{}")
    got = _truth_files([tmp_path / "t", tmp_path / "t" / "b.geojson"])
    assert [p.name for p in got] == ["a.svs.geojson", "b.geojson"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder without .geojson truth files"):
        _truth_files([tmp_path / "empty"])


def test_two_slides_of_the_same_name_keep_their_own_tiles(tmp_path):
    """a/s1.tiff and b/s1.tiff wrote the same tile files: the second slide's pixels under the
    first one's boxes in annotations.json (corrupt training data, exit 0)."""
    from medseg.pathology.prepare import prepare_dataset
    from medseg.synthetic.slides import SlideSpec, write_slide

    for sub, seed in (("a", 21), ("b", 22)):
        (tmp_path / sub).mkdir()
        write_slide(tmp_path / sub / "s1.tiff", SlideSpec(width=1024, height=768, seed=seed),
                    geojson=tmp_path / sub / "s1.geojson")  # fmt: skip
    slides = [tmp_path / "a" / "s1.tiff", tmp_path / "b" / "s1.tiff", tmp_path / "a" / "s1.tiff"]
    run = prepare_dataset(slides, tmp_path / "ds")
    assert [i.name for i in run.items] == ["s1", "s1_2"]  # the repeated path is prepared once
    meta = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    files = [r["file"] for r in meta["images"]]
    assert len(files) == len(set(files)) == len(list((tmp_path / "ds" / "images").iterdir()))


def test_one_annotation_file_for_several_slides_is_refused(tmp_path):
    """Every slide got the PTCs of the one --annotations file: wrong labels, exit 0."""
    from medseg.pathology.prepare import pair_annotations

    (tmp_path / "a.geojson").write_text("{}")
    with pytest.raises(InputError, match="--annotations is one file but 2 slides were given"):
        pair_annotations([tmp_path / "a.svs", tmp_path / "b.svs"], tmp_path / "a.geojson")
    assert len(pair_annotations([tmp_path / "a.svs"], tmp_path / "a.geojson")) == 1


@pytest.mark.parametrize(
    "labels, missing", [([1, 1], "no C4d-"), ([2], "no C4d+"), ([], "no C4d+ and no C4d-")]
)
def test_training_data_without_one_class_is_refused(tmp_path, labels, missing):
    """Only C4d+ PTCs annotated (a common shortcut) trained a detector that never says C4d-:
    every slide it scores would be C4d3."""
    from medseg.pathology.train import train_detector

    boxes = [[10, 10, 40, 40]] * len(labels)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "annotations.json").write_text(
        json.dumps({"images": [{"file": "a.png", "boxes": boxes, "labels": labels}]})
    )
    (tmp_path / "ds" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(f"the dataset has {missing} PTC boxes")):
        train_detector(tmp_path / "ds", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_geojson_with_a_byte_order_mark_is_read(tmp_path):
    """GeoJSON saved by Windows tools (Notepad, PowerShell) starts with a BOM: "cannot read GeoJSON"."""
    from medseg.pathology.prepare import read_geojson_boxes

    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"classification": {
        "name": "C4d+"}}, "geometry": {"type": "Polygon", "coordinates": [[[1, 1], [9, 1], [9, 9], [1, 1]]]}}]}  # fmt: skip
    (tmp_path / "bom.geojson").write_bytes("\ufeff".encode() + json.dumps(fc).encode())
    assert read_geojson_boxes(tmp_path / "bom.geojson").tolist() == [[1, 1, 9, 9, 1]]


def test_eval_reads_point_truth_and_refuses_unknown_classes(tmp_path):
    """A truth of QuPath points was read as no PTC (every detection false, F1 0, exit 0), and a
    truth whose classes had other names likewise."""
    from medseg.pathology.evaluate import evaluate_slide

    det = {
        "type": "Feature",
        "properties": {"classification": {"name": "C4d+"}, "detection_box": [0, 0, 130, 130], "score": 0.9},
        "geometry": {"type": "Polygon", "coordinates": [[[50, 50], [80, 50], [80, 80], [50, 80], [50, 50]]]},
    }
    (tmp_path / "d.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [det]}))
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [65, 65]},
             "properties": {"classification": {"name": "Positive PTC"}}}  # fmt: skip
    (tmp_path / "t.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [point]}))
    kw = {"margins": {"C4d+": 50, "C4d-": 40}, "scale": 1.0, "point_size": 30}
    with pytest.raises(InputError, match="no C4d\\+/C4d- PTC in the truth .* --class-map"):
        evaluate_slide(tmp_path / "d.geojson", tmp_path / "t.geojson", **kw)
    m = evaluate_slide(
        tmp_path / "d.geojson", tmp_path / "t.geojson", class_map={"positive ptc": "C4d+"}, **kw
    )
    assert m["C4d+_tp"] == 1 and m["C4d+_f1"] == 1.0
