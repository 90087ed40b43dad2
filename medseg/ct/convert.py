"""``medseg ct-convert``: stream a CT series through a kernel converter into a derived series.

One call (:func:`convert`) does the whole command: pre-flight of every input and output, the
conversion, and with a reference series the QA report. Nothing is published before everything
that can fail on the input has run: the converted series is written into a temporary folder/file
and the QA numbers are computed before it is renamed into place, so a bad reference or a corrupt
slice leaves no converted files behind that would block the corrected rerun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg import __version__
from medseg.ct.kernels import KernelSpec
from medseg.ct.metrics import AIR_HU, PADDING_MAX_HU
from medseg.errors import InputError
from medseg.io.atomic import check_apart, output_set
from medseg.io.volume import has_volume_suffix
from medseg.results import ItemResult, RunResult

log = logging.getLogger("medseg.ct")

METHOD = "residual CNN kernel conversion (Lee et al., Korean J Radiol 2019)"
FORMATS = ("dicom", "nifti")  # nifti = a volume file (.nii.gz, .nii, .nrrd, .mha by extension)


@dataclass
class ConvertConfig:
    """Everything ``ct-convert`` needs besides its paths."""

    source: str | None = None  # --from; optional with the sharpness-conditioned converter
    target: str | None = None  # --to
    weights: str | Path | None = None
    models_dirs: tuple[str | Path, ...] = ()
    vendor: str | None = None  # scanner vendor of --from/--to (also 'Philips:UB' in a name)
    series_uid: str | None = None
    output_format: str | None = None  # default: a volume for a volume file name or input, else DICOM
    dicom_format: str = "classic"  # 'enhanced': one Legacy Converted Enhanced CT file (held in memory)
    batch_size: int | None = None  # default: 16 on CUDA, 1 on CPU
    device: str = "auto"
    amp: str = "auto"
    pdf: bool = True  # QA report as PDF too (with a reference)
    overwrite: bool = False
    progress: bool = False
    to_sharpness: float | None = None  # convert by measured sharpness (medseg.ct.conditioned) ...
    like: str | Path | None = None  # ... or to the sharpness measured from this series


def input_kind(path: Path) -> str:
    """'dicom' for a folder or a DICOM file, 'volume' for NIfTI/NRRD/MHA."""
    from medseg.io.volume import is_volume_file

    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_dir():
        return "dicom"
    if not path.is_file():  # reading a named pipe or a device would wait forever
        raise InputError(
            "not a regular file or folder (a pipe or device?): save it to a file first", path=path
        )
    if is_volume_file(path):
        return "volume"
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".ima", ""):
        return "dicom"
    raise InputError("not a DICOM file/folder or a NIfTI/NRRD/MHA image", path=path)


def output_format(kind: str, output: Path, requested: str | None) -> str:
    """'dicom' or 'nifti' for this input kind and output name; InputError when they cannot go together."""
    from medseg.io.volume import check_volume_output

    fmt = requested or ("nifti" if kind == "volume" or has_volume_suffix(output) else "dicom")
    if fmt not in FORMATS:
        raise InputError(f"unknown output format '{fmt}': use {' or '.join(FORMATS)}")
    if fmt == "dicom" and kind != "dicom":
        raise InputError(
            "DICOM output needs a DICOM input (there is no patient/study to derive from); use --format nifti",
            path=output,
        )
    if fmt == "dicom" and has_volume_suffix(output):
        raise InputError(
            "DICOM output is a series folder, but this name ends like a volume file; choose another "
            "--out or --format nifti",
            path=output,
        )
    if fmt == "nifti":
        check_volume_output(output)
    return fmt


def default_batch_size(device) -> int:
    """Slices per forward pass: batches feed a GPU; on a CPU one slice at a time is fastest
    (a 512x512 slice already has 16 M activations per layer, batching only thrashes caches)."""
    return 16 if getattr(device, "type", "cpu") == "cuda" else 1


class PaddingGuard:
    """Wraps a slice predictor so out-of-field padding never reaches the network: padded pixels are
    fed as air (-1000 HU, so the field-of-view edge is no artificial cliff) and keep their input value
    in the output (they hold no data to convert)."""

    def __init__(self, predictor: Callable[[np.ndarray], np.ndarray]) -> None:
        self.predictor = predictor
        self.device = getattr(predictor, "device", None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        pad = batch <= PADDING_MAX_HU
        if not pad.any():
            return self.predictor(batch)
        out = np.array(self.predictor(np.where(pad, np.float32(AIR_HU), batch)), dtype=np.float32)
        out[pad[:, 0]] = batch[pad]
        return out


def convert_volume(
    predictor: Callable[[np.ndarray], np.ndarray],
    volume: np.ndarray,
    *,
    batch_size: int | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Convert an in-memory (z, y, x) HU volume slice by slice; returns a new float32 volume.

    ``predictor`` maps (B, 1, H, W) float32 to (B, H, W); batches are views of ``volume`` (no copy).
    Out-of-field padding (<= -1500 HU) is kept as it is (:class:`PaddingGuard`).
    """
    from medseg.engine.progress import progress_bar

    batch_size = batch_size or default_batch_size(getattr(predictor, "device", None))
    predictor = predictor if isinstance(predictor, PaddingGuard) else PaddingGuard(predictor)
    volume = np.asarray(volume, dtype=np.float32)
    out = np.empty(volume.shape, np.float32)
    for z in progress_bar(
        range(len(volume)), total=len(volume), desc="converting", enabled=progress, unit="slice"
    ):
        if z % batch_size == 0:  # the bar counts slices; the model sees batches
            out[z : z + batch_size] = predictor(volume[z : z + batch_size, None])
    return out


