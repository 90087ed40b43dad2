"""Where kernel-conversion weights are found, and loading them into the engine's Predictor.

Search order: an explicit ``--weights`` file; ``--models-dir`` folders; folders in the
``MEDSEG_CT_MODELS`` environment variable (os.pathsep-separated); the demo weights shipped in
the package (``medseg/weights/ct``, trained on synthetic phantoms: not for clinical use).
A ``ct-train`` run folder is a models folder too: its ``best.safetensors`` is listed (its
``last.safetensors`` only when there is no best).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg.ct.kernels import KernelSpec, normalise_kernel, parse_kernel, siemens_family
from medseg.engine.checkpoint import CheckpointMeta, load_state_into, load_weights, read_meta, read_meta_for
from medseg.engine.weights import demo_weights_path, is_demo, resolve_weights
from medseg.errors import InputError, ModelError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import numpy as np
    import torch

    from medseg.engine.predictor import Predictor

log = logging.getLogger("medseg.ct")

DEMO_MODELS = demo_weights_path("ct")
DEMO_FOLDER = "ct"  # relative to the demo weights root, for resolve_weights
DEMO_NOTE = "demo weights: trained on synthetic phantoms only, not for clinical use"
CONDITIONED_NOTE = (
    "demo weights: the sharpness-conditioned converter, trained on synthetic phantoms and two real "
    "phantom scans (Philips, Toshiba), not for clinical use"
)
# file names of a ct-train run folder (medseg.engine.trainer), best preferred over last
RUN_BEST, RUN_LAST = "best.safetensors", "last.safetensors"


def canonical_kernel(name: str, *, strict: bool = True, vendor: str | None = None) -> str | None:
    """A kernel name in its one spelling (:func:`medseg.ct.kernels.normalise_kernel`): any name a
    scanner writes is valid (``UB``, ``STANDARD``, ``FC13``, ``Br40``); classic Siemens names keep
    normalising (``b50f``, ``B50`` -> ``B50f``). A multi-valued tag string (``'Br40d\\3'``) gives its
    first kernel-naming value; a ``Vendor:`` prefix is dropped. Empty -> InputError (``strict``) or None."""
    from medseg.ct.kernels import kernel_values, normalise_kernel, tag_kernel_names, vendor_name

    text = str(name or "").strip()
    if ":" in text:
        head, text = text.split(":", 1)
        vendor = vendor or vendor_name(head)
    values = tag_kernel_names(kernel_values(text))
    if not values:
        if strict:
            raise InputError(f"empty kernel name '{name}'")
        return None
    return normalise_kernel(values[0], vendor_name(vendor) if vendor else None)


def demo_file_name(source: str, target: str) -> str:
    """File name of a direction's weights; kernel names may hold spaces or slashes (safe_name)."""
    from medseg.io.atomic import safe_name

    return f"{safe_name(source)}_to_{safe_name(target)}.safetensors"


@dataclass
class ModelEntry:
    path: Path
    source: str
    target: str
    meta: CheckpointMeta
    vendor: str | None = None  # scanner vendor of the kernels (None: not recorded, matches any)

    @property
    def demo(self) -> bool:
        return is_demo(self.path)

    @property
    def group(self) -> str:
        """The vendor this model is listed under (old weights without a manufacturer: inferred
        Siemens for classic Siemens names, else 'vendor not recorded')."""
        if self.vendor:
            return self.vendor
        if siemens_family(self.source) and siemens_family(self.target):
            return "Siemens"
        return "vendor not recorded"

    def matches(self, source: KernelSpec, target: KernelSpec) -> bool:
        vendor = self.vendor or ("Siemens" if self.group == "Siemens" else None)
        return source.matches(self.source, vendor) and target.matches(self.target, vendor)

    def direction(self) -> str:
        return f"{self.vendor + ':' if self.vendor else ''}{self.source}->{self.target}"


def _entry(path: Path, meta: CheckpointMeta) -> ModelEntry:
    from medseg.ct.kernels import vendor_name

    cfg = meta.config
    vendor = vendor_name(cfg.get("manufacturer") or cfg.get("vendor"))
    return ModelEntry(
        path,
        normalise_kernel(str(cfg.get("source_kernel", "")), vendor),
        normalise_kernel(str(cfg.get("target_kernel", "")), vendor),
        meta,
        vendor,
    )


