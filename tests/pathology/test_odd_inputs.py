"""Odd real-world slide files and batches (robustness audit): each was answered wrongly before.

- a TIFF cut before its directories (Aperio writes them at the end) was "valid TIFF, no reader
  supports its layout"; an OME-TIFF cut inside its OME-XML was "no microns-per-pixel metadata";
- an MPP of 5 um/px (a wrong scale, or a 2x scan) was upsampled and scored "C4d3" from phantom PTCs;
  an MPP of 0 was "no metadata"; non-square pixels were averaged; a 16 px strip was "no tissue";
- ``--mpp`` other than the detector's training resolution silently gave wrong counts;
- float, palette and one-strip TIFFs, other scenes, Greek-mu OME units, DICOMDIR, a damaged DICOM
  level, renamed JPEG/PNG, empty files, forced readers of the wrong family;
- batches: names with dots / case, a slide named twice, Excel CSV lists, macOS "._" files,
  nested folders, --out that is a file, --resume across other settings, feasibility hooks.
Annotations and training data: ``test_odd_annotations.py``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.pathology.slide import check_scale, open_slide, slide_stem, unique_names

from .test_readers import SHARED_SVS, _image, write_dicom_wsi, write_ome_pyramid


def _aperio(path: Path, mpp: float = 0.5, size: tuple[int, int] = (1024, 768)) -> Path:
    from medseg.synthetic.slides import SlideSpec, write_slide

    write_slide(path, SlideSpec(width=size[0], height=size[1], seed=3, mpp=mpp), flavour="aperio")
    return path


def test_tiff_whose_directory_lies_past_the_cut_is_named_truncated(tmp_path):
    """Aperio-like layout: pixel data first, directory at the end; the copy stops before it."""
    path = tmp_path / "cut.svs"
    header = b"II*\x00" + struct.pack("<I", 50_000)
    path.write_bytes(header + bytes(20_000))
    for reader in ("auto", "openslide", "tifffile"):
        with pytest.raises(InputError, match="truncated TIFF file: the first image directory") as info:
            open_slide(path, reader=reader)
        assert "cut.svs" in str(info.value) and "\n" not in str(info.value)


def test_ome_tiff_cut_inside_its_metadata_is_truncated_not_without_scale(tmp_path):
    path = tmp_path / "slide.ome.tif"
    write_ome_pyramid(path, _image(seed=5), mpp=0.5)
    data = path.read_bytes()
    cut = tmp_path / "cut.ome.tif"
    cut.write_bytes(data[:-40])  # tifffile writes the OME-XML description last
    with pytest.raises(InputError, match="truncated TIFF file"):
        open_slide(cut)
    with open_slide(path) as s:  # the whole file still opens
        assert s.mpp == pytest.approx(0.5)


def test_real_svs_cut_in_half_is_truncated():
    if not SHARED_SVS.is_file():
        pytest.skip(f"real SVS absent ({SHARED_SVS})")
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        cut = Path(d) / "half.svs"
        data = SHARED_SVS.read_bytes()
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="truncated TIFF file"):
            open_slide(cut)
    with open_slide(SHARED_SVS) as s:
        assert s.backend == "openslide"


def test_implausible_scales_are_refused_in_words(tmp_path):
    coarse = _aperio(tmp_path / "coarse.svs", mpp=5.0)
    with (
        open_slide(coarse) as s,
        pytest.raises(InputError, match=r"10x coarser than the 0.5 um/px") as info,
    ):
        check_scale(s, 0.5)
    assert "coarse.svs" in str(info.value) and "--slide-mpp" in str(info.value)
    with (
        open_slide(coarse, slide_mpp=0.01) as s,
        pytest.raises(InputError, match="finer than any slide scanner"),
    ):
        check_scale(s, 0.5)
    with open_slide(coarse, slide_mpp=0.25) as s:
        check_scale(s, 0.5)  # a 40x scan is fine


def test_coarse_slide_is_a_failed_row_not_a_category(tmp_path):
    from medseg.pathology.batch import score_slides
    from medseg.pathology.score import ScoreConfig

    from .test_score import ColourDetector

    coarse = _aperio(tmp_path / "coarse.svs", mpp=5.0)
    run = score_slides([coarse], tmp_path / "out", ScoreConfig(device="cpu"), detector=ColourDetector())
    assert run.exit_code == 5
    assert run.items[0].status == "failed" and "coarser" in run.items[0].reason


def test_zero_mpp_says_the_metadata_is_not_usable(tmp_path):
    ok = _aperio(tmp_path / "ok.svs")
    zero = tmp_path / "zero.svs"
    zero.write_bytes(ok.read_bytes().replace(b"MPP = 0.5000", b"MPP = 0.0000"))
    for reader in ("auto", "tifffile"):
        with pytest.raises(InputError, match=r"not a usable scale \(.*= 0(\.0000)?\); pass --slide-mpp"):
            open_slide(zero, reader=reader)


def test_mpp_other_than_the_detectors_is_refused_before_any_work(tmp_path, small_slide):
    from medseg.pathology.batch import score_slides
    from medseg.pathology.detector import check_detector_resolution
    from medseg.pathology.score import ScoreConfig

    detector = SimpleNamespace(config=SimpleNamespace(margins={}, target_mpp=0.5), source="x", predict=None)
    check_detector_resolution(0.5, detector)
    with pytest.raises(InputError, match=r"--mpp 1 is not the resolution the detector was trained at \(0.5"):
        score_slides([small_slide[0]], tmp_path / "out", ScoreConfig(target_mpp=1.0), detector=detector)
    assert not (tmp_path / "out").exists()
    plug_in = SimpleNamespace(config=SimpleNamespace(margins={}), source="x", predict=None)
    check_detector_resolution(1.0, plug_in)  # says nothing: not checked


def test_float_tiff_is_read_by_tifffile(tmp_path):
    import tifffile

    img = _image(256, 320, seed=6)
    for name, data in (("unit.tif", img.astype(np.float32) / 255), ("wide.tif", img.astype(np.float32))):
        tifffile.imwrite(
            tmp_path / name, data, photometric="rgb", tile=(64, 64),
            resolution=(2e4, 2e4), resolutionunit="CENTIMETER",
        )  # fmt: skip
        with open_slide(tmp_path / name) as s:
            assert s.backend == "tifffile"
            got = s.read_rgb((10, 20), 0, (100, 80)).astype(int)
            assert np.abs(got - img[20:100, 10:110]).max() <= 2 if name == "unit.tif" else got.mean() > 50


def test_multi_file_dicom_with_a_damaged_level_names_that_file(tmp_path):
    from pydicom.uid import generate_uid

    img = _image(256, 256, seed=2)
    uids = (generate_uid(), generate_uid(), generate_uid())
    write_dicom_wsi(tmp_path / "level0.dcm", img, sparse=False, uids=uids)
    write_dicom_wsi(tmp_path / "level1.dcm", img[::2, ::2].copy(), sparse=False, spacing_mm=0.001, uids=uids)
    data = (tmp_path / "level1.dcm").read_bytes()
    (tmp_path / "level1.dcm").write_bytes(data[: len(data) - 5000])
    with pytest.raises(InputError, match=r"level0.dcm: its pyramid level level1.dcm: truncated DICOM"):
        open_slide(tmp_path / "level0.dcm")


def test_names_keep_dots_and_annotations_pair_with_qupath_names(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.12345"
    assert unique_names([Path(f"{uid}.dcm"), Path("1.2.826.0.1.3680043.8.498.999.dcm")]) == [
        uid,
        "1.2.826.0.1.3680043.8.498.999",
    ]
    assert [slide_stem(n) for n in ("a.svs", "a.ome.tiff", "a.svs.geojson", "S1.2 C4d.ndpi")] == [
        "a", "a", "a", "S1.2 C4d",
    ]  # fmt: skip
    from medseg.pathology.prepare import pair_annotations

    (tmp_path / "a.svs.geojson").write_text("{}")
    assert pair_annotations([tmp_path / "a.svs"], None) == [(tmp_path / "a.svs", tmp_path / "a.svs.geojson")]


def test_slide_lists_saved_by_excel(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte-order mark and many locales separate by ";": both
    gave a slide named "\\ufeffpath" / "a.svs;x" (failed rows) instead of the listed slides."""
    from medseg.pathology.slide import expand_inputs

    (tmp_path / "bom.csv").write_bytes("\ufeffpath,notes\r\ns1.svs,first\r\n".encode())
    (tmp_path / "semi.csv").write_text("Path;notes\ns2.svs;x\n", encoding="utf-8")
    (tmp_path / "plain.csv").write_text("s3.svs\ns4.svs\n", encoding="utf-8")
    got = expand_inputs([tmp_path / "bom.csv", tmp_path / "semi.csv", tmp_path / "plain.csv"])
    assert [p.name for p in got] == ["s1.svs", "s2.svs", "s3.svs", "s4.svs"]


