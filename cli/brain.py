"""Brain tumour commands: brain-segment, brain-train, brain-eval (Havaei et al. 2017 CNNs)."""

from __future__ import annotations

from pathlib import Path

import click
from medseg_cli._types import FiniteFloatRange
from medseg_cli.options import (
    WEIGHTS_TYPE,
    amp_option,
    batch_size_option,
    common_options,
    finish,
    output_options,
    overwrite_option,
    ray_task_option,
    runtime_option,
    slim_options,
    train_options,
    val_fraction_option,
    weights_option,
)

LABELS = click.Choice(["brats2021", "brats2023", "havaei"])
MODS = click.Choice(["t1", "t1c", "t2", "flair"])
ARCHS = click.Choice(["twopath", "input-cascade", "local-cascade", "mf-cascade"])
# brain-eval reads either BraTS convention: 2018 (= 2018-2021: 1, 2, 4 ET) or 2023 (1, 2, 3 ET), or detects it
EVAL_LABELS = click.Choice(["auto", "2018", "2023", "brats2018", "brats2021", "brats2023", "havaei"])


def _human_segment(result) -> str:
    return "\n".join(
        f"{i.name}: WT {i.metrics['WT_ml']:.2f} mL, TC {i.metrics['TC_ml']:.2f} mL, "
        f"ET {i.metrics['ET_ml']:.2f} mL -> {i.outputs['seg']}"
        for i in result.items
        if i.ok
    )


def _human_train(result) -> str:
    if result.stopped != "completed":
        return (
            f"wrote {result.best_weights} ({result.extra['arch']}); the time budget shortened "
            f"{', '.join(result.extra.get('budget_shortened', []))}: run again with --resume to train them fully"
        )
    return (
        f"wrote {result.best_weights} ({result.extra['arch']}, validation loss {result.best_metric:.4g} on "
        f"{result.validated_on}, {result.seconds:.0f} s)"
    )


def _human_eval(result) -> str:
    s = result.summary
    if "dice_WT" not in s:
        return "no case could be evaluated"
    return (
        f"{s['dice_WT']['n']} case(s): Dice WT {s['dice_WT']['mean']:.3f}, TC {s['dice_TC']['mean']:.3f}, "
        f"ET {s['dice_ET']['mean']:.3f}; HD95 WT {s['hd95_WT']['mean']:.1f}, TC {s['hd95_TC']['mean']:.1f}, "
        f"ET {s['hd95_ET']['mean']:.1f} mm; report {result.outputs['html']}"
    )


