"""CT kernel conversion commands: ct-convert, ct-models, ct-train, ct-report."""

from __future__ import annotations

from pathlib import Path

import click
from medseg_cli.options import amp_option, batch_size_option, common_options, emit, overwrite_option

KERNEL_HELP = "Reconstruction kernel: B10f, B30f, B50f or B70f."


def _models_dir_option(func):
    return click.option("--models-dir", multiple=True, type=click.Path(file_okay=False, path_type=Path),
                        help="Extra folder(s) to search for weights (also $MEDSEG_CT_MODELS).")(func)


def _kernel_options(func):
    func = click.option("--to", "target", required=True, help=KERNEL_HELP)(func)
    func = click.option("--from", "source", required=True, help=KERNEL_HELP)(func)
    return func


@click.command("ct-convert", epilog="""\b
Examples:
  medseg ct-convert scan/ --from B50f --to B30f --out scan_B30f/
  medseg ct-convert scan/ --from B50f --to B30f --out scan_B30f/ \\
      --reference scan_ref_B30f/ --report qa/
  medseg ct-convert chest.nii.gz --from B30f --to B50f --out chest_B50f.nii.gz
  medseg ct-convert study/ --series-uid 1.2.3... --from B50f --to B30f --out out/ --format nifti
""")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, path_type=Path))
@_kernel_options
@click.option("--out", "output", required=True, type=click.Path(path_type=Path),
              help="Output series folder (DICOM) or image file (.nii.gz).")
@click.option("--format", "output_format", type=click.Choice(["dicom", "nifti"]), default=None,
              help="Output format (default: DICOM for DICOM input, else NIfTI).")
@click.option("--series-uid", default=None, help="Pick one series when INPUT holds several.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Weights file (default: search --models-dir, $MEDSEG_CT_MODELS, demo weights).")
@_models_dir_option
@click.option("--reference", type=click.Path(exists=True, path_type=Path), default=None,
              help="Reference series in the target kernel: also write a QA report (RMSE, LAA-950).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the QA report (default: OUT + '_qa'); needs --reference.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Slices per forward pass (default: 16 on CUDA, 1 on CPU).")
@amp_option
@overwrite_option
@common_options
def ct_convert(input_path, source, target, output, output_format, series_uid, weights, models_dir, reference,
               report_dir, batch_size, amp, overwrite, device, quiet, as_json):
    """Convert a CT series from one reconstruction kernel to another (no sinogram needed).

    INPUT is a DICOM series folder (any file names), a DICOM file, or a NIfTI/NRRD/MHA volume or
    slice. DICOM input gives a derived DICOM series (new UIDs, same patient/study and geometry,
    signed int16 HU). The input is never modified.
    """
    from medseg.ct.convert import convert

    if report_dir is not None and reference is None:
        raise click.UsageError("--report needs --reference")
    result = convert(input_path, output, source=source, target=target, weights=weights, models_dirs=models_dir,
                     series_uid=series_uid, output_format=output_format, batch_size=batch_size, device=device,
                     amp=amp, overwrite=overwrite, progress=not quiet)
    summary = result.to_dict()
    if reference is not None:
        from medseg.ct.report import qa_single
        from medseg.io.atomic import check_output

        report_dir = report_dir or output.with_name(output.name.split(".")[0] + "_qa")
        check_output(report_dir / "ct_qa.json", overwrite=overwrite)
        qa = qa_single(input_path, output, reference, report_dir, source=result.source_kernel,
                       target=result.target_kernel, series_uid=series_uid)
        summary["qa"] = {"report": str(report_dir / "ct_qa.html"), **qa["exams"][0]}

    def human(s):
        text = (f"{s['slices']} slices {s['source_kernel']}->{s['target_kernel']} in {s['seconds']:.1f} s "
                f"({s['slices_per_second']:.1f} slices/s on {s['device']}) -> {s['output']}")
        if "qa" in s:
            q = s["qa"]
            text += (f"\nRMSE vs reference: original {q['rmse_original_hu']:.1f} HU, converted "
                     f"{q['rmse_converted_hu']:.1f} HU ({q['rmse_reduction_pct']:.1f} % lower); LAA-950 original "
                     f"{q['laa950_original']:.1f} %, converted {q['laa950_converted']:.1f} %, reference "
                     f"{q['laa950_reference']:.1f} %\nQA report: {q['report']}")
        return text

    emit(summary, as_json=as_json, human=human)


