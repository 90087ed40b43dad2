"""cells-segment, cells-train, cells-eval: U-Net cell segmentation (medseg.cells)."""

from __future__ import annotations

import click
from medseg_cli._types import FiniteFloatRange
from medseg_cli.options import (
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

SEGMENT_EPILOG = """\b
Examples:
  medseg cells-segment sample_data/cells/images/ --out cells_out/
  medseg cells-segment big.tif --out out/ --weights my.safetensors --tile 1024 --save-prob
  medseg cells-segment stack.tif --out out/ --json --overwrite

\b
Outputs per image: NAME_labels.tif (instances), NAME_overlay.png, NAME_cells.csv
(label, area, centroid, perimeter, eccentricity, mean intensity), optional NAME_prob.tif;
per batch: summary.json (this run only), report.html. An unreadable image is a failed item
(listed, exit 5) and leaves no outputs; fix it and rerun with --resume to segment only what is
missing.
"""

TRAIN_EPILOG = """\b
Examples:
  medseg cells-train --images train/img --masks train/mask --out run1/ --epochs 30
  medseg cells-train --synthetic 24 --out demo_run/ --base-channels 8 --batch-norm --max-minutes 10
  medseg cells-train --images train/img --masks train/mask --out run1/ --epochs 30 --resume
  medseg cells-train --images train/img --masks train/mask --out run3/ --target dist   # instance target

\b
Masks are instance labels or binary masks (split into connected components), matched to
images by name (NAME.png <-> NAME.png / NAME_mask.tif / NAME_labels.tif). A share of the
pairs (--val-fraction) is held out for validation. Files in OUT: best.safetensors,
last.safetensors, state.pt (optimizer for --resume), history.json, train_config.json.
Network slimming (Liu et al. 2017; unet2015 with batch norm, e.g. the demo weights): --slim adds
an L1 penalty on the batch-norm scales; --prune-ratio then removes that share of the channels
(one global threshold) and fine-tunes: OUT/sparse/, OUT/pruned.safetensors, OUT/finetune/, and the
pruned net in OUT/best.safetensors, which every command loads (docs/cells.md).
"""

EVAL_EPILOG = """\b
Examples:
  medseg cells-eval cells_out/ --truth sample_data/cells/masks/
  medseg cells-eval cells_out/a_labels.tif --truth gt/ --out metrics.json --json
"""


def _channel_option(f):
    return click.option(
        "--channel",
        type=click.IntRange(0),
        default=None,
        help="Channel (0-based) of a multi-channel image that holds the nuclei/cells.",
    )(f)


def _stain_option(f):
    return click.option(
        "--stain",
        type=click.Choice(["auto", "fluo", "phase", "he", "ihc"]),
        default="auto",
        show_default=True,
        help="Image type: fluorescence, phase contrast, H&E or IHC brightfield (hematoxylin channel by "
        "colour deconvolution); auto decides per image and reports it.",
    )(f)


def _diameter(value: str | None, pixel_size: float | None) -> float | str | None:
    """--diameter: a positive number, 'auto' (the default) or 'none' (a usage error otherwise)."""
    word = "auto" if value is None else value.strip().lower()
    if word in ("auto", "none"):
        if pixel_size is not None:
            raise click.BadParameter(
                "--pixel-size needs --diameter in um (a number)", param_hint="--pixel-size"
            )
        return None if word == "none" else "auto"
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a number, 'auto' nor 'none'", param_hint="--diameter"
        ) from None
    if not number > 0 or number == float("inf"):  # NaN too: not > 0
        raise click.BadParameter(f"must be a positive, finite number, got {value}", param_hint="--diameter")
    return number


