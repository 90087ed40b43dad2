"""``medseg ct-convert``: stream a CT series through a kernel converter into a derived series."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medseg import __version__
from medseg.ct.models import canonical_kernel, find_model, load_predictor
from medseg.engine.batching import map_batched
from medseg.engine.progress import progress as progress_bar
from medseg.errors import InputError
from medseg.io.atomic import atomic_dir, check_output
from medseg.io.dicom import Derivation, iter_slices, new_uid, open_series, write_derived_slice
from medseg.io.volume import is_volume_file, read_volume_sitk, write_volume_sitk

log = logging.getLogger("medseg.ct")

METHOD = "residual CNN kernel conversion (Lee et al., Korean J Radiol 2019)"


@dataclass
class ConvertResult:
    input: str
    output: str
    format: str
    source_kernel: str
    target_kernel: str
    weights: str
    slices: int
    seconds: float
    slices_per_second: float
    device: str
    amp: str
    series_uid: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def input_kind(path: Path) -> str:
    """'dicom' for a folder or a DICOM file, 'volume' for NIfTI/NRRD/MHA."""
    if not path.exists():
        raise InputError("no such file or folder", path=path)
    if path.is_dir():
        return "dicom"
    if is_volume_file(path):
        return "volume"
    with open(path, "rb") as handle:
        head = handle.read(132)
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".ima", ""):
        return "dicom"
    raise InputError("not a DICOM file/folder or a NIfTI/NRRD/MHA image", path=path)


def default_batch_size(device) -> int:
    """Slices per forward pass: batches feed a GPU; on a CPU one slice at a time is fastest
    (a 512x512 slice already has 16 M activations per layer, batching only thrashes caches)."""
    return 16 if device.type == "cuda" else 1


def convert_volume(predictor: Callable[[np.ndarray], np.ndarray], volume: np.ndarray, *,
                   batch_size: int | None = None, progress: bool = False) -> np.ndarray:
    """Convert a (z, y, x) HU volume slice by slice; returns a new float32 volume."""
    if batch_size is None:  # plain callables (tests, other engines) get one slice at a time
        device = getattr(predictor, "device", None)
        batch_size = default_batch_size(device) if device is not None else 1
    out = np.empty_like(volume, dtype=np.float32)
    stream = map_batched(predictor, iter(volume), batch_size=batch_size)
    for z, sl in enumerate(progress_bar(stream, total=len(volume), desc="converting", enabled=progress, unit="slice")):
        out[z] = sl
    return out


def convert(input_path: str | Path, output_path: str | Path, *, source: str, target: str,
            weights: str | Path | None = None, models_dirs: tuple = (), series_uid: str | None = None,
            output_format: str | None = None, batch_size: int | None = None, device: str = "auto", amp: str = "auto",
            overwrite: bool = False, progress: bool = False) -> ConvertResult:
    """Convert one CT series (DICOM folder/file or NIfTI/NRRD/MHA) from ``source`` to ``target`` kernel.

    DICOM in -> derived DICOM series out (or NIfTI with ``output_format='nifti'``);
    volume in -> same format family out (NIfTI recommended). The input is only read.
    """
    input_path, output_path = Path(input_path), Path(output_path)
    source, target = canonical_kernel(source), canonical_kernel(target)
    kind = input_kind(input_path)
    fmt = output_format or ("dicom" if kind == "dicom" else "nifti")
    if fmt not in ("dicom", "nifti"):
        raise InputError(f"unknown output format {fmt!r}: use dicom or nifti")
    if fmt == "dicom" and kind != "dicom":
        raise InputError("DICOM output needs a DICOM input (there is no patient/study to derive from); "
                         "use --format nifti", path=input_path)
    check_output(output_path, overwrite=overwrite)
    entry = find_model(source, target, weights=weights, models_dirs=models_dirs)
    predictor = load_predictor(entry, device=device, amp=amp)
    batch_size = batch_size or default_batch_size(predictor.device)
    warnings: list[str] = []
    start = time.perf_counter()
    new_series = ""

    if kind == "dicom":
        series = open_series(input_path, series_uid=series_uid, modality="CT")
        warnings += series.warnings
        tag_kernel = canonical_kernel(series.kernel, strict=False) if series.kernel else None
        if series.kernel and tag_kernel != source:
            msg = f"input ConvolutionKernel is {series.kernel!r} but --from is {source}"
            log.warning("%s: %s", input_path, msg)
            warnings.append(msg)
        n = len(series.files)
        headers: list = []

        def slices():
            for ds, hu in iter_slices(series):
                headers.append(ds)
                yield hu

        stream = progress_bar(map_batched(predictor, slices(), batch_size=batch_size), total=n,
                              desc="converting", enabled=progress, unit="slice")
        if fmt == "dicom":
            new_series = new_uid()
            derivation = Derivation(
                series_uid=new_series, kernel=target, description_suffix=f" {target} from {source} (medseg)",
                derivation_description=f"{source} to {target} by {METHOD}; medseg {__version__}; weights "
                                       f"{entry.path.name}; source series {series.uid}")
            with atomic_dir(output_path, overwrite=overwrite) as tmp:
                for i, converted in enumerate(stream):
                    write_derived_slice(headers[i], converted, tmp / f"IM{i + 1:05d}.dcm", derivation)
                    headers[i] = None  # release the header and its pixel data
        else:
            if series.irregular:
                raise InputError("slice spacing is irregular (missing slices?); NIfTI needs a regular grid — "
                                 "use DICOM output", path=input_path)
            out = np.empty((n, series.rows, series.columns), np.float32)
            for i, converted in enumerate(stream):
                out[i] = converted
                headers[i] = None
            write_volume_sitk(output_path, out, series.meta())
    else:
        volume, meta = read_volume_sitk(input_path)
        n = len(volume)
        out = convert_volume(predictor, volume, batch_size=batch_size, progress=progress)
        write_volume_sitk(output_path, out, meta)

    seconds = time.perf_counter() - start
    amp_name = str(predictor.amp_dtype).replace("torch.", "") if predictor.amp_dtype else "fp32"
    result = ConvertResult(
        input=str(input_path), output=str(output_path), format=fmt, source_kernel=source, target_kernel=target,
        weights=str(entry.path), slices=n, seconds=round(seconds, 3), slices_per_second=round(n / seconds, 2),
        device=str(predictor.device), amp=amp_name, series_uid=new_series, warnings=warnings)
    log.debug("converted %d slices %s->%s in %.1f s -> %s", n, source, target, seconds, output_path)
    return result