def test_palette_tiff_gives_its_colours_not_its_indices(tmp_path):
    """A palette (indexed-colour) TIFF was read as grey indices: "dark, looks like fluorescence"."""
    from PIL import Image

    img = _image(128, 160, seed=7) // 64 * 64 + 32  # few colours: the palette is exact
    Image.fromarray(img).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "p.tif", dpi=(50800, 50800))
    ref = np.asarray(Image.open(tmp_path / "p.tif").convert("RGB")).astype(int)
    with open_slide(tmp_path / "p.tif") as s:
        got = s.read_rgb((0, 0), 0, (160, 128)).astype(int)
    assert np.abs(got - ref).max() <= 1


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, small_slide):
    """slide-score scored every slide, then failed each one and ended with "File exists";
    slide-train said only "File exists"."""
    from medseg.pathology.batch import score_slides
    from medseg.pathology.train import train_detector

    out = tmp_path / "results.txt"
    out.write_text("notes")
    detector = SimpleNamespace(config=SimpleNamespace(margins={}), source="x", predict=None)
    with pytest.raises(InputError, match="--out must be a folder"):
        score_slides([small_slide[0]], out, detector=detector)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "annotations.json").write_text(json.dumps({"images": [{"file": "a.png"}]}))
    (tmp_path / "ds" / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match="--out must be a folder"):
        train_detector(tmp_path / "ds", out)
    assert out.read_text() == "notes"