@dataclass
class _Plan:
    """What pre-flight found: every check passed before any work is done."""

    kind: str
    fmt: str
    shape: tuple[int, int, int]
    series: Any = None  # DicomSeries for DICOM input
    reference: Any = None  # SeriesRef when a QA report is asked for
    report_dir: Path | None = None


def default_report_dir(output: Path) -> Path:
    """OUT + '_qa' next to the output (``scan_B30f.nii.gz`` -> ``scan_B30f_qa``)."""
    return output.with_name(output.name.split(".")[0] + "_qa")


def preflight(
    input_path: Path,
    output_path: Path,
    cfg: ConvertConfig,
    reference: Path | None,
    report_dir: Path | None,
    source: str,
    target: str,
) -> _Plan:
    """Check every input and output before converting (errors: exit 2 input, 3 output exists)."""
    from medseg.ct.cohort import SeriesRef
    from medseg.ct.hu import check_first_slice
    from medseg.ct.report import check_qa_outputs
    from medseg.io.atomic import check_output
    from medseg.io.dicom import open_series
    from medseg.io.dicom_enhanced import check_dicom_format
    from medseg.io.volume import volume_shape

    if source is not None and source == target:
        raise InputError(f"--from and --to are both {source}: nothing to convert")
    if report_dir is not None and reference is None:
        raise InputError("--report needs --reference (the QA report compares with a reference series)")
    kind = input_kind(input_path)
    fmt = output_format(kind, output_path, cfg.output_format)
    if check_dicom_format(cfg.dicom_format) == "enhanced" and fmt != "dicom":
        raise InputError("--dicom-format enhanced needs DICOM output, not a volume file", path=output_path)
    check_apart(output_path, [input_path, reference, cfg.like])
    for other in filter(None, (reference, cfg.like)):
        input_kind(Path(other))  # exists, and no pipe to wait on
    check_output(output_path, overwrite=cfg.overwrite)
    plan = _Plan(kind, fmt, (0, 0, 0))
    if reference is not None:
        plan.reference, plan.report_dir = (
            SeriesRef(Path(reference)),
            Path(report_dir or default_report_dir(output_path)),
        )
        for path in (input_path, reference):
            check_apart(plan.report_dir, path, what="the QA report")
        if plan.report_dir.resolve().is_relative_to(output_path.resolve()):  # the series folder replaces it
            raise InputError(
                f"the QA report would be inside the output {output_path}: give --report another folder"
            )
        check_qa_outputs(plan.report_dir, pdf=cfg.pdf, overwrite=cfg.overwrite)
    if kind == "dicom":
        plan.series = open_series(input_path, series_uid=cfg.series_uid, modality="CT")
        check_first_slice(plan.series)  # raw stored values (rescale removed) are refused before any work
        if fmt == "dicom":  # what the derived series copies from each slice
            from medseg.ct.alignment import check_planes, check_study

            check_study(plan.series)
            if cfg.dicom_format == "enhanced":
                check_planes(plan.series)
        plan.shape = (len(plan.series.files), plan.series.rows, plan.series.columns)
        if fmt == "nifti" and plan.series.irregular:
            raise InputError(
                "slice spacing is irregular (missing slices?); a volume file needs a regular grid — "
                "use DICOM output",
                path=input_path,
            )
    else:
        plan.shape = volume_shape(input_path)
    if plan.reference is not None:  # the same size and voxels, else the QA compares other anatomy
        from medseg.ct.alignment import check_reference, series_grid_of, volume_file_grid

        ours = series_grid_of(plan.series) if plan.series else volume_file_grid(input_path)
        check_reference(plan.shape, ours, Path(reference), input_path)
    return plan


