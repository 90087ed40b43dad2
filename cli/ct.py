"""CT kernel conversion commands: ct-convert, ct-models, ct-train, ct-report."""

from __future__ import annotations

import math
from pathlib import Path

import click
from medseg_cli._types import FINITE_FLOAT, FiniteFloatRange
from medseg_cli.options import (
    amp_option,
    batch_size_option,
    common_options,
    emit,
    finish,
    output_options,
    overwrite_option,
    ray_task_option,
    runtime_option,
    train_options,
    weights_option,
)

KERNEL_HELP = (
    "Reconstruction kernel as the scanner writes it in ConvolutionKernel (B30f, Br40, UB, YA, STANDARD, "
    "FC13, ...); 'Vendor:NAME' (e.g. Philips:B) names the vendor too."
)
VENDOR_HELP = (
    "Scanner vendor of --from/--to (Siemens, Philips, GE, Canon, ... or the Manufacturer tag), where "
    "kernel names of several vendors collide."
)
WEIGHTS_HELP = (
    "Weights file (.safetensors); default: search --models-dir, $MEDSEG_CT_MODELS, then the demo weights."
)
BATCH_HELP = "Slices per forward pass (default: 16 on CUDA, 1 on CPU)."


def _models_dir_option(func):
    return click.option(
        "--models-dir",
        multiple=True,
        # must exist: a mistyped folder silently fell back to the demo weights (exit 0)
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Extra folder(s) to search for weights (also $MEDSEG_CT_MODELS); a ct-train run folder works.",
    )(func)


def _kernel_options(func):
    func = click.option("--to", "target", required=True, help=KERNEL_HELP)(func)
    func = click.option("--from", "source", required=True, help=KERNEL_HELP)(func)
    return func


def _vendor_option(func):
    return click.option("--vendor", "vendor", default=None, metavar="VENDOR", help=VENDOR_HELP)(func)


def _fractions(_ctx, _param, value: str) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(v) for v in value.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions):
        raise click.BadParameter("expected three comma-separated fractions, e.g. 0.6,0.2,0.2")
    if fractions[0] <= 0:
        raise click.BadParameter(f"the training fraction (the first) must be above 0, got {value}")
    return fractions


