"""Segment cells in a batch of images: overlap-tile U-Net, instance separation, tables, report.

Per image ``NAME``: ``NAME_labels.tif`` (instances, 16/32-bit; stacks as multi-page),
optional ``NAME_prob.tif``, ``NAME_overlay.png`` (``NAME_overlay_pNNN.png`` per page of a
stack), ``NAME_cells.csv``; per batch ``summary.json`` and ``report.html``.

Contract (:func:`segment_images`): every output is checked before any work (exists -> exit 3
unless ``overwrite``/``resume``; not writable -> exit 2), then the model is loaded (exit 4), and
only then is anything written. A bad image becomes a failed item with its reason and the batch
goes on; a failed image leaves none of its outputs behind. ``summary.json`` describes this run
only; with ``resume`` images done in an earlier run are kept (status ``skipped``) and the rest
(new or failed before) are segmented.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.cells.instances import InstanceConfig, instances_from_maps
from medseg.cells.io import (
    check_pages,
    check_positive,
    list_images,
    normalise,
    overlay_outlines,
    read_image,
    write_float_tiff,
    write_labels,
    write_png,
)
from medseg.cells.model import DEMO_COMPANIONS, DEMO_WEIGHTS, DEMO_WEIGHTS_BY_STAIN
from medseg.cells.stain import (
    StainDecision,
    detect_stain,
    empty_field,
    he_plane_of,
    normalise_for_stain,
    nuclear_plane,
    uses_local_contrast,
)
from medseg.cells.table import cell_table, csv_text
from medseg.errors import InputError, ModelError, OutputExistsError
from medseg.io.atomic import check_apart, check_writable, safe_name, write_text
from medseg.results import FAILED, OK, SKIPPED, ItemResult, RunResult

if TYPE_CHECKING:
    from medseg.engine.predictor import Predictor
    from medseg.scale.items import Mapper

log = logging.getLogger("medseg.cells")

COMMAND = "cells-segment"
SUMMARY, REPORT = "summary.json", "report.html"
MAX_FIGURES = 6  # overlays kept (as thumbnails) for the report
THUMB_EDGE = 768


@dataclass
class SegmentConfig:
    weights: str | Path | None = None  # None: the shipped demo weights (with a warning)
    device: str = "auto"
    amp: str = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    tile: int = 512  # output tile edge (the whole image when smaller), plus the net's margin around it
    batch_size: int = 4  # tiles per forward pass
    save_probability: bool = False
    channel: int | None = None  # channel of a multi-channel image (None: RGB stays colour, else the first)
    stain: str = "auto"  # auto | fluo | phase | he | ihc
    # typical cell diameter: px (or um with pixel_size); "auto" (default: estimated by first passes at
    # scale 1 and 1/2); None: the model's own scale. auto chosen on the 60 real DSB validation images:
    # dataset AP@0.5 0.657 vs 0.631 (zoomed 2x, as 40x against 20x: 0.590 vs 0.400)
    diameter: float | str | None = "auto"
    pixel_size: float | None = None  # um per pixel: then ``diameter`` is in um
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    report: bool = True
    overwrite: bool = False
    resume: bool = False
    progress: bool = False

    def settings(self) -> dict[str, Any]:
        """What decides the outputs (compared on --resume)."""
        return {
            "tile": self.tile,
            "save_probability": self.save_probability,
            "channel": self.channel,
            "stain": self.stain,
            "diameter": self.diameter,
            "pixel_size": self.pixel_size,
            "instances": asdict(self.instances),
        }


DEFAULT_TRAIN_DIAMETER = 23.0  # px: median cell diameter of the synthetic training images
AUTO_MIN_CELLS = 3  # a first pass needs this many cells to estimate the diameter
# rescale only when the estimate is off the training scale by more than the training's scale jitter
# (0.6-1.6) covers: 0.1, 0.25 and 0.4 tie on the 20 held-out DSB training images (AP@0.5 0.683-0.684
# native, 0.584-0.585 zoomed 2x; 0.6: 0.633 / 0.527), and 0.4 saves the third pass on most images
AUTO_TOLERANCE = 0.4
AUTO_HALF_BELIEF = 0.9  # the 1/2 pass is believed when its cells are >= this x the training size there


@dataclass
class PlaneResult:
    prob: np.ndarray  # (H, W) cell probability at the input size (what --save-prob writes)
    labels: np.ndarray  # (H, W) instances at the input size
    nuclear: np.ndarray  # (H, W) the plane the net read, raw units (for the table and overlay)
    stain: StainDecision
    diameter: float | None  # the diameter used (px of the input), None: the model's own scale
    scale: float  # input -> model scale factor
    maps: np.ndarray | None = None  # (K, H, W) the net's output maps (decoded as its target says)
    weights: str = ""  # file name of the weights that ran (a stain's specialist or the main model)


def _check_device(config: SegmentConfig) -> None:
    """Resolve the device, precision and runtime as the Predictor will (raising what it would raise)."""
    from medseg.engine.openvino_runtime import resolve_runtime
    from medseg.engine.runtime import resolve_amp_dtype, select_device

    device = select_device(str(config.device))
    resolve_runtime(None, device_type=device.type, amp_dtype=resolve_amp_dtype(device, config.amp))


def train_diameter(meta: Any) -> float:
    """Median cell diameter (px) of the weights' training data (stored in ``notes``) or the default."""
    try:
        value = float(json.loads(meta.notes or "{}").get("diameter") or DEFAULT_TRAIN_DIAMETER)
    except (ValueError, TypeError, AttributeError):
        value = DEFAULT_TRAIN_DIAMETER
    return value if value > 0 else DEFAULT_TRAIN_DIAMETER