@click.command(
    "brain-segment",
    epilog="""\b
Examples:
  medseg brain-segment --t1 t1.nii.gz --t1c t1ce.nii.gz --t2 t2.nii.gz --flair flair.nii.gz --out seg.nii.gz
  medseg brain-segment sample_data/brain/SYN_0001 --out results/
  medseg brain-segment cohort/ --out results/ --labels brats2023 --resample
  medseg brain-segment case/ --out pred/ --weights runs/ic/best.safetensors --weights runs/sr.safetensors
  medseg brain-segment cohort/ --out results/ --no-tta --amp off   # fastest fp32 path
\b
By default two nets run (the InputCascadeCNN on whole slices and a 3-D SegResNet) and their
tumour-core / whole-tumour / enhancing probabilities are averaged; one --weights runs that net alone.
Slice nets also run on the case rotated 180 degrees in-plane and the views are averaged (--no-tta:
once, faster); on a CPU with bf16 units the nets run in bf16 (--amp off: fp32). Both were chosen on
real validation cases (docs/brain.md).
Each case writes <out>/<case>_seg.nii.gz (or --out FILE for one case) plus
<stem>_volumes.json/.csv with WT/TC/ET volumes in mL; a batch also writes volumes.csv.
Inputs are skull-stripped MRI (BraTS style, zero background): NIfTI/NRRD/MHA files or one
DICOM series folder per modality, named as in BraTS 2018-2021 (_t1, _t1ce, _t2, _flair),
BraTS 2023+ (-t1n, -t1c, -t2w, -t2f) or plainly (t1, T1c, T1_post, t1gd, T2, FLAIR, T2-FLAIR,
any case). Modalities must share one grid unless --resample / --resample-to.
""",
)
@click.argument("case_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--t1", type=click.Path(exists=True), help="T1 image (file or DICOM folder).")
@click.option("--t1c", type=click.Path(exists=True), help="T1 contrast-enhanced image.")
@click.option("--t2", type=click.Path(exists=True), help="T2 image.")
@click.option("--flair", type=click.Path(exists=True), help="FLAIR image.")
@click.option(
    "--out", "out", required=True, type=click.Path(), help="Output file (.nii.gz, one case) or folder."
)
@weights_option(
    "Weights (.safetensors) made by brain-train or shipped with medseg; repeat it to average several nets' "
    "tumour-region probabilities. Default: the demo ensemble, InputCascadeCNN + 3-D SegResNet trained on 9 "
    "real BraTS 2018 cases (research use, not for clinical use; docs/brain.md).",
    multiple=True,
)
@click.option(
    "--labels",
    type=LABELS,
    default="brats2021",
    show_default=True,
    help="Output label convention: brats2021 (1 NCR/NET, 2 ED, 4 ET), brats2023 (1, 2, 3 ET), "
    "havaei (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing).",
)
@click.option(
    "--resample-to",
    type=MODS,
    default=None,
    help="Resample the other modalities (linear) onto this one's grid instead of failing on a mismatch.",
)
@click.option(
    "--resample",
    is_flag=True,
    help="Same as --resample-to t1c: resample T1, T2 and FLAIR onto the T1c grid (with a warning).",
)
@click.option("--no-n4", is_flag=True, help="Skip N4 bias correction (data already corrected; faster).")
@click.option(
    "--no-postprocess", is_flag=True, help="Keep small and core-less connected components (docs/brain.md)."
)
@click.option(
    "--native-spacing",
    is_flag=True,
    help="Run the nets at the case's own in-plane spacing, even when the weights were trained at another "
    "(default: resample to the weights' training spacing when it differs by more than 15%, labels back "
    "on the input grid).",
)
@click.option(
    "--no-tta",
    is_flag=True,
    help="Run each slice net once (a third less time) instead of averaging it with the "
    "case rotated 180 degrees in-plane; a single slice net then gives its plain argmax (docs/brain.md).",
)
@ray_task_option("case")
@batch_size_option(8)
@runtime_option
@amp_option
@overwrite_option
@common_options
def brain_segment(
    case_dirs,
    t1,
    t1c,
    t2,
    flair,
    out,
    weights,
    labels,
    resample_to,
    resample,
    no_n4,
    no_postprocess,
    native_spacing,
    no_tta,
    ray_address,
    batch_size,
    amp,
    overwrite,
    device,
    quiet,
    as_json,
):
    """Segment brain tumours (WT/TC/ET) in 4-modality MRI (Havaei cascade + 3-D SegResNet by default)."""
    from medseg.brain.io import resolve_cases
    from medseg.brain.segment import SegmentConfig, segment_cases

    cases = resolve_cases(list(case_dirs), t1=t1, t1c=t1c, t2=t2, flair=flair, exclude=[out])
    cfg = SegmentConfig(
        weights=list(weights) or None,
        labels=labels,
        resample_to=resample_to or ("t1c" if resample else None),
        batch_size=batch_size,
        n4=False if no_n4 else None,
        postprocess=not no_postprocess,
        device=device,
        amp=amp,
        overwrite=overwrite,
        progress=not quiet,
        native_spacing=native_spacing,
        tta=not no_tta,
    )
    mapper = None
    if ray_address is not None:  # Ray is imported only here
        from medseg.scale.items import ray_mapper

        mapper = ray_mapper(ray_address, device=device)
    finish(segment_cases(cases, Path(out), cfg, mapper=mapper), as_json=as_json, human=_human_segment)