@click.command("ct-models", epilog="""\b
Examples:
  medseg ct-models
  medseg ct-models --models-dir my_models/ --json
""")
@_models_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ct_models(models_dir, as_json):
    """List the kernel-conversion models that are available."""
    from medseg.ct.models import list_models

    rows = [{"from": e.source, "to": e.target, "path": str(e.path), "version": e.meta.version,
             "training_data": e.meta.training_data, "created": e.meta.created} for e in list_models(models_dir)]
    emit({"models": rows}, as_json=as_json, human=lambda s: "\n".join(
        f"{r['from']} -> {r['to']}  {r['path']}\n    trained on: {r['training_data']}" for r in s["models"])
        or "no models found (train with 'medseg ct-train' or pass --models-dir)")


@click.command("ct-train", epilog="""\b
Examples:
  medseg ct-train pairs/ --from B50f --to B30f --out models/b50_b30/
  medseg ct-train pairs/ --from B50f --to B30f --out models/b50_b30/ --resume
  medseg ct-train pairs/ --from B30f --to B50f --out m/ --epochs 5 --crop 128   # quick CPU run

\b
PAIRS: a folder of exam folders, each with series of both kernels (DICOM, identified by
their ConvolutionKernel tag, or volumes named like B50f.nii.gz).
""")
@click.argument("pairs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_kernel_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@batch_size_option(4)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--weight-decay", type=float, default=1e-6, show_default=True)
@click.option("--lr-step", type=click.IntRange(1), default=20, show_default=True, help="Epochs per x0.1 step.")
@click.option("--split", default="0.6,0.2,0.2", show_default=True, help="Train/val/test fractions by exam.")
@click.option("--crop", type=click.IntRange(16), default=None, help="Random crops of this size (default whole slices).")
@click.option("--steps-per-epoch", type=click.IntRange(1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from OUT/last_state.pt.")
@overwrite_option
@common_options
def ct_train(pairs, source, target, out_dir, epochs, batch_size, lr, weight_decay, lr_step, split, crop,
             steps_per_epoch, seed, resume, overwrite, device, quiet, as_json):
    """Train a kernel converter for one direction on paired series, split by exam."""
    from medseg.ct.train import CTTrainConfig, train

    try:
        fractions = tuple(float(v) for v in split.split(","))
        assert len(fractions) == 3
    except (ValueError, AssertionError):
        raise click.BadParameter("expected three comma-separated fractions", param_hint="--split") from None
    cfg = CTTrainConfig(source_kernel=source, target_kernel=target, epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=weight_decay, lr_step_epochs=lr_step, split=fractions, seed=seed, crop=crop,
                        steps_per_epoch=steps_per_epoch)
    result = train(list(pairs), out_dir, cfg, device=device, resume=resume, overwrite=overwrite,
                   progress=not quiet)
    emit(result, as_json=as_json, human=lambda r: f"best validation RMSE {r['best_val_rmse_hu']:.2f} HU "
                                                   f"after {r['epochs']} epoch(s) -> {r['weights']}")


@click.command("ct-report", epilog="""\b
Examples:
  medseg ct-report cohort/ --from B50f --to B30f --out qa/
  medseg ct-report exam01/ exam02/ --from B50f --to B30f --out qa/ --save-masks

\b
Each exam folder holds the source-kernel series and the reference target-kernel series.
""")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@_kernel_options
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@_models_dir_option
@click.option("--save-masks", is_flag=True, help="Also write each exam's lung mask (NIfTI).")
@click.option("--pdf/--no-pdf", default=True, show_default=True, help="Also write the PDF report.")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Slices per forward pass (default: 16 on CUDA, 1 on CPU).")
@amp_option
@overwrite_option
@common_options
def ct_report(inputs, source, target, out_dir, weights, models_dir, save_masks, pdf, batch_size, amp, overwrite,
              device, quiet, as_json):
    """RMSE and emphysema-index (LAA-950, Perc15) agreement QA with Bland-Altman, for a cohort."""
    from medseg.ct.report import run_ct_report

    doc = run_ct_report(list(inputs), out_dir, source=source, target=target, weights=weights,
                        models_dirs=models_dir, device=device, amp=amp, batch_size=batch_size, save_masks=save_masks,
                        pdf=pdf, overwrite=overwrite, progress=not quiet)

    def human(d):
        s = d["summary"]
        ba = s.get("bland_altman_laa950", {})
        lines = [f"{s['ok']}/{s['exams']} exam(s); mean RMSE reduction {s.get('rmse_reduction_pct_mean', float('nan')):.1f} %"]
        for name, v in ba.items():
            lines.append(f"LAA-950 {name.replace('_', ' ')}: bias {v['bias']:+.2f}, LoA "
                         f"{v['loa_low']:+.2f} to {v['loa_high']:+.2f}" if v["sd"] is not None else
                         f"LAA-950 {name.replace('_', ' ')}: bias {v['bias']:+.2f}")
        lines.append(f"report: {Path(out_dir) / 'ct_qa.html'}")
        return "\n".join(lines)

    emit(doc, as_json=as_json, human=human)


commands = [ct_convert, ct_models, ct_train, ct_report]