def convert(
    input_path: str | Path,
    output_path: str | Path,
    config: ConvertConfig,
    *,
    reference: str | Path | None = None,
    report_dir: str | Path | None = None,
) -> RunResult:
    """Convert one CT series (DICOM folder/file or NIfTI/NRRD/MHA) from ``source`` to ``target`` kernel.

    DICOM in -> derived DICOM series out (or a volume file with ``output_format='nifti'`` or a
    volume file name); volume in -> volume file out. With ``reference`` (the same scan in the
    target kernel) the QA report (RMSE, LAA-950, Perc15) goes to ``report_dir`` (default: OUT +
    '_qa'). The input is only read. Raises for anything that stops the conversion; returns one item.

    The direction's own weights are used when they exist; else (or with ``to_sharpness``/``like``)
    the sharpness-conditioned converter, from the input's measured sharpness to the target's.
    """
    from medseg.ct.kernels import vendor_name
    from medseg.ct.models import CONDITIONED_NOTE, DEMO_NOTE

    cfg = config
    input_path, output_path = Path(input_path), Path(output_path)
    if input_path.name.upper() == "DICOMDIR" and input_path.is_file():  # a media index: its folder's images
        log.info("%s is a DICOMDIR index: reading the images in %s", input_path, input_path.parent)
        input_path = input_path.parent
    src, tgt, by_sharpness = _kernels(cfg)
    plan = preflight(
        input_path,
        output_path,
        cfg,
        Path(reference) if reference else None,
        Path(report_dir) if report_dir else None,
        src.name if src else None,
        tgt.name if tgt else None,
    )
    input_vendor = vendor_name(plan.series.manufacturer) if plan.series is not None else None
    model = _model(cfg, input_path, src, tgt, by_sharpness, input_vendor)
    entry, predictor, source, target = model.entry, model.predictor, model.source, model.target
    batch_size = cfg.batch_size or default_batch_size(predictor.device)
    item = ItemResult(input_path.name or str(input_path))
    result = RunResult(
        "ct-convert",
        items=[],
        summary={
            "source_kernel": source,
            "target_kernel": target,
            "vendor": model.vendor,
            "model": "sharpness-conditioned" if model.sharpness else "direction",
            **({"sharpness": model.sharpness.to_dict()} if model.sharpness else {}),
            "format": plan.fmt,
            **({"dicom_format": cfg.dicom_format} if plan.fmt == "dicom" else {}),
            "weights": str(entry.path),
            "demo_weights": entry.demo,
            **predictor.describe(),
            "batch_size": batch_size,
        },
    )
    start = time.perf_counter()
    qa = _QA(plan, source, target) if plan.reference is not None else None
    job = _Job(
        plan,
        input_path,
        output_path,
        PaddingGuard(predictor),
        batch_size,
        cfg,
        entry.path.name,
        source,
        target,
        item,
        qa,
        model.source_spec,
    )
    qa_outputs: dict[str, str] = {}
    with output_set():  # the series and its QA report: published together or not at all (full disk)
        if plan.kind == "dicom":
            _convert_dicom(job)
        else:
            _convert_volume_file(job)
        seconds = time.perf_counter() - start
        n = plan.shape[0]
        kind = "series" if plan.fmt == "dicom" else "volume"
        item.outputs[kind] = str(output_path)
        item.metrics.update(
            {"slices": n, "seconds": round(seconds, 3), "slices_per_second": round(n / seconds, 2)}
        )
        if qa is not None:
            item.metrics.update(qa.metrics)
            item.warnings += qa.warnings
            ran = f"model: {entry.path.name} " + (
                f"(sharpness-conditioned, {model.sharpness.source:.2f} {model.sharpness.source_from} -> "
                f"{model.sharpness.target:.2f} {model.sharpness.target_from})"
                if model.sharpness
                else f"({source} -> {target} weights)"
            )
            inputs = [str(input_path), str(reference), ran]
            qa_outputs = qa.write(plan.report_dir, item, inputs, cfg.pdf)
    result.outputs.update(item.outputs, **qa_outputs)
    result.add(item)  # published: only now part of the result (an interrupted run reports nothing done)
    note = CONDITIONED_NOTE if model.sharpness else DEMO_NOTE
    result.warnings = ([note] if entry.demo else []) + item.warnings
    log.debug("converted %d slices %s->%s in %.1f s -> %s", n, source, target, seconds, output_path)
    return result