def median_diameter(labels: np.ndarray) -> float | None:
    """Median equivalent-circle diameter of the instances (None below AUTO_MIN_CELLS cells)."""
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if areas.size < AUTO_MIN_CELLS:
        return None
    return float(2 * np.sqrt(np.median(areas) / np.pi))


class CellSegmenter:
    """Holds the model behind the engine Predictor; ``segment_plane`` turns a 2D plane into instances."""

    def __init__(self, config: SegmentConfig | None = None, *, specialists: bool = True) -> None:
        from medseg.cells.model import load_model
        from medseg.cells.targets import out_channels, target_of
        from medseg.engine.weights import resolve_weights

        self.config = config or SegmentConfig()
        self.weights, self.is_demo = resolve_weights(self.config.weights, demo=DEMO_WEIGHTS)
        model, self.model_config, self.meta = load_model(self.weights)
        if self.model_config.in_channels != 1:
            raise ModelError(
                f"model expects {self.model_config.in_channels} channels; cells models take 1",
                path=self.weights,
            )
        try:
            self.target = target_of(self.meta.config)
        except ValueError as exc:
            raise ModelError(str(exc), path=self.weights) from None
        if getattr(self.model_config, "num_classes", out_channels(self.target)) != out_channels(self.target):
            raise ModelError(
                f"{self.target} weights need {out_channels(self.target)} output channels, these have "
                f"{self.model_config.num_classes}",
                path=self.weights,
            )
        # the Predictor (for OpenVINO: reading and compiling the converted net, about 0.05 s per net) is built
        # on first use: a batch of H&E images never runs the main nets, nor a fluorescence batch the specialists
        self._model: Any = model
        self._predictor: Predictor | None = None
        _check_device(self.config)  # an unusable --device / --amp / --runtime is refused now, not at image 1

        self.train_diameter = train_diameter(self.meta)
        # without --weights, the shipped per-stain specialists take their stains (loaded on first use), and
        # the shipped companions (DEMO_COMPANIONS) are averaged with the main net: two independently trained
        # nets, the one lever that beat the single net on held-out and validation images alike
        self.stain_weights: dict[str, Path] = {}
        self._specialists: dict[Path, CellSegmenter] = {}
        self.companions: list[CellSegmenter] = []
        if self.is_demo and specialists:
            from medseg.engine.weights import demo_weights_path

            found = {stain: demo_weights_path(name) for stain, name in DEMO_WEIGHTS_BY_STAIN.items()}
            self.stain_weights = {stain: path for stain, path in found.items() if path.is_file()}
            self.companions = self._shipped_companions(DEMO_WEIGHTS)

    @property
    def predictor(self) -> Predictor:
        """This net's engine Predictor, built on first use."""
        if self._predictor is None:
            from medseg.cells.predict import make_predictor
            from medseg.cells.targets import postprocess_for

            self._predictor = make_predictor(
                self._model,
                device=self.config.device,
                amp=self.config.amp,
                config=self.model_config,
                postprocess=postprocess_for(self.target),
            )
            self._model = None  # the Predictor holds it now
        return self._predictor

    def _described_predictor(self) -> Predictor:
        """The Predictor whose device and runtime a summary reports: this net's if it ran, else a
        specialist's that ran (all are built from one config), else this one's, built now."""
        if self._predictor is None:
            for other in self._specialists.values():
                if other._predictor is not None:
                    return other._predictor
        return self.predictor

    def _shipped_companions(self, name: str) -> list[CellSegmenter]:
        """The installed companions (DEMO_COMPANIONS) of the shipped file ``name``."""
        from medseg.engine.weights import demo_weights_path

        paths = [demo_weights_path(n) for n in DEMO_COMPANIONS.get(name, ())]
        return [self._companion(p) for p in paths if p.is_file()]

    def _companion(self, path: Path) -> CellSegmenter:
        """A net whose maps are averaged with this one's: it must read the same plane and mean the same."""
        other = CellSegmenter(replace(self.config, weights=path), specialists=False)
        local = uses_local_contrast(self.meta.normalisation)
        if other.target != self.target or uses_local_contrast(other.meta.normalisation) != local:
            raise ModelError("a companion net must share the instance target and normalisation", path=path)
        return other

    def for_stain(self, stain: str) -> CellSegmenter:
        """The segmenter whose weights take ``stain``: a shipped specialist, else this one."""
        path = self.stain_weights.get(stain)
        if path is None:
            return self
        if path not in self._specialists:
            other = CellSegmenter(replace(self.config, weights=path), specialists=False)
            other.is_demo = True
            other.companions = other._shipped_companions(DEMO_WEIGHTS_BY_STAIN[stain])
            self._specialists[path] = other
        return self._specialists[path]

    def predict(self, plane: np.ndarray, *, stain: str = "fluo", scale: float = 1.0) -> np.ndarray:
        """Cell probability (H, W) for a raw 2D nuclear plane (see :meth:`predict_maps`)."""
        from medseg.cells.targets import foreground_probability

        return foreground_probability(self.predict_maps(plane, stain=stain, scale=scale), self.target)

    def predict_maps(self, plane: np.ndarray, *, stain: str = "fluo", scale: float = 1.0) -> np.ndarray:
        """The net's output maps (K, H, W) for a raw 2D nuclear plane: rescaled by ``scale`` to the
        model's object size, normalised for ``stain``, predicted, and mapped back to the plane's size."""
        from skimage.transform import rescale, resize

        from medseg.cells.predict import predict_image

        x = plane
        if scale != 1.0:
            x = rescale(plane, scale, order=1, anti_aliasing=scale < 1, preserve_range=True)
            x = x.astype(np.float32, copy=False)
        x = normalise_for_stain(x, stain, local=uses_local_contrast(self.meta.normalisation))
        nets = [self, *self.companions]
        maps = sum(
            predict_image(
                n.predictor, n.model_config, x, tile=self.config.tile, batch_size=self.config.batch_size
            )
            for n in nets
        ) / len(nets)
        if maps.shape[1:] != plane.shape:
            maps = resize(maps, (maps.shape[0], *plane.shape), order=1, preserve_range=True)
            maps = maps.astype(np.float32)
        return maps

    @property
    def weights_name(self) -> str:
        """The file(s) whose maps make this segmenter's output, e.g. ``a.safetensors + b.safetensors``."""
        return " + ".join(p.name for p in [self.weights, *(c.weights for c in self.companions)])

    def _given_diameter(self) -> float | None:
        d = self.config.diameter
        if d is None or d == "auto":
            return None
        d = float(d)
        if d <= 0:
            raise InputError(f"--diameter must be positive, got {d:g}")
        return d / self.config.pixel_size if self.config.pixel_size else d

    def analyse(self, plane: np.ndarray, *, path: Any = None) -> PlaneResult:
        """One plane (gray (H, W) or RGB (H, W, 3)): stain, nuclear plane, size, probability, instances;
        by the weights for its stain (:meth:`for_stain`)."""
        stain = self.config.stain
        decision = detect_stain(plane, path=path) if stain == "auto" else StainDecision(stain, "given")
        return self.for_stain(decision.stain).analyse_as(plane, decision)

    def empty_result(self, plane: np.ndarray, reason: str) -> PlaneResult:
        """No cells in a plane that holds nothing to segment (:func:`medseg.cells.stain.empty_field`)."""
        gray = plane.mean(axis=-1) if plane.ndim == 3 else plane
        zeros = np.zeros(gray.shape, np.float32)
        return PlaneResult(
            prob=zeros,
            labels=np.zeros(gray.shape, np.int32),
            nuclear=gray.astype(np.float32),
            stain=StainDecision("none", reason),
            diameter=None,
            scale=1.0,
        )

    def analyse_as(self, plane: np.ndarray, decision: StainDecision) -> PlaneResult:
        """:meth:`analyse` with the stain decided, by this segmenter's own weights."""
        nuclear = nuclear_plane(plane, decision.stain, he_plane=he_plane_of(self.meta.normalisation))
        diameter = self._given_diameter()
        scale = self.train_diameter / diameter if diameter else 1.0
        maps = self.predict_maps(nuclear, stain=decision.stain, scale=scale)
        labels = instances_from_maps(maps, self.target, self.config.instances)
        if self.config.diameter == "auto":
            estimate = self._estimate_diameter(nuclear, decision.stain, labels)
            if estimate is not None:
                diameter = estimate
                if abs(self.train_diameter / estimate - 1) > AUTO_TOLERANCE:
                    scale = self.train_diameter / estimate
                    maps = self.predict_maps(nuclear, stain=decision.stain, scale=scale)
                    labels = instances_from_maps(maps, self.target, self.config.instances)
        from medseg.cells.targets import foreground_probability

        prob = foreground_probability(maps, self.target)
        return PlaneResult(prob, labels, nuclear, decision, diameter, scale, maps, self.weights_name)

    def _estimate_diameter(self, nuclear: np.ndarray, stain: str, labels: np.ndarray) -> float | None:
        """First passes at scale 1 (``labels``) and 1/2: the median cell diameter each finds, in input
        px. Cells much larger than the training size fragment at scale 1 into pieces of about the
        training size, so the scale-1 pass cannot tell them from cells of the training size; the 1/2
        pass can: where its cells, at that scale, are at least ``AUTO_HALF_BELIEF`` x the training
        diameter, they are big cells seen whole and its estimate is believed; otherwise the scale-1
        estimate (small cells shrink below the size limit at 1/2 and bias it upwards). Chosen on the 20
        held-out DSB training images, native and zoomed 2x, against their annotated diameters (median
        log error 0.06 / 0.06, 0 % / 16 % of images more than 30 % off; the previous rule, the pass
        whose cells were closest to the training size, 0.06 / 0.14 and 0 % / 42 %)."""
        at_half = median_diameter(self._labels_at(nuclear, stain, 0.5))  # px of the half-scale frame
        if at_half is not None and at_half >= AUTO_HALF_BELIEF * self.train_diameter:
            return at_half / 0.5
        full = median_diameter(labels)
        return full if full is not None else (at_half / 0.5 if at_half is not None else None)

    def _labels_at(self, nuclear: np.ndarray, stain: str, scale: float) -> np.ndarray:
        """Instances at ``scale`` (in the rescaled frame, for measuring sizes)."""
        from skimage.transform import rescale

        x = rescale(nuclear, scale, order=1, anti_aliasing=scale < 1, preserve_range=True).astype(np.float32)
        return instances_from_maps(self.predict_maps(x, stain=stain), self.target, self.config.instances)

    def segment_plane(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        r = self.analyse(plane)
        return r.prob, r.labels

    def describe(self) -> dict[str, Any]:
        return {
            "weights": str(self.weights),
            "demo_weights": self.is_demo,
            "model": self.model_config.to_dict(),
            "training_data": self.meta.training_data,
            "instance_target": self.target,
            **({"averaged_with": [str(c.weights) for c in self.companions]} if self.companions else {}),
            **(
                {"weights_by_stain": {k: str(v) for k, v in self.stain_weights.items()}}
                if self.stain_weights
                else {}
            ),
            **self._described_predictor().describe(),
        }


def _unique_stems(paths: list[Path]) -> list[str]:
    """One output name per image: ``a.png`` and ``a.tif`` -> ``a``, ``a_2``; a file already called
    ``a_2.png`` then gets ``a_2_2`` (names are compared without case: macOS and Windows folders)."""
    taken: set[str] = set()
    stems = []
    for p in paths:
        base = safe_name(p.stem)
        stem, n = base, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}_{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def _existing_outputs(out_dir: Path, stem: str) -> list[Path]:
    """Files an earlier run wrote for ``stem`` (whatever its page count or options)."""
    names = [f"{stem}_labels.tif", f"{stem}_cells.csv", f"{stem}_prob.tif", f"{stem}_overlay.png"]
    found = [out_dir / n for n in names if (out_dir / n).exists()]
    return found + sorted(out_dir.glob(f"{stem}_overlay_p[0-9][0-9][0-9].png"))


def _outputs(out_dir: Path, stem: str, pages: int, config: SegmentConfig) -> dict[str, Path]:
    paths = {"labels": out_dir / f"{stem}_labels.tif"}
    if config.save_probability:
        paths["probability"] = out_dir / f"{stem}_prob.tif"
    if pages == 1:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    else:
        for k in range(pages):
            paths[f"overlay_p{k:03d}"] = out_dir / f"{stem}_overlay_p{k:03d}.png"
    paths["cells"] = out_dir / f"{stem}_cells.csv"  # written last: its presence marks a complete image
    return paths


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / THUMB_EDGE)))
    return np.ascontiguousarray(rgb[::step, ::step])