def search_dirs(models_dirs: list[str | Path] | tuple = (), *, demo: bool = True) -> list[Path]:
    """--models-dir folders, then $MEDSEG_CT_MODELS folders, then (``demo``) the shipped demo folder."""
    dirs = [Path(d) for d in models_dirs]
    dirs += [Path(p) for p in os.environ.get("MEDSEG_CT_MODELS", "").split(os.pathsep) if p]
    if demo:
        dirs.append(DEMO_MODELS)
    return dirs


def _weights_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors"))
    if (folder / RUN_BEST).is_file():  # one training run is one model: its best weights
        files = [f for f in files if f.name != RUN_LAST]
    return files


def list_models(models_dirs: list[str | Path] | tuple = (), *, demo: bool = True) -> list[ModelEntry]:
    """Every readable kernel-conversion weights file in the search folders (first found per
    vendor and direction wins)."""
    entries: dict[tuple, ModelEntry] = {}
    for file, meta in _readable_weights(models_dirs, demo=demo, warn=True):
        if meta.model not in converter_models():
            continue
        entry = _entry(file, meta)
        key = (entry.vendor, entry.source.casefold(), entry.target.casefold())
        entries.setdefault(key, entry)
    return list(entries.values())


def _readable_weights(models_dirs, *, demo: bool, warn: bool) -> Iterator[tuple[Path, CheckpointMeta]]:
    """(file, metadata) of every weights file in the search folders whose metadata reads (others are
    skipped, with a warning when ``warn``)."""
    for folder in search_dirs(models_dirs, demo=demo):
        if not folder.is_dir():
            continue
        for file in _weights_files(folder):
            try:
                yield file, read_meta(file)
            except ModelError as exc:
                if warn:
                    log.warning("ignoring %s", exc)


def _check_entry(path: Path, source: KernelSpec, target: KernelSpec) -> ModelEntry:
    meta = read_meta(path)
    if meta.model not in converter_models():
        raise ModelError(f"weights are for model '{meta.model}', not a CT kernel converter", path=path)
    entry = _entry(path, meta)
    if not entry.matches(source, target):
        raise ModelError(f"weights convert {entry.direction()}, not {source}->{target.name}", path=path)
    return entry


def kernel_specs(
    source: str | KernelSpec, target: str | KernelSpec, *, vendor: str | None = None
) -> tuple[KernelSpec, KernelSpec]:
    """--from/--to (and --vendor) as two specs of one vendor; the same kernel twice is an input error."""
    src = source if isinstance(source, KernelSpec) else parse_kernel(source, vendor=vendor, option="--from")
    tgt = target if isinstance(target, KernelSpec) else parse_kernel(target, vendor=vendor, option="--to")
    if src.vendor and tgt.vendor and src.vendor != tgt.vendor:
        raise InputError(
            f"--from is a {src.vendor} kernel and --to a {tgt.vendor} kernel: one vendor per model"
        )
    common = src.vendor or tgt.vendor
    src, tgt = KernelSpec(src.name, common), KernelSpec(tgt.name, common)
    if src.key == tgt.key:
        raise InputError(f"--from and --to are both {src.name}: nothing to convert")
    return src, tgt


def available_text(models_dirs: list[str | Path] | tuple = ()) -> str:
    """'Siemens: B50f->B30f, B30f->B50f; Philips: YA->UB' (what exists, by vendor)."""
    groups: dict[str, list[str]] = {}
    for e in list_models(models_dirs):
        groups.setdefault(e.group, []).append(f"{e.source}->{e.target}")
    return "; ".join(f"{g}: {', '.join(d)}" for g, d in groups.items()) or "none"