@click.command(
    "brain-train",
    epilog="""\b
Examples:
  medseg brain-train train_cases/ --arch twopath --out runs/twopath
  medseg brain-train train_cases/ --arch input-cascade --first-weights runs/twopath/best.safetensors --out runs/ic
  medseg brain-train train_cases/ --arch input-cascade --out runs/ic --resume
  medseg brain-train train_cases/ --batch-norm --slim 1e-4 --prune-ratio 0.5 --out runs/slim
\b
Case folders hold <case>_t1/_t1ce/_t2/_flair and <case>_seg (BraTS naming). Phase 1 trains on
class-balanced patches (OUT/phase1), phase 2 only the output layer on the natural distribution
(OUT/phase2); the final model is OUT/best.safetensors. Cascades train (OUT/first/) or load
(--first-weights) a TwoPathCNN first, freeze it, then train the second stage. With two or more
cases, --val-fraction of them (at least one) are held out for validation.
Network slimming (Liu et al. 2017; twopath with --batch-norm): --slim adds an L1 penalty on the
batch-norm scales in phase 1; --prune-ratio then removes that share of the maxout features (one
global threshold), fine-tunes the narrower net (OUT/pruned-finetune) and runs phase 2 on it; its
widths are in the weights, so brain-segment loads it as any other (docs/brain.md).
""",
)
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option(
    "--arch",
    type=ARCHS,
    default="twopath",
    show_default=True,
    help="TwoPathCNN alone, or a cascade of two (Havaei et al. 2017) where the first net's output joins "
    "the second's input, its local path, or its output layer (mf).",
)
@click.option(
    "--first-weights",
    type=WEIGHTS_TYPE,
    default=None,
    help="Trained TwoPathCNN weights for a cascade's first stage (else trained first, in OUT/first).",
)
@click.option(
    "--labels", type=LABELS, default="brats2021", show_default=True, help="Label convention of the segs."
)
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True, help="Phase-1 epochs.")
@click.option(
    "--steps", type=click.IntRange(1), default=30, show_default=True, help="Steps per phase-1 epoch."
)
@click.option(
    "--phase2-epochs",
    type=click.IntRange(1),
    default=2,
    show_default=True,
    help="Phase-2 epochs (output layer only, natural class distribution).",
)
@click.option(
    "--batch-size", type=click.IntRange(1, 65536), default=128, show_default=True, help="Patches per step."
)
@click.option(
    "--lr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=0.003,
    show_default=True,
    help="Phase-1 learning rate (SGD, momentum 0.9); phase 2 uses a third of it.",
)
@val_fraction_option(0.2, "whole cases, at least one when there are two or more")
@click.option(
    "--local-channels",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Feature maps of each local-path layer.",
)
@click.option(
    "--global-channels",
    type=click.IntRange(1, 4096),
    default=160,
    show_default=True,
    help="Feature maps of the global-path layer.",
)
@click.option(
    "--batch-norm", is_flag=True, help="Batch norm after each maxout layer (not in the paper; for --slim)."
)
@slim_options(
    what=" in phase 1 (needs --batch-norm)",
    after=" (phase-1 patches and steps)",
    prune_help="After phase 1, prune this share of the maxout features (smallest batch-norm scales, one global "
    "threshold; twopath) and fine-tune before phase 2.",
    finetune_default=3,
)
@click.option("--no-n4", is_flag=True, help="Skip N4 bias correction in preprocessing.")
@click.option(
    "--n4-shrink",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="N4 shrink factor (at least: every axis is also shrunk to <= 32 voxels for the fit).",
)
@train_options
@overwrite_option
@common_options
def brain_train(
    case_dirs,
    out,
    arch,
    first_weights,
    labels,
    epochs,
    steps,
    phase2_epochs,
    batch_size,
    lr,
    val_fraction,
    local_channels,
    global_channels,
    batch_norm,
    slim,
    prune_ratio,
    finetune_epochs,
    no_n4,
    n4_shrink,
    max_minutes,
    seed,
    resume,
    overwrite,
    device,
    quiet,
    as_json,
):
    """Train a TwoPathCNN or a cascade on case folders (two-phase patch training)."""
    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import BrainTrainConfig, PhaseConfig, train

    cfg = BrainTrainConfig(
        net=BrainNetConfig(
            arch=arch, local_channels=local_channels, global_channels=global_channels, batch_norm=batch_norm
        ),
        preprocess=PreprocessConfig(n4=not no_n4, n4_shrink=n4_shrink),
        phase1=PhaseConfig(epochs=epochs, steps_per_epoch=steps, lr=lr),
        phase2=PhaseConfig(epochs=phase2_epochs, steps_per_epoch=max(1, steps * 2 // 3), lr=lr / 3),
        batch_size=batch_size,
        val_fraction=val_fraction,
        seed=seed,
        labels=labels,
        max_minutes=max_minutes,
        slim=slim,
        prune_ratio=prune_ratio,
        finetune_epochs=finetune_epochs,
    )
    result = train(
        list(case_dirs),
        Path(out),
        cfg,
        first_weights=first_weights,
        device=device,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    finish(result, as_json=as_json, human=_human_train)


@click.command(
    "brain-eval",
    epilog="""\b
Examples:
  medseg brain-eval sample_data/brain/ --pred results/ --out qa/
  medseg brain-eval cohort/ --pred results/ --out qa/ --pred-labels brats2023
\b
Matches <pred>/<case>_seg.nii.gz to each case folder's ground truth; writes qa/report.html
(tables, box plots, overlays), metrics.json and metrics.csv: per case and mean Dice, HD95 (mm),
sensitivity and specificity for WT/TC/ET and predicted vs true volumes (mL). A region empty in
exactly one of prediction and truth scores Dice 0 and HD95 = the grid diagonal (373.13 mm on BraTS),
both empty Dice 1 and HD95 0 (the BraTS convention).
""",
)
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--pred",
    "pred_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False),
    help="Folder of predicted segmentations.",
)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option(
    "--labels",
    type=EVAL_LABELS,
    default="auto",
    show_default=True,
    help="Ground-truth label convention: 2018 (BraTS 2018-2021: 1 NCR/NET, 2 ED, 4 ET), 2023 (ET = 3), "
    "havaei, or auto (per file: 4 present -> 2018, 3 -> 2023, both -> havaei).",
)
@click.option(
    "--pred-labels",
    type=EVAL_LABELS,
    default=None,
    help="Prediction label convention (default: --labels; with auto detected per file).",
)
@overwrite_option
@output_options
def brain_eval(case_dirs, pred_dir, out, labels, pred_labels, overwrite, quiet, as_json):
    """Dice, HD95 (mm), sensitivity/specificity and volumes for WT/TC/ET per case and mean, HTML QA report."""
    from medseg.brain.evaluate import EvalConfig, evaluate_cases

    cfg = EvalConfig(labels=labels, pred_labels=pred_labels, overwrite=overwrite, progress=not quiet)
    finish(evaluate_cases(pred_dir, list(case_dirs), out, cfg), as_json=as_json, human=_human_eval)


commands = [brain_segment, brain_train, brain_eval]