def segment_one(
    segmenter: CellSegmenter, path: Path, out_dir: Path, stem: str
) -> tuple[ItemResult, np.ndarray, list[int]]:
    """Segment one file (2D or a stack, plane by plane) and write its outputs.

    Returns the item, a thumbnail of the first overlay and the cell areas. If anything fails,
    the outputs already written for this image are removed before the error propagates.
    """
    t0 = time.perf_counter()
    planes, meta = read_image(path, channel=segmenter.config.channel, keep_color=True)
    outputs = _outputs(out_dir, stem, planes.shape[0], segmenter.config)
    written: list[Path] = []
    stains: list[dict[str, str]] = []
    diameters: list[float | None] = []
    models: list[str] = []
    try:
        labels_stack, prob_stack, rows, thumb = [], [], [], None
        for k, plane in enumerate(planes):
            empty = empty_field(plane, meta["dtype"])  # glass: 0 cells, its reason as the stain
            r = segmenter.empty_result(plane, empty) if empty else segmenter.analyse(plane, path=path)
            prob, labels = r.prob, r.labels
            if not stains or stains[-1] != r.stain.to_dict():
                stains.append(r.stain.to_dict())
            diameters.append(None if r.diameter is None else round(r.diameter, 2))
            models.append(r.weights)
            labels_stack.append(labels)
            if segmenter.config.save_probability:
                prob_stack.append(prob)
            rows += cell_table(labels, r.nuclear, page=k)
            rgb = overlay_outlines(normalise(r.nuclear), labels)
            written.append(
                write_png(outputs["overlay" if planes.shape[0] == 1 else f"overlay_p{k:03d}"], rgb)
            )
            thumb = _thumbnail(rgb) if thumb is None else thumb
        written.append(
            write_labels(
                outputs["labels"], np.stack(labels_stack) if len(labels_stack) > 1 else labels_stack[0]
            )
        )
        if prob_stack:
            written.append(
                write_float_tiff(
                    outputs["probability"], np.stack(prob_stack) if len(prob_stack) > 1 else prob_stack[0]
                )
            )
        written.append(write_text(outputs["cells"], csv_text(rows)))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    areas = [r["area"] for r in rows]
    per_page = [int(lab.max()) for lab in labels_stack]
    item = ItemResult(
        name=str(path),
        outputs={k: str(v) for k, v in outputs.items()},
        metrics={
            "pages": int(planes.shape[0]),
            "height": meta["height"],
            "width": meta["width"],
            "dtype": meta["dtype"],
            "color": meta["color"],
            "channel": meta.get("channel"),
            "stain": stains[0]["stain"] if len(stains) == 1 else [x["stain"] for x in stains],
            "stain_reason": stains[0]["how"] if len(stains) == 1 else [x["how"] for x in stains],
            "diameter_px": diameters[0] if len(diameters) == 1 else diameters,
            "weights": models[0] if len(set(models)) == 1 else models,
            "cells": int(sum(per_page)),
            "cells_per_page": per_page,
            "median_area": float(np.median(areas)) if areas else None,
            "seconds": round(time.perf_counter() - t0, 3),
        },
    )
    return item, thumb, areas