def _kernels(cfg: ConvertConfig) -> tuple[KernelSpec | None, KernelSpec | None, bool]:
    """--from/--to as specs, and whether the conversion is by sharpness (--to-sharpness or --like)."""
    from medseg.ct.kernels import parse_kernel
    from medseg.ct.models import kernel_specs

    by_sharpness = cfg.to_sharpness is not None or cfg.like is not None
    if cfg.like is not None and cfg.to_sharpness is not None:
        raise InputError("--like and --to-sharpness both give the target sharpness: give one of them")
    if not by_sharpness and (cfg.source is None or cfg.target is None):
        raise InputError("give --from and --to (or --to-sharpness S / --like SERIES to convert by sharpness)")
    if cfg.source is not None and cfg.target is not None:
        src, tgt = kernel_specs(cfg.source, cfg.target, vendor=cfg.vendor)
        return src, tgt, by_sharpness
    src = parse_kernel(cfg.source, vendor=cfg.vendor, option="--from") if cfg.source else None
    tgt = parse_kernel(cfg.target, vendor=cfg.vendor, option="--to") if cfg.target else None
    return src, tgt, by_sharpness


@dataclass
class _Model:
    """The converter chosen for this run and how its output is labelled."""

    entry: Any  # ModelEntry (a direction's weights) or ConditionedEntry
    predictor: Any
    source: str
    target: str
    vendor: str | None
    source_spec: KernelSpec | None  # what the input's kernel tag is checked against (None: not claimed)
    sharpness: Any = None  # SharpnessPlan of the conditioned converter


def _model(cfg: ConvertConfig, input_path: Path, src, tgt, by_sharpness: bool, input_vendor) -> _Model:
    """The direction's own weights when they exist (and no sharpness was asked for), else the
    sharpness-conditioned converter with the input's measured sharpness and the planned target."""
    from medseg.ct import models as m
    from medseg.ct.conditioned import known_sharpness, table_vendor
    from medseg.errors import ModelError

    if not by_sharpness and not (cfg.weights is not None and m.is_conditioned(cfg.weights)):
        try:
            entry = m.find_model(
                src, tgt, weights=cfg.weights, models_dirs=cfg.models_dirs, input_vendor=input_vendor
            )
        except m.DamagedWeightsError:
            raise
        except ModelError as exc:  # the table's own kernels fall back; a guessed sharpness is only offered
            known = known_sharpness(tgt.name, table_vendor(tgt, input_vendor))
            if cfg.weights is not None or known is None or known[1] == "interpolated":
                guess = f" ({tgt.name} would be about {known[0]:.2f}, interpolated)" if known else ""
                raise ModelError(
                    f"{exc.message}; or convert by sharpness with --to-sharpness S{guess} or --like SERIES",
                    path=exc.path,
                ) from None
        else:
            vendor = entry.vendor or src.vendor
            return _Model(
                entry,
                m.load_predictor(entry, device=cfg.device, amp=cfg.amp),
                entry.source,
                entry.target,
                vendor,
                KernelSpec(entry.source, vendor),
            )
    entry = m.find_conditioned(weights=cfg.weights, models_dirs=cfg.models_dirs)
    vendor = table_vendor(tgt, input_vendor) if tgt else (src.vendor if src else None)
    plan = m.plan_sharpness(
        entry,
        m.measure_series(input_path, series_uid=cfg.series_uid),
        source=src.name if src else None,
        target=tgt.name if tgt else None,
        vendor=vendor,
        to_sharpness=cfg.to_sharpness,
        like=cfg.like,
    )
    log.info("sharpness-conditioned converter: %.2f -> %.2f (%s)", plan.source, plan.target, plan.target_from)
    predictor = m.slice_predictor(
        m.load_conditioned(entry, plan.source, plan.target), device=cfg.device, amp=cfg.amp
    )
    return _Model(entry, predictor, src.name if src else "input", plan.target_label, vendor, src, plan)


