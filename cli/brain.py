"""Brain tumour commands: brain-segment, brain-train, brain-eval (Havaei et al. 2017 CNNs)."""

from __future__ import annotations

import click
from medseg_cli.options import amp_option, batch_size_option, common_options, emit, overwrite_option

LABELS = click.Choice(["brats2021", "brats2023", "havaei"])
MODS = click.Choice(["t1", "t1c", "t2", "flair"])
ARCHS = click.Choice(["twopath", "input-cascade", "local-cascade", "mf-cascade"])


def _human_segment(summary: dict) -> str:
    lines = [f"{r['case']}: WT {r['WT_ml']:.2f} mL, TC {r['TC_ml']:.2f} mL, ET {r['ET_ml']:.2f} mL -> {r['output']}"
             for r in summary["cases"]]
    return "\n".join(lines)


@click.command("brain-segment", epilog="""\b
Examples:
  medseg brain-segment --t1 t1.nii.gz --t1c t1ce.nii.gz --t2 t2.nii.gz --flair flair.nii.gz --out seg.nii.gz
  medseg brain-segment sample_data/brain/SYN_0001 --out results/
  medseg brain-segment cohort/ --out results/ --labels brats2023 --resample-to t1c
\b
Each case writes <out>/<case>_seg.nii.gz (or --out FILE for one case) plus
<stem>_volumes.json/.csv with WT/TC/ET volumes in mL; a batch also writes volumes.csv.
Inputs are skull-stripped MRI (BraTS style, zero background): NIfTI/NRRD/MHA files or one
DICOM series folder per modality. Modalities must share one grid unless --resample-to.
""")
@click.argument("case_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option("--t1", type=click.Path(exists=True), help="T1 image (file or DICOM folder).")
@click.option("--t1c", type=click.Path(exists=True), help="T1 contrast-enhanced image.")
@click.option("--t2", type=click.Path(exists=True), help="T2 image.")
@click.option("--flair", type=click.Path(exists=True), help="FLAIR image.")
@click.option("--out", "out", required=True, type=click.Path(), help="Output file (.nii.gz, one case) or folder.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Weights (.safetensors); default: demo InputCascadeCNN trained on synthetic data.")
@click.option("--labels", type=LABELS, default="brats2021", show_default=True,
              help="Output label convention: brats2021 (1 NCR/NET, 2 ED, 4 ET), brats2023 (1, 2, 3 ET), "
                   "havaei (1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing).")
@click.option("--resample-to", type=MODS, default=None,
              help="Resample the other modalities (linear) onto this one's grid instead of failing on a mismatch.")
@click.option("--no-n4", is_flag=True, help="Skip N4 bias correction (data already corrected; faster).")
@click.option("--no-postprocess", is_flag=True, help="Keep small connected components.")
@batch_size_option(8)
@amp_option
@overwrite_option
@common_options
def brain_segment(case_dirs, t1, t1c, t2, flair, out, weights, labels, resample_to, no_n4, no_postprocess,
                  batch_size, amp, overwrite, device, quiet, as_json):
    """Segment brain tumours (WT/TC/ET) in 4-modality MRI with a Havaei CNN (whole slices, FCN)."""
    from pathlib import Path

    from medseg.brain.io import case_from_paths, expand_case_dirs, find_case_files
    from medseg.brain.segment import SegmentOptions, segment_cases
    from medseg.errors import InputError

    out = Path(out)
    explicit = any(v is not None for v in (t1, t1c, t2, flair))
    if explicit and case_dirs:
        raise InputError("give either CASE_DIR arguments or --t1/--t1c/--t2/--flair, not both")
    if explicit:
        cases = [case_from_paths(t1=t1, t1c=t1c, t2=t2, flair=flair)]
    elif case_dirs:
        dirs = expand_case_dirs(list(case_dirs))
        cases = [find_case_files(d) for d in dirs] if len(dirs) == 1 else dirs  # batch: bad cases skipped
    else:
        raise InputError("nothing to segment: give CASE_DIR(s) or --t1 --t1c --t2 --flair")
    single_file = len(cases) == 1 and out.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha"))
    outputs = [out] if single_file else [out / f"{c.name}_seg.nii.gz" for c in cases]
    opts = SegmentOptions(labels=labels, resample_to=resample_to, batch_size=batch_size,
                          n4=False if no_n4 else None, postprocess=not no_postprocess)
    summary = segment_cases(cases, outputs, weights=weights, options=opts, device=device, amp=amp,
                            overwrite=overwrite)
    emit(summary, as_json=as_json, human=_human_segment)


@click.command("brain-train", epilog="""\b
Examples:
  medseg brain-train train_cases/ --arch twopath --out runs/twopath
  medseg brain-train train_cases/ --arch input-cascade --first-weights runs/twopath/brain_twopath.safetensors --out runs/ic
  medseg brain-train train_cases/ --arch input-cascade --out runs/ic --resume
\b
Case folders hold <case>_t1/_t1ce/_t2/_flair and <case>_seg (BraTS naming). Phase 1 trains on
class-balanced patches, phase 2 only the output layer on the natural distribution. Cascades
train (or load, --first-weights) a TwoPathCNN first, freeze it, then train the second stage.
""")
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--arch", type=ARCHS, default="twopath", show_default=True)
@click.option("--first-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Trained TwoPathCNN weights for a cascade's first stage (else trained first).")
@click.option("--labels", type=LABELS, default="brats2021", show_default=True, help="Label convention of the segs.")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True, help="Phase-1 epochs (max).")
@click.option("--steps", type=click.IntRange(1), default=30, show_default=True, help="Steps per epoch.")
@click.option("--phase2-epochs", type=click.IntRange(1), default=2, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=128, show_default=True, help="Patches per step.")
@click.option("--lr", type=float, default=0.003, show_default=True, help="Phase-1 learning rate (SGD, momentum 0.9).")
@click.option("--local-channels", type=click.IntRange(1), default=64, show_default=True)
@click.option("--global-channels", type=click.IntRange(1), default=160, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-n4", is_flag=True, help="Skip N4 bias correction in preprocessing.")
@click.option("--n4-shrink", type=click.IntRange(1), default=4, show_default=True, help="N4 shrink factor.")
@click.option("--resume", is_flag=True, help="Continue from <out>/train_state.pt.")
@overwrite_option
@common_options
def brain_train(case_dirs, out, arch, first_weights, labels, epochs, steps, phase2_epochs, batch_size, lr,
                local_channels, global_channels, seed, no_n4, n4_shrink, resume, overwrite, device, quiet, as_json):
    """Train a TwoPathCNN or a cascade on case folders (two-phase patch training)."""
    from pathlib import Path

    from medseg.brain.io import expand_case_dirs
    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import PhaseConfig, TrainConfig, train

    dirs = expand_case_dirs(list(case_dirs))
    cfg = TrainConfig(net=BrainNetConfig(arch=arch, local_channels=local_channels, global_channels=global_channels),
                      preprocess=PreprocessConfig(n4=not no_n4, n4_shrink=n4_shrink),
                      phase1=PhaseConfig(epochs=epochs, steps_per_epoch=steps, lr=lr),
                      phase2=PhaseConfig(epochs=phase2_epochs, steps_per_epoch=max(1, steps * 2 // 3), lr=lr / 3),
                      batch_size=batch_size, seed=seed, labels=labels,
                      training_data=f"{len(dirs)} case(s): {', '.join(d.name for d in dirs[:5])}"
                                    f"{' ...' if len(dirs) > 5 else ''}")
    result = train(dirs, Path(out), cfg, first_weights=Path(first_weights) if first_weights else None,
                   device=device, resume=resume, overwrite=overwrite)
    emit(result, as_json=as_json, human=lambda r: f"wrote {r['weights']} ({r['seconds']:.0f} s)")


@click.command("brain-eval", epilog="""\b
Examples:
  medseg brain-eval sample_data/brain/ --pred results/ --out qa/
  medseg brain-eval cohort/ --pred results/ --out qa/ --pred-labels brats2023
\b
Matches <pred>/<case>_seg.nii.gz to each case folder's ground truth; writes qa/report.html
(tables, box plots, overlays), metrics.json and metrics.csv.
""")
@click.argument("case_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--pred", "pred_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder of predicted segmentations.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--labels", type=LABELS, default="brats2021", show_default=True, help="Ground-truth label convention.")
@click.option("--pred-labels", type=LABELS, default=None, help="Prediction label convention (default: --labels).")
@overwrite_option
@common_options
def brain_eval(case_dirs, pred_dir, out, labels, pred_labels, overwrite, device, quiet, as_json):
    """Dice and HD95 (mm) for WT/TC/ET per case and summary, with an HTML QA report."""
    from medseg.brain.evaluate import evaluate_cases

    result = evaluate_cases(pred_dir, list(case_dirs), out, labels=labels, pred_labels=pred_labels,
                            overwrite=overwrite)

    def human(r: dict) -> str:
        s = r["summary"]
        return (f"{len(r['cases'])} case(s): Dice WT {s['dice_WT']['mean']:.3f}, TC {s['dice_TC']['mean']:.3f}, "
                f"ET {s['dice_ET']['mean']:.3f}; report {r['outputs']['html']}")

    emit(result, as_json=as_json, human=human)


commands = [brain_segment, brain_train, brain_eval]