@click.command(
    "ct-convert",
    epilog="""\b
Examples:
  medseg ct-convert scan/ --from B50f --to B30f --out scan_B30f/
  medseg ct-convert scan/ --from B50f --to B30f --out scan_B30f/ \\
      --reference scan_ref_B30f/ --report qa/
  medseg ct-convert chest.nii.gz --from B30f --to B50f --out chest_B50f.nii.gz
  medseg ct-convert study/ --series-uid 1.2.3... --from B50f --to B30f --out out.nii.gz
  medseg ct-convert bone/ --from YA --to UB --vendor Philips --out std/ --models-dir models/
  medseg ct-convert scan/ --from GE:BONE --to GE:STANDARD --out std/ --models-dir models/
  medseg ct-convert scan/ --to-sharpness 1.0 --out soft/          # any kernel, by sharpness
  medseg ct-convert scan/ --like other_scan/ --out like_other/    # look like that series
  medseg ct-convert scan/ --from FC51 --to FC13 --out soft/       # no FC51->FC13 weights: by sharpness

\b
Direction weights (--from X --to Y) are used where they exist; otherwise, and with --to-sharpness or
--like, the sharpness-conditioned converter converts from the input's measured sharpness to the
target's (--to: a table of known kernels). The summary says which model ran and the sharpness values.
""",
)
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@click.option("--from", "source", default=None, help=KERNEL_HELP + " Optional with --to-sharpness/--like.")
@click.option(
    "--to",
    "target",
    default=None,
    help=KERNEL_HELP + " Without weights for this direction: the sharpness-conditioned converter, "
    "with the kernel's sharpness from a table of known kernels.",
)
@click.option(
    "--to-sharpness",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    metavar="S",
    help="Convert to this measured sharpness (B30f-like ~ 1, B10f ~ 0.5, B70f ~ 3.4; see ct-models "
    "for the trained range) with the sharpness-conditioned converter.",
)
@click.option(
    "--like",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    metavar="SERIES",
    help="Make the input look like this CT series: its sharpness is measured and converted to "
    "(sharpness-conditioned converter).",
)
@_vendor_option
@click.option(
    "--out",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="Output series folder (DICOM) or volume file (.nii.gz, .nii, .nrrd, .mha).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["dicom", "nifti"]),
    default=None,
    help="Output format (default: a volume file when OUT ends in a volume extension or INPUT is one, "
    "else DICOM).",
)
@click.option(
    "--dicom-format",
    type=click.Choice(["classic", "enhanced"]),
    default="classic",
    show_default=True,
    help="DICOM output layout: classic (one CT file per slice, streamed) or enhanced (one Legacy "
    "Converted Enhanced CT multi-frame file; the whole series is held in memory).",
)
@click.option("--series-uid", default=None, help="Pick one series when INPUT holds several.")
@weights_option(WEIGHTS_HELP)
@_models_dir_option
@click.option(
    "--reference",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="The same scan in the target kernel: also write a QA report (RMSE, LAA-950).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the QA report (default: OUT + '_qa'); needs --reference.",
)
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also write the QA report as PDF.")
@batch_size_option(None, BATCH_HELP)
@runtime_option
@amp_option
@overwrite_option
@common_options
def ct_convert(
    input_path,
    source,
    target,
    to_sharpness,
    like,
    vendor,
    output,
    output_format,
    dicom_format,
    series_uid,
    weights,
    models_dir,
    reference,
    report_dir,
    pdf,
    batch_size,
    amp,
    overwrite,
    device,
    quiet,
    as_json,
):
    """Convert a CT series from one reconstruction kernel to another (no sinogram needed).

    INPUT is a DICOM series folder or study folder (any file names; SEG, SR, localizers and other
    non-image objects are left out), a DICOM file (also a multi-frame Enhanced CT), or a
    NIfTI/NRRD/MHA volume or slice. DICOM input gives a derived classic DICOM series (new UIDs, same
    patient/study and geometry, signed int16 HU), or with --dicom-format enhanced one multi-frame
    Legacy Converted Enhanced CT file in the OUT folder. The input is never modified.
    """
    if report_dir is not None and reference is None:
        raise click.UsageError("--report needs --reference")
    if like is not None and to_sharpness is not None:
        raise click.UsageError("--like and --to-sharpness both give the target sharpness: give one of them")
    if like is None and to_sharpness is None and (source is None or target is None):
        raise click.UsageError("give --from and --to, or --to-sharpness S / --like SERIES")
    from medseg.ct.convert import ConvertConfig, convert, convert_text

    cfg = ConvertConfig(
        source=source,
        target=target,
        to_sharpness=to_sharpness,
        like=like,
        vendor=vendor,
        weights=weights,
        models_dirs=models_dir,
        series_uid=series_uid,
        output_format=output_format,
        dicom_format=dicom_format,
        batch_size=batch_size,
        device=device,
        amp=amp,
        pdf=pdf,
        overwrite=overwrite,
        progress=not quiet,
    )
    finish(
        convert(input_path, output, cfg, reference=reference, report_dir=report_dir),
        as_json=as_json,
        human=convert_text,
    )


@click.command(
    "ct-models",
    epilog="""\b
Examples:
  medseg ct-models
  medseg ct-models --models-dir my_models/ --json
""",
)
@_models_dir_option
@output_options
def ct_models(models_dir, quiet, as_json):
    """List the kernel-conversion models that are available, by scanner vendor (first listed = used)."""
    from medseg.ct.models import models_doc, models_text

    emit(models_doc(models_dir), as_json=as_json, human=models_text)