class _QA:
    """Collects original and converted slices during the conversion; evaluates before publishing."""

    def __init__(self, plan: _Plan, source: str, target: str) -> None:
        self.plan, self.source, self.target = plan, source, target
        self.original = np.empty(plan.shape, np.float32)
        self.converted = np.empty(plan.shape, np.float32)
        self.metrics: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.figure = None

    def add(self, z: int | slice, converted: np.ndarray) -> None:
        self.converted[z] = np.clip(np.rint(converted), -32768, 32767)  # as stored (int16 HU)

    def evaluate(self, spacing_zyx: tuple[float, float, float], name: str) -> None:
        """Load the reference and compute the numbers; raises (and so stops publishing) on a bad reference."""
        from medseg.ct.report import NO_LUNGS, evaluate_exam, kernel_check, slice_figure

        reference, _ = self.plan.reference.load()
        self.metrics, mask = evaluate_exam(name, self.original, self.converted, reference, spacing_zyx)
        sharpness, kernel_warnings = kernel_check(
            self.original, self.converted, reference, spacing_zyx, source=self.source, target=self.target
        )
        self.metrics.update(sharpness)
        self.warnings = ([] if mask.any() else [NO_LUNGS]) + kernel_warnings
        for warning in self.warnings:
            log.warning("%s: %s", name, warning)
        self.figure = (
            f"Exam {name}",
            slice_figure(self.original, self.converted, reference, mask, self.source, self.target),
        )

    def write(self, out_dir: Path, item: ItemResult, inputs: list[str], pdf: bool) -> dict[str, str]:
        from medseg.ct.report import write_qa_outputs

        qa_item = ItemResult(item.name, metrics=dict(self.metrics), warnings=list(self.warnings))
        written = write_qa_outputs(
            out_dir,
            [qa_item],
            source=self.source,
            target=self.target,
            inputs=inputs,
            figures=[self.figure] if self.figure else [],
            pdf=pdf,
        )
        return {f"qa_{kind}": path for kind, path in written.items()}


def _slices(series, headers: list, qa: _QA | None, warnings: list[str]) -> Iterator[np.ndarray]:
    """Decoded HU slices as (1, H, W) views, keeping each header for the writer (and each slice for QA);
    each slice's rescale is checked (:mod:`medseg.ct.hu`), a warning goes to ``warnings``."""
    from medseg.ct.hu import checked_slices

    for z, (ds, hu) in enumerate(checked_slices(series, warnings)):
        headers.append(ds)
        if qa is not None:
            qa.original[z] = hu
        yield hu[None]


@dataclass
class _Job:
    """One conversion, as planned: what the two input kinds' converters need."""

    plan: _Plan
    input_path: Path
    output_path: Path
    predictor: Callable[[np.ndarray], np.ndarray]
    batch_size: int
    cfg: ConvertConfig
    weights_name: str
    source: str
    target: str
    item: ItemResult
    qa: _QA | None
    source_spec: KernelSpec | None = None