@click.command("cells-segment", epilog=SEGMENT_EPILOG)
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@weights_option(
    "Weights (.safetensors from cells-train); they then segment every image. Default: the demo weights, "
    "trained on real DSB 2018 nuclei (H&E/IHC images get their brightfield specialist); research use, "
    "not for clinical use."
)
@click.option(
    "--tile",
    type=click.IntRange(64),
    default=512,
    show_default=True,
    help="Output tile edge (px; the whole image when smaller); each tile reads the net's context margin "
    "around it (92 px for the demo U-Net). Smaller tiles use less memory.",
)
@click.option(
    "--threshold",
    type=FiniteFloatRange(0, 1),
    default=0.6,
    show_default=True,
    help="Cell probability threshold.",
)
@click.option("--min-size", type=click.IntRange(0), default=40, show_default=True, help="Smallest cell (px).")
@click.option(
    "--solidity",
    type=FiniteFloatRange(0, 1.01),
    default=0.85,
    show_default=True,
    help="Only components less convex than this are split by the watershed.",
)
@click.option(
    "--h",
    "h",
    type=FiniteFloatRange(0),
    default=2.0,
    show_default=True,
    help="Watershed seed depth on the distance transform (px); larger merges more.",
)
@click.option("--no-watershed", is_flag=True, help="Connected components only (no splitting of merges).")
@_channel_option
@_stain_option
@click.option(
    "--diameter",
    type=str,
    default="auto",
    show_default=True,
    help="Typical cell diameter (px, or um with --pixel-size); 'auto' estimates it per image from first "
    "passes at scale 1 and 1/2; 'none' keeps the input scale. The image is rescaled to the model's "
    "training scale and results mapped back.",
)
@click.option(
    "--pixel-size",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    help="Pixel size in um: --diameter is then in um.",
)
@click.option("--save-prob", is_flag=True, help="Also write the cell-probability map (float TIFF).")
@click.option("--no-report", is_flag=True, help="Skip the HTML QA report.")
@click.option("--resume", is_flag=True, help="Keep images an earlier run in OUT finished; segment the rest.")
@ray_task_option("image")
@batch_size_option(4, "Tiles per forward pass.")
@runtime_option
@amp_option
@overwrite_option
@common_options
def cells_segment(
    images,
    out_dir,
    weights,
    tile,
    threshold,
    min_size,
    solidity,
    h,
    no_watershed,
    channel,
    stain,
    diameter,
    pixel_size,
    save_prob,
    no_report,
    resume,
    ray_address,
    batch_size,
    amp,
    overwrite,
    device,
    quiet,
    as_json,
):
    """Segment cells (instances) in PNG/TIFF microscopy images of any size."""
    if resume and overwrite:  # as slide-score and the *-train commands: which one was meant is unknown
        raise click.UsageError(
            "--resume and --overwrite exclude each other (keep finished images, or replace them)",
            ctx=click.get_current_context(),
        )
    from medseg.cells.batch import human_summary, segment_images
    from medseg.cells.instances import InstanceConfig
    from medseg.cells.segment import SegmentConfig

    config = SegmentConfig(
        channel=channel,
        stain=stain,
        diameter=_diameter(diameter, pixel_size),
        pixel_size=pixel_size,
        weights=weights,
        device=device,
        amp=amp,
        tile=tile,
        batch_size=batch_size,
        save_probability=save_prob,
        report=not no_report,
        overwrite=overwrite,
        resume=resume,
        progress=not quiet,
        instances=InstanceConfig(
            threshold=threshold, min_size=min_size, h=h, solidity=solidity, watershed=not no_watershed
        ),
    )
    mapper = None
    if ray_address is not None:  # Ray is imported only here
        from medseg.scale.items import ray_mapper

        mapper = ray_mapper(ray_address, device=device)
    finish(segment_images(list(images), out_dir, config, mapper=mapper), as_json=as_json, human=human_summary)