def _previous_items(out_dir: Path, config: SegmentConfig) -> dict[str, dict[str, Any]]:
    """--resume: the images an earlier run finished (status ok, every output still there)."""
    path = out_dir / SUMMARY
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        items = doc["items"]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; every image is segmented again", path)
        return {}
    if doc.get("summary", {}).get("settings") != json.loads(json.dumps(config.settings())):
        log.warning(
            "the earlier run in %s used other settings; its finished images are kept as they are", out_dir
        )
    return {
        str(Path(i["name"]).resolve()): i
        for i in items
        if i.get("status") in (OK, SKIPPED)
        and i.get("outputs")
        and all(Path(p).is_file() for p in i["outputs"].values())
    }


def _preflight(paths: list[Path], stems: list[str], out_dir: Path, config: SegmentConfig) -> None:
    """Before any work: the folder must be writable and hold no outputs this run would replace.

    One image alone whose TIFF pages differ in size is refused here (exit 2, nothing written); in a
    batch it is a failed item like any unreadable image.
    """
    check_positive(config.diameter, "--diameter")
    check_positive(config.pixel_size, "--pixel-size")
    if len(paths) == 1:
        check_pages(paths[0])
    check_writable(out_dir)
    if config.overwrite or config.resume or not out_dir.is_dir():
        return
    batch = [out_dir / n for n in (SUMMARY, REPORT) if (out_dir / n).exists()]
    existing = batch + [p for stem in stems for p in _existing_outputs(out_dir, stem)]
    if existing:
        names = ", ".join(p.name for p in existing[:3]) + (
            f" and {len(existing) - 3} more" if len(existing) > 3 else ""
        )
        raise OutputExistsError(
            f"outputs exist ({names}); use --overwrite to replace them or --resume to keep finished images",
            path=out_dir,
        )