def find_model(
    source: str | KernelSpec,
    target: str | KernelSpec,
    *,
    weights: str | Path | None = None,
    models_dirs: list[str | Path] | tuple = (),
    vendor: str | None = None,
    input_vendor: str | None = None,
) -> ModelEntry:
    """The weights for ``source -> target``: --weights, else the search folders, else the demo weights.

    ``vendor`` (``--vendor``, or a ``Vendor:`` prefix of a name) restricts the search to weights of
    that vendor (and old weights that record none); ``input_vendor`` (the input's Manufacturer) only
    chooses between weights of several vendors that share the kernel names.
    """
    src, tgt = kernel_specs(source, target, vendor=vendor)
    if weights is not None:
        path, _demo = resolve_weights(weights, demo=f"{DEMO_FOLDER}/{demo_file_name(src.name, tgt.name)}")
        return _check_entry(path, src, tgt)
    found = [e for e in list_models(models_dirs, demo=False) if e.matches(src, tgt)]
    wanted = src.vendor or input_vendor
    exact = [e for e in found if e.vendor is not None and e.vendor == wanted]
    vendors = {e.vendor for e in found if e.vendor is not None}
    if exact:
        return exact[0]
    if len(vendors) > 1 and src.vendor is None:
        raise InputError(
            f"weights for {src.name}->{tgt.name} exist for several vendors ({', '.join(sorted(vendors))}); "
            f"say which with --vendor or a prefix such as {sorted(vendors)[0]}:{src.name}"
        )
    if found:
        return found[0]
    _refuse_damaged(models_dirs, src.name, tgt.name)  # never the demo weights in place of a broken own file
    demo_path = DEMO_MODELS / demo_file_name(src.name, tgt.name)
    entry = None
    if demo_path.is_file():
        try:
            entry = _check_entry(demo_path, src, tgt)
        except ModelError:
            entry = None  # e.g. Philips:B50f asked, Siemens demo weights found: not these
    if entry is not None:
        resolve_weights(None, demo=f"{DEMO_FOLDER}/{demo_path.name}")  # the one demo warning
        return entry
    raise ModelError(
        f"no weights for {src}->{tgt.name} (available: {available_text(models_dirs)}); train with "
        f"'medseg ct-train' or pass --weights / --models-dir"
    )


class DamagedWeightsError(ModelError):
    """The user's own weights for the asked direction do not read: no fallback to other weights."""


def _refuse_damaged(models_dirs, source: str, target: str) -> None:
    """DamagedWeightsError for an unreadable file of the user's folders named for ``source -> target``
    (or a run's best weights): a truncated copy of one's model is never replaced by the demo weights."""
    for file in (f for d in search_dirs(models_dirs, demo=False) if d.is_dir() for f in _weights_files(d)):
        if file.name.casefold() in (demo_file_name(source, target).casefold(), RUN_BEST):
            try:
                read_meta(file)
            except ModelError as exc:
                raise DamagedWeightsError(
                    f"{exc.message}; these would be your {source}->{target} weights (by the file name): "
                    "replace the file (an interrupted copy?), or move it away to use other weights",
                    path=file,
                ) from None


def converter_models() -> tuple[str, ...]:
    """Model names a weights file may carry to be a kernel converter: medseg's own net and an
    imported Caffe model of Lee et al. (``medseg ct-import-caffe``)."""
    from medseg.ct.caffe import CAFFE_MODEL_NAME
    from medseg.ct.model import MODEL_NAME

    return (MODEL_NAME, CAFFE_MODEL_NAME)


def _load_net(path: Path, model_name: str, build: Callable[[dict], torch.nn.Module]) -> torch.nn.Module:
    """Weights of ``model_name`` at ``path`` into the net ``build`` makes from their config; ModelError
    (one line) when they do not fit."""
    state, meta = load_weights(path, expect_model=model_name)
    return load_state_into(
        build(meta.config), state, path=path, message="weights do not match the model config ({error})"
    )


def load_net(entry: ModelEntry) -> torch.nn.Module:
    """The converter of ``entry`` with its weights, on the CPU."""
    from medseg.ct.caffe import CAFFE_MODEL_NAME, load_caffe_kernel_net
    from medseg.ct.model import MODEL_NAME, KernelNetConfig, build_kernel_net

    if entry.meta.model == CAFFE_MODEL_NAME:
        return load_caffe_kernel_net(entry.path)
    return _load_net(
        entry.path, MODEL_NAME, lambda cfg: build_kernel_net(config=KernelNetConfig.from_dict(cfg))
    )


