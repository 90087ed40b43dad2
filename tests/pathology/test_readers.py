"""Slide readers: OpenSlide, tifffile (OME-TIFF, SubIFD pyramids), wsidicom and pydicom (DICOM WSI).

Every format test reads back pixels it knows (written here from an array, lossless) or a real file,
and every bad input must give one line that says corrupt/truncated or valid-but-unsupported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseg.errors import InputError
from medseg.pathology.readers import open_reader
from medseg.pathology.slide import expand_inputs, open_slide, read_downsampled

ROOT = Path(__file__).resolve().parents[2]
REAL_DICOM = ROOT / "tests" / "data" / "real" / "dicom_wsi_camelyon_tiled_full.dcm"
SHARED_SVS = ROOT.parent / "shared" / "realdata" / "slide_cmu1_he_svs" / "CMU-1-Small-Region.svs"
WSI_SOP = "1.2.840.10008.5.1.4.1.1.77.1.6"


def _image(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


def write_dicom_wsi(
    path: Path,
    img: np.ndarray,
    *,
    tile: int = 64,
    spacing_mm: float = 0.0005,
    sparse: bool = True,
    image_type: bool = True,
    frames_declared: int | None = None,
    sop: str = WSI_SOP,
    uids: tuple[str, str, str] | None = None,
) -> None:
    """A DICOM VL WSI instance with uncompressed RGB frames, by hand with pydicom. TILED_SPARSE puts
    the frames in reverse order with a PlanePositionSlideSequence each, so only positions place them."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    h, w, _ = img.shape
    tiles = []
    for ty in range(0, h, tile):
        for tx in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[ty : ty + tile, tx : tx + tile]
            t[: part.shape[0], : part.shape[1]] = part
            tiles.append((ty, tx, t))
    if sparse:
        tiles = tiles[::-1]
    study, series, frame_ref = uids or (generate_uid(), generate_uid(), generate_uid())
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_ref
    ds.Modality, ds.PatientName, ds.PatientID, ds.ContainerIdentifier = "SM", "Test", "1", "slide1"
    if image_type:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.Rows = ds.Columns = tile
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = w, h
    ds.NumberOfFrames = frames_declared or len(tiles)
    ds.DimensionOrganizationType = "TILED_SPARSE" if sparse else "TILED_FULL"
    ds.TotalPixelMatrixFocalPlanes = ds.NumberOfOpticalPaths = 1
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight, ds.ImagedVolumeDepth = w * spacing_mm, h * spacing_mm, 0.001
    op = Dataset()
    op.OpticalPathIdentifier = "1"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = (
        "111744",
        "DCM",
        "Brightfield illumination",
    )
    op.IlluminationTypeCodeSequence = [code]
    colour = Dataset()
    colour.CodeValue, colour.CodingSchemeDesignator, colour.CodeMeaning = "R-102C0", "SRT", "Full Spectrum"
    op.IlluminationColorCodeSequence = [colour]
    ds.OpticalPathSequence = [op]
    pm, shared, origin = Dataset(), Dataset(), Dataset()
    pm.PixelSpacing, pm.SliceThickness = [spacing_mm, spacing_mm], 0.001
    shared.PixelMeasuresSequence = [pm]
    ds.SharedFunctionalGroupsSequence = [shared]
    origin.XOffsetInSlideCoordinateSystem = origin.YOffsetInSlideCoordinateSystem = 0.0
    ds.TotalPixelMatrixOriginSequence = [origin]
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    if sparse:
        groups = []
        for ty, tx, _t in tiles:
            fg, pp = Dataset(), Dataset()
            pp.RowPositionInTotalImagePixelMatrix, pp.ColumnPositionInTotalImagePixelMatrix = ty + 1, tx + 1
            pp.XOffsetInSlideCoordinateSystem = pp.YOffsetInSlideCoordinateSystem = 0.0
            pp.ZOffsetInSlideCoordinateSystem = 0.0
            fg.PlanePositionSlideSequence = [pp]
            groups.append(fg)
        ds.PerFrameFunctionalGroupsSequence = groups
    ds.PixelData = b"".join(t.tobytes() for _y, _x, t in tiles)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def write_ome_pyramid(path: Path, img: np.ndarray, *, mpp: float | None, unit: str = "µm") -> np.ndarray:
    """OME-TIFF, tiled, level 1 in a SubIFD; returns the level-1 array."""
    import tifffile

    level1 = np.ascontiguousarray(img[::2, ::2])
    meta: dict = {"axes": "YXS"}
    if mpp is not None:
        meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit=unit, PhysicalSizeY=mpp, PhysicalSizeYUnit=unit)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(img, subifds=1, tile=(64, 64), photometric="rgb", metadata=meta)
        tw.write(level1, subfiletype=1, tile=(64, 64), photometric="rgb")
    return level1