def _convert_dicom(job: _Job) -> None:
    """DICOM series in; derived DICOM series (streamed into a temporary folder) or a volume file out."""
    from medseg.ct.kernels import kernel_tag_warnings
    from medseg.engine.batching import map_batched
    from medseg.engine.progress import progress_bar
    from medseg.io.atomic import atomic_dir
    from medseg.io.dicom import new_uid
    from medseg.io.dicom_enhanced import ENHANCED_FILE, write_enhanced_ct
    from medseg.io.dicom_write import Derivation, derived_slice, write_derived_slice
    from medseg.io.volume import write_volume_sitk

    plan, item, qa, source, target = job.plan, job.item, job.qa, job.source, job.target
    series = plan.series
    item.warnings += series.warnings
    for msg in kernel_tag_warnings(series, job.source_spec) if job.source_spec is not None else []:
        log.warning("%s: %s", job.input_path, msg)
        item.warnings.append(msg)
    item.metrics["input_kernel_tag"] = list(series.kernel_values)
    item.metrics["input_manufacturer"] = series.manufacturer
    if series.frames:
        item.metrics["input_frames"] = len(series.frames)
    headers: list = []
    stream = progress_bar(
        map_batched(job.predictor, _slices(series, headers, qa, item.warnings), batch_size=job.batch_size),
        total=plan.shape[0],
        desc="converting",
        enabled=job.cfg.progress,
        unit="slice",
    )
    if plan.fmt == "dicom":
        new_series = new_uid()
        item.metrics["series_uid"] = new_series
        derivation = Derivation(
            series_uid=new_series,
            kernel=target,
            description_suffix=f" {target} from {source} (medseg)",
            derivation_description=f"{source} to {target} by {METHOD}; medseg {__version__}; weights "
            f"{job.weights_name}; source series {series.uid}",
        )
        enhanced: list | None = [] if job.cfg.dicom_format == "enhanced" else None
        with atomic_dir(job.output_path, overwrite=job.cfg.overwrite) as tmp:
            for i, converted in enumerate(stream):
                if enhanced is not None:  # the whole derived series in memory, merged below
                    enhanced.append(derived_slice(headers[i], converted, derivation))
                else:
                    write_derived_slice(headers[i], converted, tmp / f"IM{i + 1:05d}.dcm", derivation)
                if qa is not None:
                    qa.add(i, converted)
                headers[i] = None  # release the header and its pixel data
            if enhanced is not None:
                number = int(enhanced[0].SeriesNumber)
                write_enhanced_ct(enhanced, tmp / ENHANCED_FILE, series_uid=new_series, series_number=number)
                item.metrics["enhanced_frames"] = len(enhanced)
            if qa is not None:
                qa.evaluate(series.spacing, item.name)
        return
    out = np.empty(plan.shape, np.float32)
    for i, converted in enumerate(stream):
        out[i] = converted
        headers[i] = None
    if qa is not None:
        qa.add(slice(None), out)
        qa.evaluate(series.spacing, item.name)
    write_volume_sitk(job.output_path, out, series.meta())


def _convert_volume_file(job: _Job) -> None:
    """Volume file in (read whole), volume file out."""
    from medseg.ct.hu import read_hu_volume
    from medseg.io.volume import write_volume_sitk

    volume, meta = read_hu_volume(job.input_path, job.item.warnings)
    out = convert_volume(job.predictor, volume, batch_size=job.batch_size, progress=job.cfg.progress)
    if job.qa is not None:
        job.qa.original[:] = volume
        job.qa.add(slice(None), out)
        job.qa.evaluate(meta.spacing, job.input_path.name)
    write_volume_sitk(job.output_path, out, meta)


def convert_text(result: RunResult) -> str:
    """What ct-convert prints for people."""
    from medseg.ct.report import qa_text

    s, item = result.summary, result.items[0]
    m = item.metrics
    where = item.outputs.get("series") or item.outputs.get("volume", "")
    text = (
        f"{m.get('slices', 0)} slices {s['source_kernel']}->{s['target_kernel']} in {m.get('seconds', 0):.1f} s "
        f"({m.get('slices_per_second', 0):.1f} slices/s on {s['device']} with "
        f"{s.get('runtime', 'torch')}, {s['amp']}) -> {where}"
    )
    if s.get("sharpness"):
        sh = s["sharpness"]
        text += (
            f"\nsharpness-conditioned converter: {sh['source']:.2f} ({sh['source_from']}) -> "
            f"{sh['target']:.2f} ({sh['target_from']})"
        )
    if "rmse_original_hu" in m:
        text += f"\n{qa_text(m)}\nQA report: {result.outputs.get('qa_html', '')}"
    return text