def _hu_slices(y: torch.Tensor) -> np.ndarray:
    """Model output (B, 1, H, W) -> float32 NumPy (B, H, W), without a copy on the CPU in fp32."""
    import torch

    return y[:, 0].to(torch.float32).cpu().numpy()


def slice_predictor(
    net: torch.nn.Module,
    *,
    device: str = "auto",
    amp: str | bool | None = "auto",
    runtime: str | None = None,
) -> Predictor:
    """The engine Predictor for a converter: (B, 1, H, W) float32 HU in -> (B, H, W) float32 HU out.

    channels_last on CPU and CUDA; on CUDA cuDNN autotunes once per slice shape (every slice of
    a series has the same shape), as an option of this predictor, not process-wide.
    """
    from medseg.engine.predictor import Predictor
    from medseg.engine.runtime import select_device

    dev = select_device(device)
    return Predictor(
        net,
        device=dev,
        amp=amp,
        channels_last=True,
        cudnn_benchmark=dev.type == "cuda",
        postprocess=_hu_slices,
        runtime=runtime,  # None: --runtime / auto (OpenVINO on a CPU)
        example_shape=(1, 1, 64, 64),  # fully convolutional: converted once for any slice size
    )


def load_predictor(entry: ModelEntry, *, device: str = "auto", amp: str | bool | None = "auto") -> Predictor:
    """Imported Caffe models work on raw CT numbers (no scaling): they always run in float32."""
    from medseg.ct.caffe import CAFFE_MODEL_NAME

    if entry.meta.model == CAFFE_MODEL_NAME:
        amp = "off"
    return slice_predictor(load_net(entry), device=device, amp=amp)


def models_doc(models_dirs: list[str | Path] | tuple = ()) -> dict:
    """What ``ct-models`` reports: every model found, grouped (sorted) by scanner vendor."""
    rows = [
        {
            "vendor": e.group,
            "manufacturer_recorded": e.vendor is not None,
            "from": e.source,
            "to": e.target,
            "path": str(e.path),
            "demo": e.demo,
            "version": e.meta.version,
            "training_data": e.meta.training_data,
            "created": e.meta.created,
        }
        for e in list_models(models_dirs)
    ]
    order = {g: i for i, g in enumerate(dict.fromkeys(r["vendor"] for r in rows))}
    rows.sort(key=lambda r: (r["vendor"] == "vendor not recorded", order[r["vendor"]]))
    # any kernel to any kernel (used where no direction above fits, or with --to-sharpness/--like)
    return {"models": rows, "conditioned": conditioned_doc(models_dirs)}


def models_text(doc: dict) -> str:
    """What ct-models prints for people: one block per scanner vendor."""
    rows, cond = doc.get("models", []), doc.get("conditioned", [])
    if not rows and not cond:
        return "no models found (train with 'medseg ct-train' or pass --models-dir)"
    blocks: dict[str, list[str]] = {}
    for r in rows:
        blocks.setdefault(r.get("vendor", "vendor not recorded"), []).append(
            f"  {r['from']} -> {r['to']}  {r['path']}{'  (demo)' if r.get('demo') else ''}\n"
            f"      trained on: {r['training_data'] or 'not recorded'}"
        )
    text = "\n".join(f"{vendor}:\n" + "\n".join(items) for vendor, items in blocks.items())
    if cond:
        text += (
            ("\n" if text else "")
            + "Any vendor, any kernel (conditioned on measured sharpness):\n"
            + "\n".join(
                f"  sharpness {r['sharpness_range'][0]:.2f} to {r['sharpness_range'][1]:.2f}  {r['path']}"
                f"{'  (demo)' if r.get('demo') else ''}\n      trained on: {r['training_data'] or 'not recorded'}"
                for r in cond
            )
        )
    return text


# --- the sharpness-conditioned converter (medseg.ct.conditioned) ----------------------------------


