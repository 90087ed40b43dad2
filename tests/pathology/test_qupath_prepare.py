"""QuPath round trip: slide-prepare reads QuPath GeoJSON exports of points (PTC centres) and polygons,
with the user's own class names mapped by --class-map."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.pathology.labels import DEFAULT_MARGINS, LABELS, NEGATIVE, POSITIVE
from medseg.pathology.prepare import PrepareConfig, parse_class_map, prepare_dataset, read_geojson_boxes


def _qupath_feature(geometry: dict, cls: str) -> dict:
    """A feature as QuPath's *Export objects as GeoJSON* writes it."""
    return {
        "type": "Feature",
        "id": "b5f0c6a4-0000-4000-8000-000000000000",
        "geometry": geometry,
        "properties": {
            "objectType": "annotation",
            "classification": {"name": cls, "color": [255, 0, 0]},
            "isLocked": False,
        },
    }


def qupath_points_export(truth_geojson, path, names=("PTC pos", "PTC neg")):
    """The truth polygons of a synthetic slide as a QuPath export of points (one per PTC centre),
    one PTC kept as a polygon, one MultiPoint, and an unrelated class QuPath users also draw."""
    feats = json.loads(truth_geojson.read_text())["features"]
    out, centres = [], []
    for i, f in enumerate(feats):
        ring = np.array(f["geometry"]["coordinates"][0], float)
        cls = f["properties"]["classification"]["name"]
        user = names[0] if cls == POSITIVE else names[1]
        cx, cy = ((ring.min(0) + ring.max(0)) / 2).tolist()
        centres.append((cx, cy, LABELS[cls]))
        if i == 0:
            out.append(_qupath_feature(f["geometry"], "Positive" if cls == POSITIVE else "Negative"))
        else:
            out.append(_qupath_feature({"type": "Point", "coordinates": [cx, cy]}, user))
    out.append(_qupath_feature({"type": "MultiPoint", "coordinates": [[5.0, 5.0], [9.0, 9.0]]}, "Tumor"))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": out}))
    return centres


def test_parse_class_map():
    assert parse_class_map("Positive=C4d+, PTC neg = c4d-") == {"positive": POSITIVE, "ptc neg": NEGATIVE}
    assert parse_class_map(None) == {}
    for bad in ("Positive", "Positive=tumour", "=C4d+"):
        with pytest.raises(InputError, match="class-map"):
            parse_class_map(bad)


def test_points_become_boxes_of_the_documented_size(tmp_path):
    path = tmp_path / "p.geojson"
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    _qupath_feature({"type": "Point", "coordinates": [100.0, 200.0]}, "Pos"),
                    _qupath_feature({"type": "MultiPoint", "coordinates": [[10, 10], [20, 30]]}, "Neg"),
                    _qupath_feature({"type": "Point", "coordinates": [1.0, 1.0]}, "Stroma"),
                ],
            }
        )
    )
    rows = read_geojson_boxes(path, point_size=30.0, class_map={"pos": POSITIVE, "neg": NEGATIVE})
    assert rows.tolist() == [
        [85.0, 185.0, 115.0, 215.0, 1.0],
        [-5.0, -5.0, 25.0, 25.0, 2.0],
        [5.0, 15.0, 35.0, 45.0, 2.0],
    ]
    assert len(read_geojson_boxes(path, class_map={"pos": POSITIVE})) == 0  # no point size: points skipped


def test_prepare_from_qupath_points_with_class_map(small_slide, tmp_path):
    slide, truth, synth = small_slide
    ann = tmp_path / "small.geojson"
    centres = qupath_points_export(truth, ann)
    cfg = PrepareConfig(tile=512, class_map=parse_class_map("PTC pos=C4d+,PTC neg=C4d-"))
    run = prepare_dataset([slide], tmp_path / "ds", cfg, annotations=ann)
    assert run.exit_code == 0, run.failure_lines()
    meta = json.loads((tmp_path / "ds" / "annotations.json").read_text())
    total = sum(run.summary["boxes"].values())
    assert 0.85 * len(centres) <= total <= 1.2 * len(centres)
    side = cfg.point_diameter_um / 0.5  # 15 um at 0.5 um/px = 30 px, then the class margins
    pos_w = [
        b[2] - b[0]
        for r in meta["images"]
        for b, lab in zip(r["boxes"], r["labels"])
        if lab == LABELS[POSITIVE] and 0 < b[0] and b[2] < 512
    ]
    neg_w = [
        b[2] - b[0]
        for r in meta["images"]
        for b, lab in zip(r["boxes"], r["labels"])
        if lab == LABELS[NEGATIVE] and 0 < b[0] and b[2] < 512
    ]
    for widths, cls in ((pos_w, POSITIVE), (neg_w, NEGATIVE)):  # all but the one polygon PTC
        hits = np.abs(np.array(widths) - (side + 2 * DEFAULT_MARGINS[cls])) < 1
        assert len(widths) >= 3 and hits.sum() >= len(widths) - 1, (cls, widths)
    # the same export without the class map: the user's names mean nothing -> a failed slide naming the fix
    run = prepare_dataset([slide], tmp_path / "ds2", PrepareConfig(tile=512), annotations=ann)
    assert run.exit_code == 0  # the polygon with "Positive" is a built-in name: one PTC is found
    ann.write_text(ann.read_text().replace('"Positive"', '"PTC pos"').replace('"Negative"', '"PTC neg"'))
    run = prepare_dataset([slide], tmp_path / "ds3", PrepareConfig(tile=512), annotations=ann)
    assert run.exit_code == 5 and "--class-map" in run.items[0].reason
    assert not (tmp_path / "ds3").exists()


def test_cli_prepare_class_map(small_slide, tmp_path):
    from click.testing import CliRunner
    from medseg_cli.main import cli

    slide, truth, _s = small_slide
    ann = tmp_path / "small.geojson"
    qupath_points_export(truth, ann, names=("Pos", "Neg"))
    base = ["slide-prepare", str(slide), "--annotations", str(ann), "--tile", "512", "--json", "--quiet"]
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "ds"), "--class-map", "Pos=C4d+,Neg=C4d-"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["summary"]["boxes"]["C4d+"] > 0 and doc["summary"]["boxes"]["C4d-"] > 0
    assert doc["summary"]["config"]["class_map"] == {"pos": "C4d+", "neg": "C4d-"}
    res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "ds2"), "--class-map", "Pos=tumour"])
    assert res.exit_code == 2 and "--class-map" in res.stderr and len(res.stderr.strip().splitlines()) == 1