def test_forced_reader_of_the_wrong_family_says_what_the_file_is(tmp_path):
    """--reader dicom on an SVS was "corrupt DICOM header", --reader tifffile on a DICOM "corrupt TIFF"."""
    from PIL import Image

    svs = _aperio(tmp_path / "a.svs")
    dcm = tmp_path / "b.dcm"
    write_dicom_wsi(dcm, _image())
    jpg = tmp_path / "c.svs"
    Image.fromarray(_image()).save(jpg, format="JPEG")
    for path, reader, phrase in (
        (svs, "dicom", "this is a TIFF file"),
        (dcm, "tifffile", "this is a DICOM file"),
        (jpg, "tifffile", "this is neither TIFF nor DICOM"),
    ):
        with pytest.raises(InputError, match=f"--reader {reader} reads .*, but {phrase}; use --reader auto"):
            open_slide(path, reader=reader)


def test_folder_leaves_out_macos_resource_forks(tmp_path):
    """A folder copied from a Mac holds "._a.svs" (4 kB AppleDouble): it was a failed slide (exit 5)."""
    from medseg.pathology.slide import expand_inputs

    (tmp_path / "a.svs").write_bytes(b"II*\x00")
    (tmp_path / "._a.svs").write_bytes(b"\x00\x05\x16\x07" + bytes(4092))
    assert expand_inputs([tmp_path]) == [tmp_path / "a.svs"]
    assert expand_inputs([tmp_path / "._a.svs"]) == [tmp_path / "._a.svs"]  # named explicitly: kept