@dataclass
class ConditionedEntry:
    """A sharpness-conditioned weights file and what it says about itself."""

    path: Path
    meta: CheckpointMeta

    @property
    def demo(self) -> bool:
        return is_demo(self.path)

    @property
    def sharpness_range(self) -> tuple[float, float]:
        from medseg.ct.conditioned import ConditionedNetConfig

        cfg = ConditionedNetConfig.from_dict(self.meta.config)
        return float(cfg.sharpness_min), float(cfg.sharpness_max)


def is_conditioned(path: str | Path) -> bool:
    """Whether a weights file holds the sharpness-conditioned converter (unreadable files: False)."""
    from medseg.ct.conditioned import MODEL_NAME

    try:
        return read_meta(path).model == MODEL_NAME
    except ModelError:
        return False


def list_conditioned(
    models_dirs: list[str | Path] | tuple = (), *, demo: bool = True
) -> list[ConditionedEntry]:
    """Every sharpness-conditioned weights file in the search folders (first listed = used)."""
    from medseg.ct.conditioned import MODEL_NAME

    return [
        ConditionedEntry(file, meta)
        for file, meta in _readable_weights(models_dirs, demo=demo, warn=False)
        if meta.model == MODEL_NAME
    ]


def find_conditioned(
    *, weights: str | Path | None = None, models_dirs: list[str | Path] | tuple = ()
) -> ConditionedEntry:
    """The conditioned converter: --weights when it is one, else the search folders, else the demo file."""
    from medseg.ct.conditioned import DEMO_FILE, MODEL_NAME

    if weights is not None:
        path, _demo = resolve_weights(weights, demo=f"{DEMO_FOLDER}/{DEMO_FILE}")
        meta = read_meta_for(
            path,
            MODEL_NAME,
            "weights are for model {model}, not the sharpness-conditioned converter (--to-sharpness/--like need it)",
        )
        return ConditionedEntry(path, meta)
    found = list_conditioned(models_dirs, demo=False)
    if found:
        return found[0]
    if (DEMO_MODELS / DEMO_FILE).is_file():
        path, _demo = resolve_weights(None, demo=f"{DEMO_FOLDER}/{DEMO_FILE}")  # the one demo warning
        return ConditionedEntry(path, read_meta(path))
    raise ModelError("no sharpness-conditioned weights found (scripts/train_conditioned_ct.py makes them)")


def load_conditioned(
    entry: ConditionedEntry, source_sharpness: float, target_sharpness: float
) -> torch.nn.Module:
    """The conditioned net of ``entry`` fixed to one conversion: a one-input module for the Predictor."""
    from medseg.ct.conditioned import (
        MODEL_NAME,
        ConditionedNetConfig,
        FixedConditionNet,
        build_conditioned_net,
    )

    net = _load_net(
        entry.path, MODEL_NAME, lambda cfg: build_conditioned_net(config=ConditionedNetConfig.from_dict(cfg))
    )
    return FixedConditionNet(net.eval(), source_sharpness, target_sharpness)


def conditioned_doc(models_dirs: list[str | Path] | tuple = ()) -> list[dict]:
    """ct-models' rows for the conditioned converters."""
    return [
        {
            "vendor": "any (sharpness-conditioned)",
            "from": "any",
            "to": "any",
            "sharpness_range": list(e.sharpness_range),
            "path": str(e.path),
            "demo": e.demo,
            "version": e.meta.version,
            "training_data": e.meta.training_data,
            "created": e.meta.created,
        }
        for e in list_conditioned(models_dirs)
    ]


