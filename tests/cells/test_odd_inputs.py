"""Files as other tools write them (robustness audit): singleton and channel axes saved without
metadata, CMYK and inverted-grey storage, images too small to hold a cell, label images with negative
or 32-bit cell numbers, output names that collide, truth files named with spaces. On a crop of the
real DSB 2018 fluorescence image and its expert mask (tests/data/real/nuclei_dsb2018)."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from medseg_cli.main import cli
from PIL import Image

from medseg.cells.io import read_image, read_mask
from medseg.errors import InputError

REAL = Path(__file__).resolve().parents[1] / "data" / "real" / "nuclei_dsb2018"


@pytest.fixture(scope="module")
def real():
    """(image, mask): a 128^2 crop of the real uint16 image and its instance labels."""
    image = tifffile.imread(REAL / "img2d.tif")[:128, :128]
    mask = tifffile.imread(REAL / "mask2d.tif")[:128, :128].astype(np.uint16)
    return image, mask


def test_trailing_singleton_axis_is_one_2d_image_not_h_pages(real, tmp_path):
    image, mask = real
    tifffile.imwrite(tmp_path / "hw1.tif", image[..., None])  # tifffile: axes YXQ, one page
    tifffile.imwrite(tmp_path / "1hw1.tif", image[None, ..., None])
    for name in ("hw1.tif", "1hw1.tif"):
        planes, meta = read_image(tmp_path / name)
        assert planes.shape == (1, 128, 128) and meta["pages"] == 1, name
        np.testing.assert_array_equal(planes[0], image)
    tifffile.imwrite(tmp_path / "m.tif", mask[..., None])
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), mask)


def test_channels_last_array_saved_without_metadata_is_channels(real, tmp_path):
    image, _ = real
    # tifffile stores an (H, W, 2) array as H pages of W x 2 px
    tifffile.imwrite(tmp_path / "hw2.tif", np.dstack([image, image // 2 + 7]))
    planes, meta = read_image(tmp_path / "hw2.tif", channel=1)
    assert planes.shape == (1, 128, 128) and meta["channels"] == 2
    np.testing.assert_array_equal(planes[0], image // 2 + 7)


def test_cmyk_and_inverted_grey_are_read_as_light(real, tmp_path):
    image, _ = real
    gray = (image.astype(np.float32) / image.max() * 255).astype(np.uint8)
    Image.fromarray(np.dstack([gray] * 3)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    cmyk = np.asarray(Image.fromarray(np.dstack([gray] * 3)).convert("CMYK"))
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    tifffile.imwrite(tmp_path / "white.tif", 255 - gray, photometric="miniswhite")
    for name, tol in (("cmyk.jpg", 6), ("cmyk.tif", 1), ("white.tif", 0)):
        planes, _ = read_image(tmp_path / name)
        assert planes.shape == (1, 128, 128), name
        assert np.abs(planes[0] - gray).mean() <= tol, name  # not the inverse (mean |diff| ~ 200)


@pytest.mark.parametrize("shape", [(1, 1), (3, 200), (200, 5)])
def test_image_too_small_to_hold_a_cell_is_refused(shape, tmp_path):
    Image.fromarray(np.full(shape, 90, np.uint8)).save(tmp_path / "tiny.png")
    with pytest.raises(InputError, match=rf"tiny.png: image is only {shape[0]} x {shape[1]} px"):
        read_image(tmp_path / "tiny.png", keep_color=True)


def test_mask_labels_negative_refused_32bit_ids_renumbered_rgb_explained(real, tmp_path):
    _, mask = real
    tifffile.imwrite(tmp_path / "neg.tif", mask.astype(np.int32) - 1)
    with pytest.raises(InputError, match="neg.tif: mask has negative labels"):
        read_mask(tmp_path / "neg.tif")
    ids = np.where(mask > 0, mask.astype(np.uint32) * 20_000_000 + 7, 0).astype(np.uint32)
    tifffile.imwrite(tmp_path / "ids.tif", ids)  # above 2^31: would wrap to negative int32
    labels = read_mask(tmp_path / "ids.tif")
    assert labels.min() == 0 and labels.max() == len(np.unique(mask)) - 1
    np.testing.assert_array_equal(labels > 0, mask > 0)
    assert len(np.unique(labels)) == len(np.unique(mask))
    Image.fromarray(np.stack([mask.astype(np.uint8)] * 3, -1)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="rgb.png: mask is a colour"):
        read_mask(tmp_path / "rgb.png")


def _eval(pred: Path, truth: Path, *extra: str):
    return CliRunner().invoke(
        cli, ["cells-eval", str(pred), "--truth", str(truth), "--json", *extra], catch_exceptions=False
    )


def test_eval_bad_labels_fail_one_item_and_score_the_rest(real, tmp_path):
    _, mask = real
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(pred / f"{name}_labels.tif", mask)
    tifffile.imwrite(truth / "a_mask.tif", mask.astype(np.int32) - 1)  # negative: failed item
    ids = np.where(mask > 0, mask.astype(np.uint32) + 4_000_000_000, 0).astype(np.uint32)
    tifffile.imwrite(truth / "b_mask.tif", ids)  # 32-bit ids: scored
    tifffile.imwrite(truth / "c_mask.tif", mask)
    r = _eval(pred, truth)
    doc = json.loads(r.stdout)
    assert r.exit_code == 5 and doc["exit_code"] == 5
    status = {Path(i["name"]).name: i["status"] for i in doc["items"]}
    assert status == {"a_labels.tif": "failed", "b_labels.tif": "ok", "c_labels.tif": "ok"}
    assert "negative labels" in doc["items"][0]["reason"] and "a_mask.tif" in doc["items"][0]["reason"]
    assert doc["summary"]["ap50"] == 1.0 and doc["summary"]["images"] == 2


def test_eval_matches_truth_named_with_spaces_to_segment_output_name(real, tmp_path):
    _, mask = real
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    tifffile.imwrite(pred / "slide_1_é_labels.tif", mask)  # cells-segment's name for "slide 1 é.png"
    tifffile.imwrite(truth / "slide 1 é_mask.tif", mask)
    doc = json.loads(_eval(pred, truth).stdout)
    assert doc["exit_code"] == 0 and doc["items"][0]["metrics"]["truth"] == "slide 1 é_mask.tif"


def test_eval_without_any_true_cell_gives_no_numpy_warning(tmp_path):
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    tifffile.imwrite(pred / "e_labels.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(truth / "e_mask.tif", np.zeros((32, 32), np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = _eval(pred, truth)
    assert r.exit_code == 0 and "Mean of empty slice" not in r.output


def test_output_names_never_collide():
    from medseg.cells.batch import _unique_stems

    paths = [Path(n) for n in ("a.png", "a.tif", "a_2.png", "A.png", "x y.png", "x_y.png")]
    stems = _unique_stems(paths)
    assert len({s.lower() for s in stems}) == len(stems)
    assert stems[:3] == ["a", "a_2", "a_2_2"]


THUMB = REAL.parent / "he_cmu1_thumb.png"  # real CMU-1 H&E slide thumbnail (tissue and glass)


def test_transparent_slide_edge_is_filled_with_glass_not_read_as_dark(tmp_path):
    from medseg.cells.stain import detect_stain

    tissue = np.array(Image.open(THUMB))[128:384, 64:320, :3]
    rgba = np.dstack([tissue, np.full(tissue.shape[:2], 255, np.uint8)])
    rgba[:, 150:] = 0  # OpenSlide's read_region past the slide's edge: transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "edge.png")
    planes, meta = read_image(tmp_path / "edge.png", keep_color=True)
    assert planes.shape == (1, 256, 256, 3) and planes[0, :, 150:].min() > 200  # glass, not black
    assert detect_stain(planes[0]).stain == "he"  # black there: "a dark colour image", refused
    la = np.dstack([tissue.mean(-1).astype(np.uint8), rgba[..., 3]])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png")[0][0, :, 150:].min() > 200
    Image.fromarray(np.zeros((64, 64, 4), np.uint8), "RGBA").save(tmp_path / "none.png")
    with pytest.raises(InputError, match="none.png: image is fully transparent"):
        read_image(tmp_path / "none.png", keep_color=True)


def test_empty_glass_is_zero_cells_not_noise(tmp_path):
    """A glass-only tile of the real slide: its JPEG blocks and noise were segmented as hundreds of
    "cells" (448-734 on CMU-1's glass tiles); now 0 cells, the item saying why."""
    from medseg.cells.stain import empty_field

    thumb = np.array(Image.open(THUMB))[..., :3]
    glass, tissue = thumb[0:48, 16:64], thumb[128:384, 64:320]
    assert (
        empty_field(glass.astype(np.float32), "uint8")
        and empty_field(tissue.astype(np.float32), "uint8") is None
    )
    image = tifffile.imread(REAL / "img2d.tif")
    assert empty_field(image.astype(np.float32), "uint16") is None  # dim 16-bit fluorescence: not empty
    Image.fromarray(np.kron(glass, np.ones((2, 2, 1), np.uint8))).save(tmp_path / "glass.png")
    weights = _tiny_weights(tmp_path / "tiny.safetensors")
    args = ["cells-segment", str(tmp_path / "glass.png"), "--out", str(tmp_path / "out"), "--json"]
    r = CliRunner().invoke(cli, [*args, "--weights", str(weights), "--device", "cpu"], catch_exceptions=False)
    item = json.loads(r.stdout)["items"][0]
    assert r.exit_code == 0 and item["metrics"]["cells"] == 0 and item["metrics"]["stain"] == "none"
    assert "empty bright field" in item["metrics"]["stain_reason"]


def test_empty_folder_is_named_in_the_one_json_document(tmp_path):
    folder = tmp_path / "no images here"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    for args in (
        ["cells-segment", str(folder), "--out", str(tmp_path / "out")],
        ["cells-eval", str(folder), "--truth", str(folder)],
    ):
        r = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
        assert r.exit_code == 2 and str(folder) in json.loads(r.stdout)["error"], args
    assert not (tmp_path / "out").exists()


def test_eval_scores_a_stack_as_cells_segment_writes_it(real, tmp_path):
    """cells-segment writes a multi-page label TIFF for a stack; cells-eval refused it ("mask must
    be a 2D label image"). Its pages are now scored pooled, each page's cells apart."""
    _, mask = real
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    other = mask[::-1].copy()  # the same labels on the next page: other cells
    missed = other.copy()
    missed[missed == missed.max()] = 0  # one cell missed on page 2
    tifffile.imwrite(truth / "s_mask.tif", np.stack([mask, other]))
    tifffile.imwrite(pred / "s_labels.tif", np.stack([mask, missed]))
    doc = json.loads(_eval(pred, truth).stdout)
    n = 2 * (len(np.unique(mask)) - 1)
    assert doc["exit_code"] == 0
    assert doc["summary"]["count_true"] == n and doc["summary"]["tp"] == n - 1


def test_files_are_read_by_content_not_by_extension(real, tmp_path):
    image, mask = real
    gray = (image.astype(np.float32) / image.max() * 255).astype(np.uint8)
    Image.fromarray(gray).save(tmp_path / "renamed.tif", format="PNG")  # was "not a valid TIF file"
    np.testing.assert_array_equal(read_image(tmp_path / "renamed.tif")[0][0], gray)
    tifffile.imwrite(tmp_path / "stack.png", np.stack([image, image // 2]))  # was its first page only
    assert read_image(tmp_path / "stack.png")[0].shape == (2, 128, 128)
    Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "m.tif", format="PNG")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif"), mask.astype(np.uint8))


@pytest.mark.parametrize("scale", [1e-12, 1e-30])
def test_float_image_in_small_units_is_not_taken_for_constant(real, scale):
    """A float TIFF in small physical units (max ~2e-10) was normalised to all zero: 0 cells."""
    from medseg.cells.stain import normalise_for_stain

    image = real[0].astype(np.float32)
    for stain in ("fluo", "phase"):
        np.testing.assert_allclose(
            normalise_for_stain(image * np.float32(scale), stain),
            normalise_for_stain(image, stain),
            atol=1e-4,
        )
    assert not normalise_for_stain(np.full((32, 32), 3e-20, np.float32), "fluo").any()  # constant stays 0


def test_an_image_given_twice_is_one_item(real, tmp_path):
    from medseg.cells.io import list_images

    folder = tmp_path / "imgs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", real[0])
    (folder / "link.tif").symlink_to(folder / "a.tif")
    (folder / "sub.png").mkdir()  # a folder named like an image is not an image
    assert list_images([folder, folder / "a.tif"]) == [folder / "a.tif"]


def test_eval_truth_is_the_mask_not_the_image_beside_it_nor_the_prediction(real, tmp_path):
    """A truth folder holding the images next to their masks: a.png (the image) was taken as the truth
    of a_labels.tif (AP 0.0, silently); a folder given as its own truth scored each file against itself."""
    image, mask = real
    pred, data = tmp_path / "pred", tmp_path / "data"
    pred.mkdir()
    data.mkdir()
    tifffile.imwrite(pred / "a_labels.tif", mask)
    Image.fromarray((image / image.max() * 255).astype(np.uint8)).save(data / "a.png")
    tifffile.imwrite(data / "a_mask.tif", mask)
    doc = json.loads(_eval(pred, data).stdout)
    assert doc["items"][0]["metrics"]["truth"] == "a_mask.tif" and doc["summary"]["ap50"] == 1.0
    doc = json.loads(_eval(pred, pred).stdout)
    assert doc["exit_code"] == 5 and doc["items"][0]["status"] == "failed"


def test_dicom_file_is_named_as_dicom_not_as_corrupt(tmp_path):
    dicom = REAL.parent / "dicom_wsi_camelyon_tiled_full.dcm"  # a real DICOM whole-slide image
    with pytest.raises(InputError, match="dcm: a DICOM file: the cell commands read PNG, TIFF"):
        read_image(dicom)


def test_eval_binary_prediction_is_split_into_cells_as_the_truth_is(real, tmp_path):
    """Another tool's foreground mask (0/255, cells apart) was one predicted object: AP 0."""
    from skimage.segmentation import find_boundaries

    _, mask = real
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir()
    truth.mkdir()
    binary = ((mask > 0) & ~find_boundaries(mask)).astype(np.uint8) * 255
    Image.fromarray(binary).save(pred / "a.png")
    tifffile.imwrite(truth / "a_mask.tif", mask)
    summary = json.loads(_eval(pred, truth).stdout)["summary"]
    assert summary["count_pred"] >= summary["count_true"] - 2 and summary["ap50"] > 0.6  # was 1 object, AP 0


def _tiny_weights(path: Path) -> Path:
    import torch

    from medseg.cells.model import CellModelConfig, build_model
    from medseg.cells.train import CellsTrainConfig, make_meta
    from medseg.engine.checkpoint import save_weights

    torch.manual_seed(0)
    config = CellsTrainConfig(model=CellModelConfig(base_channels=4), training_data="random init (test)")
    save_weights(path, build_model(config=config.model).state_dict(), make_meta(config, {}))
    return path


def test_ctrl_c_records_finished_images_so_resume_keeps_them(real, tmp_path):
    """Ctrl-C wrote no summary.json: --resume then segmented every image again."""
    from medseg.cells.batch import segment_images
    from medseg.cells.segment import SegmentConfig

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a", "b", "c"):
        tifffile.imwrite(folder / f"{name}.tif", real[0])
    config = SegmentConfig(weights=_tiny_weights(tmp_path / "w.safetensors"), device="cpu", diameter=None)

    def interrupted_after_one(fn, items):
        items = list(items)
        yield fn(items[0])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_images([folder], tmp_path / "out", config, mapper=interrupted_after_one)
    doc = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert doc["summary"]["interrupted"] and [i["status"] for i in doc["items"]] == ["ok"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith("a_")) == [
        "summary.json"
    ]
    again = segment_images([folder], tmp_path / "out", replace(config, resume=True))
    assert [i.status for i in again.items] == ["skipped", "ok", "ok"]


def test_training_folder_holding_images_and_masks_pairs_each_image_once(real, tmp_path):
    """cells-train --images d --masks d: each mask was also an "image" paired with itself."""
    from medseg.cells.dataset import find_pairs

    image, mask = real
    tifffile.imwrite(tmp_path / "a.tif", image)
    tifffile.imwrite(tmp_path / "a_mask.tif", mask)
    tifffile.imwrite(tmp_path / "b.tif", image)  # no mask: reported
    pairs, missing = find_pairs(tmp_path, tmp_path)
    assert pairs == [(tmp_path / "a.tif", tmp_path / "a_mask.tif")]
    assert [Path(m["image"]).name for m in missing] == ["b.tif"]


def test_indexed_png_mask_gives_its_indices_as_labels(real, tmp_path):
    """An indexed (palette) label PNG, as annotation tools save masks: read as colours, it was refused."""
    _, mask = real
    indexed = Image.new("P", mask.shape[::-1])
    indexed.putdata(mask.astype(np.uint8).ravel().tolist())
    indexed.putpalette(np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8).tolist())
    indexed.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
    assert read_image(tmp_path / "m.png")[1]["color"] == "rgb"  # as an image: its colours


def test_bool_and_inverted_grey_masks_keep_their_stored_labels(real, tmp_path):
    """tifffile writes every bool array as 1-bit MINISWHITE: neither masks nor bool images are inverted,
    and a mask's stored numbers are its labels whatever its photometric tag says."""
    _, mask = real
    tifffile.imwrite(tmp_path / "b.tif", mask > 0)
    np.testing.assert_array_equal(read_mask(tmp_path / "b.tif"), mask > 0)
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif")[0][0], mask > 0)
    tifffile.imwrite(tmp_path / "w.tif", mask.astype(np.uint8), photometric="miniswhite")
    np.testing.assert_array_equal(read_mask(tmp_path / "w.tif"), mask)


def test_empty_dark_background_crop_is_zero_cells(tmp_path):
    """A nucleus-free crop of a real DSB 2018 fluorescence image spans 2 grey levels: percentile
    normalisation stretched its noise into 27-29 "cells" on such crops. A binary or constant image is
    not "empty" in this sense (two values, or none to stretch)."""
    from medseg.cells.stain import empty_field

    val = REAL.parent / "dsb2018_val"
    name = "2bf594e9d06f78b4b79d7ffb395497a0a91126b6b0d710d7a9cee21f5c3bd177"
    image = np.asarray(Image.open(val / "images" / f"{name}.png"))
    assert not tifffile.imread(val / "masks" / f"{name}.tif")[128:224, 144:240].any()
    Image.fromarray(image[128:224, 144:240]).save(tmp_path / "empty.png")
    planes, meta = read_image(tmp_path / "empty.png", keep_color=True)
    assert "empty field" in empty_field(planes[0], meta["dtype"])
    assert empty_field(planes[0].round() > 10, "uint8") is None  # binary
    for full in (np.zeros((64, 64), np.float32), read_image(REAL / "img2d.tif")[0][0]):
        assert empty_field(full, "uint16") is None


def test_a_fourth_fluorescence_channel_is_not_alpha(real, tmp_path, caplog):
    """Only a declared alpha (PNG RGBA/LA, a TIFF alpha extra sample) is transparency: a 4-channel
    fluorescence TIFF's dark fourth channel is data."""
    image, _ = real
    dark = np.where(image > np.percentile(image, 90), image, 0).astype(np.uint16)
    stack = np.stack([image, image, image, dark])
    tifffile.imwrite(tmp_path / "c4.tif", stack, photometric="minisblack", metadata={"axes": "CYX"})
    planes, _ = read_image(tmp_path / "c4.tif", channel=3)
    np.testing.assert_array_equal(planes[0], dark)
    read_image(tmp_path / "c4.tif", keep_color=True)
    assert "transparent" not in caplog.text