@click.command("cells-train", epilog=TRAIN_EPILOG)
@click.option(
    "--images", "images_dir", type=click.Path(file_okay=False, exists=True), help="Training images folder."
)
@click.option("--masks", "masks_dir", type=click.Path(file_okay=False, exists=True), help="Masks folder.")
@click.option(
    "--synthetic",
    type=click.IntRange(1, 10000),
    default=None,
    help="Train on N synthetic images (medseg.synthetic.cells) instead of --images/--masks.",
)
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Run folder (checkpoints)."
)
@click.option(
    "--arch",
    type=click.Choice(["unet2015", "basicunet", "unet_se", "fcn8s", "deeplabv3", "pspnet", "hed"]),
    default="unet2015",
    show_default=True,
    help="unet2015 (valid convs, the paper), basicunet (MONAI), unet_se (padded U-Net with SE blocks), "
    "fcn8s, deeplabv3 (torchvision, no downloads), pspnet, hed (deep supervision).",
)
@click.option(
    "--se/--no-se",
    default=None,
    help="Squeeze-and-excitation blocks in the U-Net (unet2015/basicunet: off by default; unet_se: on).",
)
@click.option(
    "--base-channels",
    type=click.IntRange(1, 1024),
    default=64,
    show_default=True,
    help="Width of the first level (the paper: 64).",
)
@click.option(
    "--batch-norm", is_flag=True, help="Batch norm after each conv (not in the paper; trains faster)."
)
@click.option("--epochs", type=click.IntRange(1), default=20, show_default=True, help="Training epochs.")
@click.option("--steps", type=click.IntRange(1), default=50, show_default=True, help="Batches per epoch.")
@click.option(
    "--tile", type=click.IntRange(64, 4096), default=316, show_default=True, help="Input patch edge (px)."
)
@click.option(
    "--lr",
    type=FiniteFloatRange(min=0, min_open=True),
    default=1e-3,
    show_default=True,
    help="Adam learning rate (cosine schedule).",
)
@click.option("--w0", type=FiniteFloatRange(0), default=10.0, show_default=True, help="Border weight w0.")
@click.option(
    "--sigma",
    type=FiniteFloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Border weight sigma (px).",
)
@click.option(
    "--init",
    default="demo",
    show_default=True,
    help="Starting weights: 'demo' fine-tunes the shipped demo weights cells-segment uses for the images' "
    "stain (H&E/IHC: the brightfield specialist; the net's shape is theirs unless "
    "--arch/--base-channels/--batch-norm/--se ask for another net, which then trains from scratch), "
    "'scratch', or a weights file to fine-tune.",
)
@val_fraction_option(0.2, "image/mask pairs, scored by IoU")
@_channel_option
@_stain_option
@click.option(
    "--target",
    "instance_target",
    type=click.Choice(["borders", "3class", "dist"]),
    default=None,
    help="Instance target: borders (2015 weight map), 3class (background/interior/boundary; the demo "
    "weights') or dist (cell + distance to the border). Default: the starting weights' kind, else borders.",
)
@slim_options(
    what=" (e.g. 1e-4)",
    after="",
    prune_help="After training, prune this share of the conv channels (smallest batch-norm scales, one global "
    "threshold; unet2015) and fine-tune the narrower net.",
    finetune_default=5,
)
@click.option(
    "--ema",
    type=click.FloatRange(0.0, 1.0, max_open=True),
    default=0.0,
    show_default=True,
    help="Keep a moving average of the weights (decay per step, e.g. 0.999; 0 = off): it is what is "
    "validated and saved, steadier than the last step's weights when batches are small.",
)
@train_options
@batch_size_option(4, "Patches per training step.", most=1024)
@amp_option
@overwrite_option
@common_options
def cells_train(
    images_dir,
    masks_dir,
    synthetic,
    out_dir,
    arch,
    se,
    base_channels,
    batch_norm,
    epochs,
    steps,
    tile,
    lr,
    w0,
    sigma,
    init,
    val_fraction,
    channel,
    stain,
    instance_target,
    slim,
    prune_ratio,
    finetune_epochs,
    ema,
    max_minutes,
    seed,
    resume,
    batch_size,
    amp,
    overwrite,
    device,
    quiet,
    as_json,
):
    """Train a cell U-Net (weighted cross-entropy with border weight maps, elastic augmentation)."""
    from medseg.cells.archs import ArchConfig
    from medseg.cells.model import UNET_ARCHS, CellModelConfig, slimming_problem
    from medseg.cells.train import CellsTrainConfig, human_summary, resolve_init, train_cells
    from medseg.cells.weights import WeightMapConfig

    if arch in UNET_ARCHS:
        model = CellModelConfig(arch=arch, base_channels=base_channels, batch_norm=batch_norm, se=bool(se))
    else:  # the seed papers' padded nets: batch norm always, width = --base-channels
        if se is not None and arch != "unet_se":
            raise click.BadParameter(f"--se applies to the U-Nets, not {arch}", param_hint="--se")
        model = ArchConfig(arch=arch, width=base_channels, se=True if se is None else se)
    ctx = click.get_current_context()
    shaped = any(
        ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        for name in ("arch", "se", "base_channels", "batch_norm")
    )
    if (
        prune_ratio is None
        and ctx.get_parameter_source("finetune_epochs") is not click.core.ParameterSource.DEFAULT
    ):
        raise click.BadParameter(
            "fine-tunes a pruned net: give --prune-ratio too", param_hint="--finetune-epochs"
        )
    model, init_weights = resolve_init(
        init, model if shaped else None, images_dir=images_dir, stain=stain, channel=channel
    )
    problem = slimming_problem(model, slim=slim, prune_ratio=prune_ratio)
    if problem:
        raise click.UsageError(problem)
    config = CellsTrainConfig(
        model=model,
        weight_map=WeightMapConfig(w0=w0, sigma=sigma),
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=batch_size,
        tile=tile,
        lr=lr,
        val_fraction=val_fraction,
        seed=seed,
        max_minutes=max_minutes,
        amp=amp,
        synthetic=synthetic,
        stain=stain,
        channel=channel,
        init_weights=init_weights,
        instance_target=instance_target,
        slim=slim,
        prune_ratio=prune_ratio,
        finetune_epochs=finetune_epochs,
        ema=ema,
    )
    kwargs = dict(
        images_dir=images_dir,
        masks_dir=masks_dir,
        device=device,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    if prune_ratio is None:
        result = train_cells(out_dir, config, **kwargs)
    else:  # sparsity training, pruning, fine-tuning (medseg.engine.slim)
        from medseg.cells.model import prune_weights
        from medseg.engine.slim import train_and_prune

        result = train_and_prune(train_cells, prune_weights, out_dir, config, **kwargs)
    finish(result, as_json=as_json, human=human_summary)


@click.command("cells-eval", epilog=EVAL_EPILOG)
@click.argument("predictions", nargs=-1, required=True, type=click.Path(exists=True, path_type=str))
@click.option(
    "--truth",
    required=True,
    type=click.Path(file_okay=False, exists=True),
    help="Folder of ground-truth instance (or binary) masks, matched by name.",
)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False), default=None, help="Write metrics JSON here."
)
@click.option(
    "--iou",
    "iou_threshold",
    type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Object IoU threshold for a match (AP at it; mAP@0.5:0.95 is always reported).",
)
@click.option(
    "--group-by",
    default=None,
    metavar="FILE.csv:COLUMN",
    help="Also report per group: the table's first column names the image, COLUMN its group "
    "(default: the 'kind' column of an index.tsv in the truth folder or its parent).",
)
@overwrite_option
@output_options
def cells_eval(predictions, truth, out_path, iou_threshold, group_by, overwrite, quiet, as_json):
    """Dataset-level and mean per-image AP (IoU 0.5 and 0.5:0.95), pixel IoU/Dice, object
    precision/recall/F1 and adapted Rand error vs ground truth, per group when known."""
    from medseg.cells.evaluate import EvalConfig, evaluate_folders, human_summary

    config = EvalConfig(
        iou_threshold=iou_threshold, out=out_path, overwrite=overwrite, progress=not quiet, group_by=group_by
    )
    finish(evaluate_folders(list(predictions), truth, config), as_json=as_json, human=human_summary)


commands = [cells_segment, cells_train, cells_eval]