# --------------------------------------------------------------------------- DICOM


def test_real_dicom_wsi_reads_with_size_and_mpp():
    if not REAL_DICOM.is_file():
        pytest.skip(f"real DICOM WSI absent ({REAL_DICOM})")
    with open_slide(REAL_DICOM) as s:
        assert (s.width, s.height) == (1152, 700)
        assert s.mpp == pytest.approx(28.9685, abs=1e-3) and s.mpp_source == "metadata"
        ref = s.read_rgb((0, 0), 0, (1152, 700))
    assert ref.dtype == np.uint8 and ref.shape == (700, 1152, 3) and ref.std() > 5  # real content
    with open_reader(REAL_DICOM, "dicom") as r:  # wsidicom
        assert r.backend == "wsidicom" and r.mpp == pytest.approx((28.969, 28.968), abs=1e-3)
        assert np.abs(r.read_region((0, 0), 0, (1152, 700)).astype(int) - ref).mean() < 2
    from medseg.pathology.readers_dicom import PydicomReader

    with PydicomReader(REAL_DICOM) as r:  # the frame-by-frame fallback on real JPEG frames
        region = r.read_region((300, 200), 0, (400, 300))  # crosses tile borders
        assert r.mpp == pytest.approx((28.969, 28.968), abs=1e-3)
    assert np.abs(region.astype(int) - ref[200:500, 300:700]).mean() < 2


def test_tiled_sparse_dicom_reads_pixel_identical(tmp_path):
    img = _image()
    path = tmp_path / "sparse.dcm"
    write_dicom_wsi(path, img, sparse=True)
    for reader in ("auto", "dicom"):
        with open_slide(path, reader=reader) as s:
            assert (s.width, s.height) == (200, 150) and s.mpp == pytest.approx(0.5)
            assert np.array_equal(s.read_rgb((0, 0), 0, (200, 150)), img), reader
            part = s.read_rgb((50, 40), 0, (100, 100))  # crosses four frames and the bottom edge
            assert np.array_equal(part[:110], img[40:140, 50:150]) and (part[110:] == 255).all(), reader
    assert open_slide(path, reader="dicom").backend == "wsidicom"


def test_dicom_without_image_type_falls_back_to_pydicom(tmp_path):
    """OpenSlide and wsidicom refuse it; pydicom decodes it frame by frame."""
    img = _image(seed=1)
    path = tmp_path / "noimagetype.dcm"
    write_dicom_wsi(path, img, image_type=False)
    with open_slide(path) as s:
        assert s.backend == "pydicom" and s.mpp == pytest.approx(0.5)
        assert np.array_equal(s.read_rgb((0, 0), 0, (200, 150)), img)
        assert np.array_equal(s.read_rgb((70, 10), 0, (64, 64)), img[10:74, 70:134])


def test_multi_instance_dicom_is_one_slide_with_a_pyramid(tmp_path):
    from pydicom.uid import generate_uid

    img = _image(256, 256, seed=2)
    uids = (generate_uid(), generate_uid(), generate_uid())
    folder = tmp_path / "case"
    folder.mkdir()
    write_dicom_wsi(folder / "level0.dcm", img, sparse=False, uids=uids)
    write_dicom_wsi(folder / "level1.dcm", img[::2, ::2].copy(), sparse=False, spacing_mm=0.001, uids=uids)
    (folder / "notes.txt").write_text("not a slide")
    found = expand_inputs([folder])
    assert found == [folder / "level0.dcm"]  # one slide per series, its largest level
    with open_slide(found[0], reader="dicom") as s:
        assert s.level_dimensions == ((256, 256), (128, 128)) and s.level_downsamples == (1.0, 2.0)
        assert np.array_equal(s.read_rgb((0, 0), 1, (128, 128)), img[::2, ::2])