@click.command(
    "ct-train",
    epilog="""\b
Examples:
  medseg ct-train study/ --from YA --to UB --out run/ --max-minutes 5    # CPU: fitted to 5 minutes
  medseg ct-train pairs/ --from B50f --to B30f --out runs/b50_b30/
  medseg ct-train pairs/ --from B50f --to B30f --out runs/b50_b30/ --epochs 40 --resume
  medseg ct-train pairs/ --from B30f --to B50f --out m/ --epochs 5 --crop 128   # quick CPU run
  medseg ct-train study/ --from YA --to UB --out run/ --init scratch --max-minutes 10
  medseg ct-convert scan/ --from B50f --to B30f --out o/ --models-dir runs/b50_b30/

\b
PAIRS: study folder(s) in any layout (all series in one folder, per-kernel sub-folders, exam
folders, folders reached through symbolic links). The two kernels' DICOM series (by
ConvolutionKernel tag; volumes named like B50f.nii.gz pair by folder) are paired by
FrameOfReferenceUID and slice position, or, where the UIDs differ (separately anonymised), by
acquisition (AcquisitionDate/Time, kVp, orientation, pixel grid, positions); mismatched geometry
is refused with the reason. Split by exam from 3 exams on, else by contiguous z slabs with a gap.
Starts from the shipped direction nearest in measured sharpness (--init demo). With --max-minutes
the run fits itself to the budget: it times its first steps, then plans 128 px crops (turned and
mirrored at random: --no-augment to keep them as cut), about one
epoch per minute and a one-cycle learning rate (peak 5e-4 from starting weights, 1e-3 from
scratch) that ends annealed within the budget (loading and the final test included); without,
the paper's recipe (30 whole-slice epochs, lr 1e-4, x0.1 every --lr-step epochs). OUT receives
best.safetensors, last.safetensors, state.pt, history.json and train_config.json (with the
split); the summary ends with the budget used and the held-out test RMSE before/after.
""",
)
@click.argument(
    "pairs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@_kernel_options
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Training folder (best/last weights, state.pt, history.json).",
)
@click.option(
    "--epochs",
    type=click.IntRange(1),
    default=None,
    help="Epochs (default 30; with --max-minutes about one per minute, 2 to 10).",
)
@batch_size_option(4, "Slices per training step.", most=1024)
@click.option(
    "--lr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="Learning rate (default 1e-4; with --max-minutes the one-cycle peak: 5e-4 from the starting "
    "weights, 1e-3 from scratch).",
)
@click.option(
    "--schedule",
    type=click.Choice(["auto", "onecycle", "step"]),
    default="auto",
    show_default=True,
    help="Learning-rate schedule: one cycle (fitted to --max-minutes when given) or x0.1 steps; auto: "
    "onecycle with --max-minutes, else step.",
)
@click.option(
    "--init",
    default="demo",
    show_default=True,
    help="Starting weights: 'demo' (the shipped direction nearest in measured sharpness: smoothing or "
    "sharpening), 'scratch', or a weights file to fine-tune.",
)
@click.option(
    "--weight-decay",
    type=FiniteFloatRange(min=0),
    default=1e-6,
    show_default=True,
    help="L2 weight decay of the optimiser.",
)
@click.option(
    "--lr-step", type=click.IntRange(1), default=20, show_default=True, help="Epochs per x0.1 step."
)
@click.option(
    "--split",
    default="0.6,0.2,0.2",
    show_default=True,
    callback=_fractions,
    help="Train/validation/test fractions: by exam (3+ exams) or by slabs along z (1-2 exams).",
)
@click.option(
    "--crop",
    type=click.IntRange(16),
    default=None,
    help="Random crops of this size (default whole slices; 128 with --max-minutes).",
)
@click.option(
    "--steps-per-epoch",
    type=click.IntRange(1),
    default=None,
    help="Training steps per epoch (default: one pass over the training slices).",
)
@click.option(
    "--augment/--no-augment",
    default=None,
    help="Turn each training crop by a random multiple of 90 degrees and mirror it at random "
    "(default: on with --max-minutes, off for the paper's recipe).",
)
@train_options
@overwrite_option
@common_options
def ct_train(
    pairs,
    source,
    target,
    out_dir,
    epochs,
    batch_size,
    lr,
    schedule,
    init,
    weight_decay,
    lr_step,
    split,
    crop,
    steps_per_epoch,
    augment,
    max_minutes,
    seed,
    resume,
    overwrite,
    device,
    quiet,
    as_json,
):
    """Train a kernel converter for one direction on paired series (split by exam or by z slabs)."""
    from medseg.ct.train import CTTrainConfig, train, train_text

    cfg = CTTrainConfig(
        source_kernel=source,
        target_kernel=target,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        schedule=schedule,
        init=init,
        weight_decay=weight_decay,
        lr_step_epochs=lr_step,
        split=split,
        seed=seed,
        crop=crop,
        steps_per_epoch=steps_per_epoch,
        augment=augment,
        max_minutes=max_minutes,
    )
    result = train(
        list(pairs), out_dir, cfg, device=device, resume=resume, overwrite=overwrite, progress=not quiet
    )
    finish(result, as_json=as_json, human=train_text)


@click.command(
    "ct-report",
    epilog="""\b
Examples:
  medseg ct-report cohort/ --from B50f --to B30f --out qa/
  medseg ct-report exam01/ exam02/ --from B50f --to B30f --out qa/ --save-masks

\b
Each exam folder holds the source-kernel series and the reference target-kernel series.
A failing exam is recorded in the report with its reason; the exit code is then 5.
""",
)
@click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@_kernel_options
@_vendor_option
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Report folder (ct_qa.html/.csv/.json/.pdf).",
)
@weights_option(WEIGHTS_HELP)
@_models_dir_option
@click.option("--save-masks", is_flag=True, help="Also write each exam's lung mask (NIfTI) to OUT/masks.")
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also write the PDF report.")
@click.option(
    "--conditioned/--no-conditioned",
    default=None,
    help="Also score the sharpness-conditioned converter on every exam (a second conversion each). "
    "Default: where it is installed and knows both kernels; --conditioned makes it required.",
)
@ray_task_option("exam")
@batch_size_option(None, BATCH_HELP)
@runtime_option
@amp_option
@overwrite_option
@common_options
def ct_report(
    inputs,
    source,
    target,
    vendor,
    out_dir,
    weights,
    models_dir,
    save_masks,
    pdf,
    conditioned,
    ray_address,
    batch_size,
    amp,
    overwrite,
    device,
    quiet,
    as_json,
):
    """RMSE and emphysema-index (LAA-950, Perc15) agreement QA with Bland-Altman, for a cohort."""
    from medseg.ct.report import ReportConfig, report_text, run_ct_report

    cfg = ReportConfig(
        source=source,
        target=target,
        vendor=vendor,
        weights=weights,
        models_dirs=models_dir,
        device=device,
        amp=amp,
        batch_size=batch_size,
        save_masks=save_masks,
        pdf=pdf,
        conditioned=conditioned,
        overwrite=overwrite,
        progress=not quiet,
    )
    mapper = None
    if ray_address is not None:  # Ray is imported only here
        from medseg.scale.items import ray_mapper

        mapper = ray_mapper(ray_address, device=device)
    finish(run_ct_report(list(inputs), out_dir, cfg, mapper=mapper), as_json=as_json, human=report_text)