def measure_series(path: str | Path, *, series_uid: str | None = None, what: str = "the input"):
    """Sharpness fingerprint of a CT series (DICOM folder/file or volume file) from up to 16 evenly
    spaced slices (only those are decoded); a DICOM series that is not CT, or one whose sharpness
    cannot be measured, is an InputError naming ``what``."""
    import numpy as np

    from medseg.ct.fingerprint import MAX_SLICES, kernel_fingerprint
    from medseg.ct.hu import check_hu, checked_slices, read_hu_volume
    from medseg.io.dicom import decode_hu, open_series
    from medseg.io.volume import is_volume_file

    path = Path(path)
    if is_volume_file(path):
        volume, meta = read_hu_volume(path)
        spacing = meta.spacing
    else:
        try:
            series = open_series(path, series_uid=series_uid, modality="CT")
        except InputError as exc:
            raise InputError(f"{what} is not a CT series we can read: {exc.message}", path=path) from None
        n = len(series.files)
        picks = set(np.unique(np.linspace(0, n - 1, min(n, MAX_SLICES)).round().astype(int)).tolist())
        if series.frames:
            slices = [hu for i, (_ds, hu) in enumerate(checked_slices(series)) if i in picks]
        else:
            import pydicom

            slices = []
            for i in sorted(picks):
                ds = pydicom.dcmread(series.files[i])
                slices.append(decode_hu(ds, series.files[i]))
                check_hu(ds, slices[-1], series.files[i])  # raw stored values are not HU
        volume, spacing = np.stack(slices).astype(np.float32), series.spacing
    fp = kernel_fingerprint(volume, spacing)
    if not (fp.sharpness > 0):  # NaN: no body, no soft tissue
        raise InputError(
            f"could not measure the sharpness of {what} (no body or uniform soft tissue in CT numbers): "
            "is it a CT series?",
            path=path,
        )
    return fp


@dataclass
class SharpnessPlan:
    """Which sharpness the conditioned converter converts from and to, and where each came from."""

    source: float
    target: float
    source_from: str
    target_from: str
    target_label: str  # the output series' kernel label

    def to_dict(self) -> dict:
        return {
            "source": round(self.source, 3),
            "target": round(self.target, 3),
            "source_from": self.source_from,
            "target_from": self.target_from,
        }


def plan_sharpness(
    entry: ConditionedEntry,
    source_fp,
    *,
    source: str | None,
    target: str | None,
    vendor: str | None = None,
    to_sharpness: float | None = None,
    like: str | Path | None = None,
) -> SharpnessPlan:
    """The target sharpness from --to-sharpness, from a --like series (measured), or from --to's
    kernel in the table (as the measured source times the table's target/source ratio when --from is
    in the table too: dose and anatomy cancel out); refused outside the range the weights were trained on."""
    import math

    from medseg.ct.conditioned import known_sharpness

    if like is not None and to_sharpness is not None:
        raise InputError("--like and --to-sharpness both give the target sharpness: give one of them")
    s = float(source_fp.sharpness)
    lo, hi = entry.sharpness_range
    src_from = f"measured from the input ({source_fp.slices} slices)"
    if to_sharpness is not None:
        t = float(to_sharpness)
        if not (math.isfinite(t) and t > 0):
            raise InputError(f"--to-sharpness must be a positive number, not {to_sharpness}")
        how, label = "--to-sharpness", target or f"sharpness {t:.2f}"
    elif like is not None:
        t = float(measure_series(like, what="the --like series").sharpness)
        how, label = f"measured from --like {like}", target or f"like {Path(like).name}"[:16]
    elif target is not None:
        known = known_sharpness(target, vendor)
        if known is None:
            raise ModelError(
                f"no weights for ->{target} and its sharpness is not known: give --to-sharpness S or "
                "--like SERIES (a series reconstructed with that kernel)"
            )
        base = known_sharpness(source, vendor) if source else None
        if base is not None:
            t = s * known[0] / base[0]
            how = f"table: {target} {known[0]:g} ({known[1]}) / {source} {base[0]:g} ({base[1]}) x measured source"
        else:
            t, how = known[0], f"table: {target} {known[0]:g} ({known[1]})"
        label = target
    else:
        raise InputError("say what to convert to: --to KERNEL, --to-sharpness S or --like SERIES")
    if not lo <= t <= hi:
        raise InputError(
            f"target sharpness {t:.2f} ({how}) is outside the range the conditioned converter was "
            f"trained on ({lo:.2f} to {hi:.2f})"
        )
    if not lo <= s <= hi:
        log.warning("input sharpness %.2f lies outside the trained range %.2f-%.2f", s, lo, hi)
    return SharpnessPlan(s, t, src_from, how, label)