def test_dicom_with_missing_frames_is_one_clear_error(tmp_path):
    path = tmp_path / "missing.dcm"
    write_dicom_wsi(path, _image(), frames_declared=20)  # 12 frames present
    for reader in ("auto", "dicom", "openslide"):
        with pytest.raises(
            InputError, match="truncated DICOM: NumberOfFrames is 20 but .* 12 frames"
        ) as info:
            open_slide(path, reader=reader)
        assert "\n" not in str(info.value) and "missing.dcm" in str(info.value)


def test_cut_real_dicom_is_truncated_not_unsupported(tmp_path):
    if not REAL_DICOM.is_file():
        pytest.skip(f"real DICOM WSI absent ({REAL_DICOM})")
    path = tmp_path / "cut.dcm"
    path.write_bytes(REAL_DICOM.read_bytes()[:60000])
    with pytest.raises(InputError, match="truncated DICOM"):
        open_slide(path)


def test_valid_dicom_that_is_not_a_slide_says_so(tmp_path):
    path = tmp_path / "ct.dcm"
    write_dicom_wsi(path, _image(), sop="1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    with pytest.raises(InputError, match="valid DICOM, but not a VL Whole Slide Microscopy image"):
        open_slide(path)


# --------------------------------------------------------------------------- TIFF


@pytest.mark.parametrize("mpp, unit, expected", [(0.25, "µm", 0.25), (250.0, "nm", 0.25)])
def test_ome_tiff_pyramid_reads_pixel_identical(tmp_path, mpp, unit, expected):
    img = _image(300, 400, seed=3)
    path = tmp_path / "x.ome.tif"
    level1 = write_ome_pyramid(path, img, mpp=mpp, unit=unit)
    with open_slide(path) as s:  # auto: OpenSlide sees one level and no scale, tifffile both
        assert s.backend == "tifffile" and s.vendor == "ome-tiff"
        assert s.mpp == pytest.approx(expected) and s.level_dimensions == ((400, 300), (200, 150))
        assert np.array_equal(s.read_rgb((0, 0), 0, (400, 300)), img)
        assert np.array_equal(s.read_rgb((0, 0), 1, (200, 150)), level1)
        assert np.array_equal(s.read_rgb((100, 60), 1, (50, 40)), level1[30:70, 50:100])  # level-0 location
        edge = s.read_rgb((380, 290), 0, (40, 20))
        assert np.array_equal(edge[:10, :20], img[290:, 380:]) and (edge[10:] == 255).all()
        small, ds = read_downsampled(s, 2)
        assert ds == 2 and np.array_equal(small, level1)


def test_ome_tiff_without_pixel_size_asks_for_slide_mpp(tmp_path):
    path = tmp_path / "nompp.ome.tif"
    write_ome_pyramid(path, _image(seed=4), mpp=None)
    with pytest.raises(InputError, match="--slide-mpp") as info:
        open_slide(path)
    assert "nompp.ome.tif" in str(info.value)
    with open_slide(path, slide_mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "--slide-mpp"


def test_fluorescence_channels_become_rgb(tmp_path):
    """A multi-channel uint16 OME-TIFF (planar CYX) reads as RGB uint8, scaled by its brightest value."""
    import tifffile

    rng = np.random.default_rng(5)
    img = rng.integers(0, 4000, (2, 128, 160), np.uint16)
    path = tmp_path / "fluo.ome.tif"
    tifffile.imwrite(path, img, ome=True, tile=(64, 64), metadata={"axes": "CYX", "PhysicalSizeX": 0.65})
    with open_slide(path, reader="tifffile") as s:
        rgb = s.read_rgb((0, 0), 0, (160, 128))
    assert rgb.shape == (128, 160, 3) and (rgb[..., 2] == 0).all()
    expected = np.clip(img[0].astype(np.float32) * (255.0 / img.max()), 0, 255).astype(np.uint8)
    assert np.array_equal(rgb[..., 0], expected)


def test_truncated_tiff_is_named_truncated(tmp_path):
    path = tmp_path / "cut.ome.tif"
    write_ome_pyramid(path, _image(seed=6), mpp=0.5)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + bytes(0))
    with pytest.raises(InputError, match="truncated") as info:
        open_slide(path, reader="tifffile")
    assert "\n" not in str(info.value)


def test_reader_choice_is_checked(tmp_path):
    path = tmp_path / "s.dcm"
    write_dicom_wsi(path, _image())
    with pytest.raises(InputError, match="--reader"):
        open_slide(path, reader="bioformats")
    with pytest.raises(InputError, match="TIFF"):
        open_slide(path, reader="tifffile")


def test_real_aperio_svs_still_reads_through_openslide():
    if not SHARED_SVS.is_file():
        pytest.skip(f"real-data folder absent ({SHARED_SVS.parent})")
    with open_slide(SHARED_SVS) as s:
        assert s.backend == "openslide" and s.vendor == "aperio"
        assert s.mpp == pytest.approx(0.499, abs=1e-3) and (s.width, s.height) == (2220, 2967)
        assert "thumbnail" in s.associated_images()
        ref = s.read_rgb((1000, 1000), 0, (300, 200))
    assert ref.std() > 5
    with open_slide(SHARED_SVS, reader="tifffile") as t:  # the same tiles through tifffile
        assert t.backend == "tifffile" and t.mpp == pytest.approx(0.499, abs=1e-3)
        assert np.abs(t.read_rgb((1000, 1000), 0, (300, 200)).astype(int) - ref).mean() < 1


def test_cut_header_is_truncated(tmp_path):
    if not REAL_DICOM.is_file():
        pytest.skip(f"real DICOM WSI absent ({REAL_DICOM})")
    path = tmp_path / "head.dcm"
    path.write_bytes(REAL_DICOM.read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated DICOM"):
        open_slide(path)


@pytest.mark.parametrize("kind", ["ome", "pydicom", "wsidicom"])
def test_tiles_read_in_threads_match_and_use_the_pyramid(tmp_path, kind):
    """The tile planner picks level 1 for a 2x coarser target, and the read-ahead threads of
    slide scoring get the same pixels as a serial read (tifffile, pydicom and wsidicom backends)."""
    from medseg.pathology.tiling import make_grid, plan_slide_tiles, read_ahead, read_tile

    img = _image(512, 512, seed=7)
    if kind == "ome":
        path = tmp_path / "p.ome.tif"
        write_ome_pyramid(path, img, mpp=0.25)
    else:
        path = tmp_path / "p.dcm"
        write_dicom_wsi(path, img, image_type=kind == "wsidicom", spacing_mm=0.00025)
    with open_slide(path, reader="dicom" if kind == "wsidicom" else "auto") as s:
        assert s.backend == {"ome": "tifffile"}.get(kind, kind)
        grid = make_grid(s, target_mpp=0.5, tile=64, overlap=16)
        tiles = plan_slide_tiles(s, grid, None)
        assert tiles and all(t.level == (1 if kind == "ome" else 0) for t in tiles)
        serial = [read_tile(s, t, 64) for t in tiles]
        threaded = [
            img for _t, img in read_ahead(tiles, lambda t: read_tile(s, t, 64), batch_size=4, workers=2)
        ]
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded)) and len(serial) == len(threaded)


def test_batch_rows_for_unreadable_formats(tmp_path):
    """In a batch, an OME-TIFF without pixel size and a DICOM WSI with missing frames are failed rows
    with their one-line reasons (exit code 5); the batch goes on."""
    import csv
    from types import SimpleNamespace

    from medseg.pathology.batch import score_slides
    from medseg.pathology.score import ScoreConfig

    write_ome_pyramid(tmp_path / "nompp.ome.tif", _image(seed=8), mpp=None)
    write_dicom_wsi(tmp_path / "frames.dcm", _image(seed=9), frames_declared=30)
    detector = SimpleNamespace(config=SimpleNamespace(margins={}), source="none", predict=None)
    out = tmp_path / "out"
    res = score_slides(
        [tmp_path / "nompp.ome.tif", tmp_path / "frames.dcm"], out, ScoreConfig(), detector=detector
    )
    assert res.exit_code == 5
    rows = {r["slide"]: r for r in csv.DictReader((out / "scores.csv").open())}
    assert rows["nompp"]["status"] == "failed" and "--slide-mpp" in rows["nompp"]["reason"]
    assert rows["frames"]["status"] == "failed" and "NumberOfFrames is 30" in rows["frames"]["reason"]