@click.command(
    "ct-import-caffe",
    epilog="""\b
Examples:
  medseg ct-import-caffe snapshot_iter_119400.caffemodel --mean train_image_mean_B50f_B30f.binaryproto \\
      --from B50f --to B30f --out models/lee2019_B50f_to_B30f.safetensors
  medseg ct-convert scan/ --from B50f --to B30f --out scan_B30f/ --models-dir models/

\b
Reads the published Caffe model of Lee et al. 2019 (github leegaeun/CT_Kernel_Conversion) without
Caffe; nothing is downloaded: point at the files you fetched. The converter then computes
out = in + net(in - mean image), as the authors' notebook does (512 x 512 slices).
""",
)
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--mean",
    "mean",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The authors' train_image_mean_*.binaryproto.",
)
@_kernel_options
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Weights file to write (.safetensors).",
)
@click.option(
    "--input-offset",
    type=FINITE_FLOAT,
    default=None,
    help="CT-number offset of the network's input (default: inferred from the mean image, "
    "1024 for the authors' unsigned mean).",
)
@overwrite_option
@output_options
def ct_import_caffe(model, mean, source, target, out, input_offset, overwrite, quiet, as_json):
    """Import the authors' Caffe kernel-conversion model as medseg weights."""
    from medseg.ct.caffe import import_caffe
    from medseg.engine.checkpoint import read_meta

    path = import_caffe(
        model, mean, source=source, target=target, out=out, input_offset=input_offset, overwrite=overwrite
    )
    meta = read_meta(path)
    doc = {
        "weights": str(path),
        "task": meta.task,
        "config": meta.config,
        "normalisation": meta.normalisation,
    }
    emit(doc, as_json=as_json, human=lambda d: f"imported {d['task']} -> {d['weights']}")


commands = [ct_import_caffe, ct_convert, ct_models, ct_train, ct_report]