def test_uncompressed_flat_tiff_reads_only_the_rows_it_needs(tmp_path, monkeypatch):
    """A flat uncompressed TIFF written as one strip was one zarr chunk, decoded whole for every
    region: 2.4 GB and 2 minutes for a 16k x 16k slide, growing with it (1 GB, 6 s now)."""
    import tifffile

    import medseg.pathology.readers as readers

    img = _image(300, 400, seed=9)
    tifffile.imwrite(tmp_path / "one.tif", img, photometric="rgb", rowsperstrip=300, resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(tmp_path / "one.tif", reader="tifffile") as s:
        assert isinstance(s.handle.levels[0], readers._Mapped)
        assert np.array_equal(s.read_rgb((30, 40), 0, (50, 60)), img[40:100, 30:80])
    # a compressed image in blocks too big to decode for every read: refused in words
    monkeypatch.setattr(readers, "_MAX_CHUNK_BYTES", 1000)
    tifffile.imwrite(tmp_path / "z.tif", img, photometric="rgb", compression="zlib", rowsperstrip=300,
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # fmt: skip
    with pytest.raises(InputError, match="convert it to a tiled TIFF"):
        open_slide(tmp_path / "z.tif", reader="tifffile")


def test_empty_file_and_renamed_images_say_what_they_are(tmp_path):
    """Both were "not a slide, or a format OpenSlide does not support"."""
    from PIL import Image

    (tmp_path / "empty.svs").write_bytes(b"")
    Image.fromarray(_image()).save(tmp_path / "field.svs", format="PNG")
    with pytest.raises(InputError, match=r"empty file \(0 bytes\)"):
        open_slide(tmp_path / "empty.svs")
    with pytest.raises(InputError, match="a PNG image, not a whole-slide file"):
        open_slide(tmp_path / "field.svs")


def test_non_square_pixels_are_refused_unless_the_scale_is_given(tmp_path):
    """x and y scales of 0.25 and 0.5 um were averaged to 0.375: every PTC read stretched."""
    import tifffile

    path = tmp_path / "rect.tif"
    tifffile.imwrite(path, _image(256, 256), photometric="rgb", tile=(64, 64), resolution=(4e4, 2e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    with pytest.raises(InputError, match=r"pixels are not square .*\(0.25 x 0.5 um\)"):
        open_slide(path)
    with open_slide(path, slide_mpp=0.5) as s:
        assert s.mpp == 0.5


def test_a_slide_given_twice_is_one_slide(tmp_path):
    """A folder plus one of its files scored that slide twice, as "a" and "a_2"."""
    from medseg.pathology.slide import expand_inputs

    (tmp_path / "a.svs").write_bytes(b"II*\x00")
    (tmp_path / "list.csv").write_text("path\na.svs\n")
    assert expand_inputs([tmp_path, tmp_path / "a.svs", tmp_path / "list.csv"]) == [tmp_path / "a.svs"]


def test_resume_refuses_results_of_other_settings(tmp_path, small_slide):
    """--resume kept slides scored with other weights or rules: one table, two detectors."""
    from medseg.pathology.batch import score_slides
    from medseg.pathology.score import ScoreConfig

    from .test_score import ColourDetector

    out = tmp_path / "out"
    assert (
        score_slides([small_slide[0]], out, ScoreConfig(device="cpu"), detector=ColourDetector()).exit_code
        == 0
    )
    again = score_slides(
        [small_slide[0]], out, ScoreConfig(device="cpu"), detector=ColourDetector(), resume=True
    )
    assert again.items[0].status == "skipped"  # same settings: kept
    with pytest.raises(
        InputError, match=r"--resume: small was scored with other settings: min_ptcs 30 \(now 5\)"
    ):
        score_slides([small_slide[0]], out, ScoreConfig(device="cpu", min_ptcs=5), detector=ColourDetector(),
                     resume=True)  # fmt: skip
    other = ColourDetector()
    other.source = "other.safetensors"
    with pytest.raises(InputError, match="weights 'colour-oracle' \\(now 'other.safetensors'\\)"):
        score_slides([small_slide[0]], out, ScoreConfig(device="cpu"), detector=other, resume=True)


def test_output_names_are_unique_on_case_insensitive_disks():
    """ "A.svs" and "a.svs" were folders "A" and "a": one folder on macOS / Windows, the second
    slide's results replacing the first's; "a", "a", "a_2" gave "a_2" twice."""
    assert unique_names([Path("x/A.svs"), Path("y/a.svs")]) == ["A", "a_2"]
    assert unique_names([Path("x/a.svs"), Path("y/a.svs"), Path("a_2.svs")]) == ["a", "a_2", "a_2_2"]


def test_feasibility_hook_answers_are_checked(tmp_path, small_slide):
    """A hook returning a bool stopped the batch (internal error, exit 1); one raising failed each
    slide as "no tile could be read"."""
    import sys
    from types import ModuleType

    from medseg.pathology.feasibility import HookError, load_hook

    mod = ModuleType("odd_hooks")
    mod.yes = lambda tile: True
    mod.boom = lambda tile: {}["model"]
    mod.odd = lambda tile: "fine"
    sys.modules["odd_hooks"] = mod
    try:
        tile = np.zeros((8, 8, 3), np.uint8)
        assert load_hook("odd_hooks:yes")(tile) == (True, "ok")
        with pytest.raises(HookError, match="hook odd_hooks:boom failed on a tile: KeyError: 'model'"):
            load_hook("odd_hooks:boom")(tile)
        with pytest.raises(HookError, match=r"must return \(feasible: bool, reason: str\), got str"):
            load_hook("odd_hooks:odd")(tile)
        from medseg.pathology.batch import score_slides
        from medseg.pathology.score import ScoreConfig

        from .test_score import ColourDetector

        cfg = ScoreConfig(device="cpu", feasibility="odd_hooks:boom")
        run = score_slides([small_slide[0]], tmp_path / "out", cfg, detector=ColourDetector())
        assert run.exit_code == 5 and run.items[0].reason.startswith(
            "--feasibility hook odd_hooks:boom failed"
        )
    finally:
        del sys.modules["odd_hooks"]


def test_tile_size_typo_is_refused():
    """--tile 10240 (for 1024) read 300 MB tiles and ran the detector on them: out of memory."""
    from medseg.pathology.prepare import PrepareConfig
    from medseg.pathology.score import ScoreConfig

    with pytest.raises(InputError, match="--tile must be 16-4096 px, got 10240"):
        ScoreConfig(tile=10240).check()
    with pytest.raises(InputError, match="--tile must be 16-4096 px"):
        PrepareConfig(tile=10240).check()
    ScoreConfig(tile=4096, overlap=160).check()


def test_dicomdir_of_an_exported_folder_is_not_a_slide(tmp_path):
    """Every DICOM export holds a DICOMDIR index: it was a failed slide ("header without a SOP
    Class UID"), exit 5, in every such batch."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from medseg.pathology.slide import expand_inputs

    write_dicom_wsi(tmp_path / "slide.dcm", _image())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.1.3.10", generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.FileSetID = meta, "EXPORT"
    ds.save_as(tmp_path / "DICOMDIR", enforce_file_format=True)
    assert expand_inputs([tmp_path]) == [tmp_path / "slide.dcm"]
    with pytest.raises(InputError, match=r"not a VL Whole Slide Microscopy image \(Media Storage Directory"):
        open_slide(tmp_path / "DICOMDIR")


def test_slide_list_prefers_the_path_column(tmp_path):
    """A scores.csv of an earlier run as the list: its "slide" names were taken as paths."""
    from medseg.pathology.slide import expand_inputs

    (tmp_path / "scores.csv").write_text("slide,status,path\na,ok,/data/a.svs\n")
    assert expand_inputs([tmp_path / "scores.csv"]) == [Path("/data/a.svs")]


def test_other_scenes_of_an_ome_tiff_are_named_not_dropped_silently(tmp_path):
    """Two sections scanned as two scenes: only the largest was scored, without a word."""
    import tifffile

    meta = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as tw:
        tw.write(
            _image(128, 160, seed=1), tile=(64, 64), photometric="rgb", metadata={**meta, "Name": "Scene 1"}
        )
        tw.write(
            _image(120, 160, seed=2), tile=(64, 64), photometric="rgb", metadata={**meta, "Name": "Scene 2"}
        )
    with open_slide(tmp_path / "two.ome.tif") as s:
        assert s.handle.note is not None and "holds 2 images (scenes)" in s.handle.note
        assert "'Scene 2'" in s.handle.note


def test_folder_of_patient_folders_says_where_the_slides_are(tmp_path):
    """slides/p1/a.svs, slides/p2/b.svs given as slides/: "no slides given", no hint why."""
    from medseg.pathology.batch import batch_inputs

    for p in ("p1", "p2"):
        (tmp_path / "slides" / p).mkdir(parents=True)
        (tmp_path / "slides" / p / f"{p}.svs").write_bytes(b"II*\x00")
    with pytest.raises(InputError, match=r"2 in subfolders of .*slides \(folders are not searched deeper"):
        batch_inputs([tmp_path / "slides"], tmp_path / "out", resume=False, overwrite=False)


def test_a_strip_of_a_slide_is_too_small_not_tissue_less(tmp_path):
    """A 2048 x 16 px image was "no tissue found: 72 % of the image differs from the background"."""
    import tifffile

    tifffile.imwrite(tmp_path / "thin.tif", _image(16, 512), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")  # fmt: skip
    with open_slide(tmp_path / "thin.tif") as s, pytest.raises(InputError, match="512 x 16 px .* too small"):
        check_scale(s, 0.5)


@pytest.mark.parametrize("unit", ["\u03bcm", "micrometer"])
def test_ome_units_written_with_greek_mu_or_in_words(tmp_path, unit):
    """'μm' with the Greek letter mu (not the micro sign the schema uses) was no scale at all."""
    path = tmp_path / "s.ome.tif"
    write_ome_pyramid(path, _image(seed=3), mpp=0.5, unit=unit)
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.5)


def test_slide_score_of_only_missing_paths_stops_before_any_output(tmp_path):
    """A typo is not a batch with one lost slide: exit 2 and no empty report (was exit 5 + report)."""
    from medseg.errors import InputError
    from medseg.pathology.batch import batch_inputs

    with pytest.raises(InputError, match="no such slide"):
        batch_inputs([tmp_path / "nope.svs"], tmp_path / "out", resume=False, overwrite=False)
    assert not (tmp_path / "out").exists()