def _remove(paths: set[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _segment_item(
    segmenter: CellSegmenter, out_dir: Path, path_stem: tuple[Path, str]
) -> tuple[ItemResult, np.ndarray, list[int]]:
    """:func:`segment_one` for one (path, stem) item: what a mapper runs, here or on a Ray worker."""
    return segment_one(segmenter, path_stem[0], out_dir, path_stem[1])


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, InputError):
        return exc.message
    if isinstance(exc, OSError):
        return f"cannot write its outputs: {exc.strerror or exc}" + (
            f" ({exc.filename})" if exc.filename else ""
        )
    return f"unexpected error ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def _run_summary(
    result: RunResult, out_dir: Path, segmenter: CellSegmenter, config: SegmentConfig, t0: float
) -> dict[str, Any]:
    """The run's summary (weights, settings, counts) over the items recorded so far."""
    cells = sum(int(i.metrics.get("cells", 0)) for i in result.items if i.status != FAILED)
    return {
        "out_dir": str(out_dir),
        **segmenter.describe(),
        "settings": config.settings(),
        "batch_size": config.batch_size,
        "images": len(result.items),
        "segmented": result.counts[OK],
        "kept_from_earlier_run": result.counts[SKIPPED],
        "failed": result.counts[FAILED],
        # planes segmented (a multi-page TIFF counts each page; its item has "pages" too)
        "pages": sum(int(i.metrics.get("pages", 0)) for i in result.items if i.status != FAILED),
        "total_cells": cells,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def segment_images(
    inputs: list[str | Path],
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    *,
    mapper: Mapper | None = None,
) -> RunResult:
    """Segment every image (files or folders of images) into ``out_dir``: one item per image.

    ``mapper`` decides where each image is segmented (default: here, one after the other;
    :class:`medseg.scale.items.RayMapper` for ``--ray``); rows, resume and summary are recorded
    here either way, so both runs give the same outputs.
    """
    from medseg.engine.progress import progress_bar
    from medseg.scale.items import local_map

    config = config or SegmentConfig()
    out_dir = Path(out_dir)
    paths = list_images(inputs)
    if not paths:
        where = f"in {inputs[0]}" if len(inputs) == 1 else f"in {', '.join(map(str, inputs))}"
        raise InputError(f"no input images {where} (give files or folders with .png, .tif or .jpg images)")
    stems = _unique_stems(paths)
    check_apart(out_dir, [config.weights, *inputs, *paths])  # never into (or around) an input folder
    _preflight(paths, stems, out_dir, config)
    segmenter = CellSegmenter(config)  # a bad model stops here, before anything is written
    previous = _previous_items(out_dir, config) if config.resume else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    result = RunResult(command=COMMAND)
    thumbs: list[tuple[str, np.ndarray, int]] = []
    areas: list[int] = []
    t0 = time.perf_counter()
    todo = [(p, s) for p, s in zip(paths, stems) if str(p.resolve()) not in previous]
    # earlier outputs (--overwrite / --resume), listed before any item of this run writes
    stale_of = {stem: set(_existing_outputs(out_dir, stem)) for _p, stem in todo}
    outcomes = (mapper or local_map)(functools.partial(_segment_item, segmenter, out_dir), todo)
    try:
        for path, stem in progress_bar(
            list(zip(paths, stems)), desc="cells", enabled=config.progress, unit="image"
        ):
            done = previous.get(str(path.resolve()))
            if done is not None:
                result.add(
                    ItemResult(
                        name=str(path),
                        status=SKIPPED,
                        reason="segmented in an earlier run (--resume)",
                        outputs=done["outputs"],
                        metrics=done.get("metrics", {}),
                    )
                )
                continue
            stale = stale_of[stem]
            outcome = next(outcomes)
            if isinstance(outcome, Exception):  # one bad image must not stop the batch
                exc = outcome
                log.debug("%s failed", path, exc_info=exc)
                item = ItemResult(name=str(path), status=FAILED, reason=_failure_reason(exc))
                log.info("%s: failed: %s", path.name, item.reason)
                result.add(item)
                _remove(stale)  # no earlier outputs that would contradict this failure
                continue
            item, thumb, item_areas = outcome
            _remove(stale - {Path(p) for p in item.outputs.values()})
            log.info(
                "%s: %d cells, stain %s (%s) (%.2f s)",
                path.name,
                item.metrics["cells"],
                item.metrics["stain"],
                item.metrics["stain_reason"],
                item.metrics["seconds"],
            )
            result.add(item)
            areas += item_areas
            if len(thumbs) < MAX_FIGURES:
                thumbs.append((path.name, thumb, item.metrics["cells"]))
    except KeyboardInterrupt:  # Ctrl-C: record what finished, so that --resume keeps it
        result.summary = {**_run_summary(result, out_dir, segmenter, config, t0), "interrupted": True}
        write_text(out_dir / SUMMARY, json.dumps(result.to_dict(), indent=2) + "\n")
        raise
    result.summary = _run_summary(result, out_dir, segmenter, config, t0)
    result.outputs["summary"] = str(out_dir / SUMMARY)
    if config.report:
        from medseg.cells.report import segmentation_report

        result.outputs["report"] = str(out_dir / REPORT)
        segmentation_report(result, thumbs, areas).write_html(out_dir / REPORT)
    if segmenter.is_demo:
        result.warnings.append(
            "demo weights (trained on public real data, DSB 2018 stage 1; see their metadata): "
            "research use, not for clinical use"
        )
    write_text(out_dir / SUMMARY, json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def human_summary(result: RunResult) -> str:
    """One line for the terminal."""
    s = result.summary
    pages = s.get("pages", 0)
    parts = [f"{s['segmented']} image(s) segmented" + (f" ({pages} pages)" if pages > s["images"] else "")]
    if s["kept_from_earlier_run"]:
        parts.append(f"{s['kept_from_earlier_run']} kept from an earlier run")
    if s["failed"]:
        parts.append(f"{s['failed']} failed (listed in {SUMMARY})")
    return f"{', '.join(parts)}: {s['total_cells']} cells -> {s['out_dir']}"
