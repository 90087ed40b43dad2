"""Segment cells in a batch of images: overlap-tile U-Net, instance separation, tables, report.

Per image ``NAME``: ``NAME_labels.tif`` (instances, 16/32-bit; stacks as multi-page),
optional ``NAME_prob.tif``, ``NAME_overlay.png`` (``NAME_overlay_pNNN.png`` per page of a
stack), ``NAME_cells.csv``; per batch ``summary.json`` and ``report.html``. A bad image is
recorded in the summary with its reason and the batch goes on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.cells.instances import InstanceConfig, instances_from_probability
from medseg.cells.io import (
    list_images,
    normalise,
    overlay_outlines,
    read_image,
    write_float_tiff,
    write_labels,
    write_png,
)
from medseg.engine.checkpoint import sample_data_path
from medseg.errors import InputError, ModelError
from medseg.io.atomic import check_output, safe_name, write_text

log = logging.getLogger("medseg.cells")

DEMO_WEIGHTS = sample_data_path("cells", "demo_unet2015.safetensors")
CSV_COLUMNS = ["page", "label", "area", "centroid_y", "centroid_x", "perimeter", "eccentricity", "mean_intensity"]


@dataclass
class SegmentConfig:
    tile: int = 512  # input tile edge (rounded up to a size the net accepts)
    batch_size: int = 4  # tiles per forward pass
    amp: str = "auto"  # auto: bf16/fp16 on CUDA, fp32 on CPU
    save_probability: bool = False
    instances: InstanceConfig = field(default_factory=InstanceConfig)
    report: bool = True


def cell_table(labels: np.ndarray, intensity: np.ndarray, page: int = 0) -> list[dict[str, Any]]:
    """Per-cell measurements (skimage regionprops); intensity is the raw (gray) plane."""
    from skimage.measure import regionprops

    rows = []
    for r in regionprops(labels, intensity_image=intensity):
        cy, cx = r.centroid
        rows.append({"page": page, "label": int(r.label), "area": int(r.area), "centroid_y": round(float(cy), 2),
                     "centroid_x": round(float(cx), 2), "perimeter": round(float(r.perimeter), 2),
                     "eccentricity": round(float(r.eccentricity), 4),
                     "mean_intensity": round(float(r.intensity_mean), 4)})
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class CellSegmenter:
    """Holds the model; ``segment_plane`` turns one 2D plane into probabilities and instances."""

    def __init__(self, weights: str | Path | None = None, *, device: str = "auto",
                 config: SegmentConfig | None = None) -> None:
        from medseg.cells.train import load_model
        from medseg.engine.runtime import resolve_amp_dtype, select_device

        self.config = config or SegmentConfig()
        self.weights = Path(weights) if weights is not None else DEMO_WEIGHTS
        if weights is None:
            if not DEMO_WEIGHTS.is_file():
                raise ModelError("no --weights given and the demo weights are missing", path=DEMO_WEIGHTS)
            log.warning("using the demo weights (trained on synthetic images only, not for clinical use)")
        self.device = select_device(device)
        self.amp_dtype = resolve_amp_dtype(self.device, self.config.amp)
        self.model, self.model_config, self.meta = load_model(self.weights, self.device)
        if self.model_config.in_channels != 1:
            raise ModelError(f"model expects {self.model_config.in_channels} channels; cells models take 1",
                             path=self.weights)

    def predict(self, plane: np.ndarray) -> np.ndarray:
        """Cell probability (H, W) for a raw 2D plane (normalised here)."""
        from medseg.cells.predict import predict_image

        probs = predict_image(self.model, self.model_config, normalise(plane), device=self.device,
                              tile=self.config.tile, batch_size=self.config.batch_size, amp_dtype=self.amp_dtype)
        return probs[1]

    def segment_plane(self, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        prob = self.predict(plane)
        return prob, instances_from_probability(prob, self.config.instances)


def _outputs(out_dir: Path, stem: str, pages: int, config: SegmentConfig) -> dict[str, Path]:
    paths = {"labels": out_dir / f"{stem}_labels.tif", "cells": out_dir / f"{stem}_cells.csv"}
    if config.save_probability:
        paths["probability"] = out_dir / f"{stem}_prob.tif"
    if pages == 1:
        paths["overlay"] = out_dir / f"{stem}_overlay.png"
    else:
        for k in range(pages):
            paths[f"overlay_p{k:03d}"] = out_dir / f"{stem}_overlay_p{k:03d}.png"
    return paths


def _unique_stems(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = safe_name(p.stem)
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n + 1}")
    return stems


def segment_one(segmenter: CellSegmenter, path: Path, out_dir: Path, stem: str, *, overwrite: bool) -> dict[str, Any]:
    """Segment one file (2D or a stack, plane by plane) and write its outputs."""
    t0 = time.perf_counter()
    planes, meta = read_image(path)
    outputs = _outputs(out_dir, stem, planes.shape[0], segmenter.config)
    for p in outputs.values():
        check_output(p, overwrite=overwrite)
    labels_stack, prob_stack, rows, overlays = [], [], [], {}
    for k, plane in enumerate(planes):
        prob, labels = segmenter.segment_plane(plane)
        labels_stack.append(labels)
        if segmenter.config.save_probability:
            prob_stack.append(prob)
        rows += cell_table(labels, plane, page=k)
        key = "overlay" if planes.shape[0] == 1 else f"overlay_p{k:03d}"
        overlays[key] = overlay_outlines(normalise(plane), labels)
    labels_arr = np.stack(labels_stack) if len(labels_stack) > 1 else labels_stack[0]
    write_labels(outputs["labels"], labels_arr)
    if prob_stack:
        write_float_tiff(outputs["probability"], np.stack(prob_stack) if len(prob_stack) > 1 else prob_stack[0])
    for key, rgb in overlays.items():
        write_png(outputs[key], rgb)
    write_text(outputs["cells"], _csv_text(rows))
    areas = [r["area"] for r in rows]
    per_page = [int(lab.max()) for lab in labels_stack]
    return {
        "image": str(path), "status": "ok", "pages": int(planes.shape[0]), "height": meta["height"],
        "width": meta["width"], "dtype": meta["dtype"], "color": meta["color"], "cells": int(sum(per_page)),
        "cells_per_page": per_page, "median_area": float(np.median(areas)) if areas else float("nan"),
        "seconds": round(time.perf_counter() - t0, 3), "outputs": {k: str(v) for k, v in outputs.items()},
        "_overlay": next(iter(overlays.values())), "_areas": areas,
    }


def segment_images(inputs: list[str | Path], out_dir: str | Path, *, weights: str | Path | None = None,
                   device: str = "auto", config: SegmentConfig | None = None, overwrite: bool = False,
                   show_progress: bool = True) -> dict[str, Any]:
    """Segment every image (files or folders of images) into ``out_dir``; return the summary.

    Per-image problems (unreadable, empty, unsupported shape) are recorded under ``failures``
    and skipped; the caller decides whether that is an error (the CLI exits 5).
    """
    from medseg.engine.progress import progress

    config = config or SegmentConfig()
    out_dir = Path(out_dir)
    paths = list_images(inputs)
    if not paths:
        raise InputError("no input images (give files or folders with .png/.tif images)")
    summary_path, report_path = out_dir / "summary.json", out_dir / "report.html"
    check_output(summary_path, overwrite=overwrite)
    if config.report:
        check_output(report_path, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    segmenter = CellSegmenter(weights, device=device, config=config)
    results, failures = [], []
    t0 = time.perf_counter()
    for path, stem in progress(list(zip(paths, _unique_stems(paths))), desc="cells", enabled=show_progress,
                               unit="image"):
        try:
            result = segment_one(segmenter, path, out_dir, stem, overwrite=overwrite)
        except InputError as exc:
            log.warning("skipped %s", exc)
            failures.append({"image": str(path), "status": "failed", "error": str(exc)})
            continue
        log.info("%s: %d cells (%.2f s)", path.name, result["cells"], result["seconds"])
        results.append(result)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    summary = {
        "command": "cells-segment", "out_dir": str(out_dir), "weights": str(segmenter.weights),
        "model": segmenter.model_config.to_dict(), "training_data": segmenter.meta.training_data,
        "device": str(segmenter.device), "amp": str(segmenter.amp_dtype), "config": asdict(config),
        "images": public, "failures": failures, "n_ok": len(results), "n_failed": len(failures),
        "total_cells": int(sum(r["cells"] for r in results)), "seconds": round(time.perf_counter() - t0, 3),
    }
    write_text(summary_path, json.dumps(summary, indent=2, default=str))
    if config.report:
        from medseg.cells.report import segmentation_report

        segmentation_report(summary, results, demo=segmenter.weights == DEMO_WEIGHTS).write_html(report_path)
        summary["report"] = str(report_path)
    return summary
