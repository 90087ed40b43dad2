"""Regenerate the brain demo weights: from real BraTS 2018 cases (``--data``), or synthetic phantoms.

Real data (the shipped weights)::

    python scripts/train_demo_weights_brain.py --data ../shared/realdata/brain_brats2018 --max-minutes 25 --resume
    python scripts/train_demo_weights_brain.py --data ../shared/realdata/brain_brats2018 \
        --evaluate-only ../brain_runs/brats2018/best.safetensors medseg/weights/brain/brain_input_cascade_demo.safetensors
    python scripts/train_demo_weights_brain.py --data ../shared/realdata/brain_brats2018 \
        --ship ../brain_runs/brats2018/best.safetensors

``--data``: the 12 cases are split with a fixed seed (``make_split``: one validation case from each of
the 2013, CBICA and low-grade TCIA groups, the other 9 train), recorded in
``medseg/weights/brain/brats2018_split.json`` and in the weights' metadata. ``medseg.brain.train``
trains at the data's own 1 mm spacing (TwoPathCNN by default, ``--arch input-cascade`` adds the
cascade on its outputs): phase 1 on class-balanced patches, phase 2 only the output layer on the
natural distribution; N4 + per-sequence clipping + z-score inside the brain. ``--select dice`` (the
default) holds two training cases out (``selection_cases``: one HGG, one LGG, seed 19) and keeps each
phase's epoch with the best mean WT/TC/ET Dice on fixed slices through their tumours
(``medseg.brain.selection``); ``--select loss`` is the earlier rule (lowest class-balanced loss on the
validation cases, which then took part in choosing the weights). ``--max-minutes`` covers
every phase (the run always ends with ``WORK/best.safetensors``), ``--resume`` continues an
interrupted or shortened run; preprocessed cases are cached (``--cache``). Each run's wall and CPU
time are added to ``WORK/cpu_time.json`` (``--work``, default ../brain_runs/brats2018). After
training (and with ``--evaluate-only``) the weights segment the 3 validation cases (never trained
on) and the script reports Dice / HD95 / volumes per case and mean for each post-processing variant
(``WORK/validation.json``; the same on the selection cases in ``WORK/selection.json``, where
post-processing can be decided without the validation cases); ``--ship`` copies weights into
``medseg/weights/brain/brain_twopath_brats2018.safetensors`` with the data's citations and terms.

Synthetic (without ``--data``, the earlier demo weights)::

    python scripts/train_demo_weights_brain.py --synthetic-out /tmp/new
    python scripts/train_demo_weights_brain.py --evaluate medseg/weights/brain /tmp/new   # held-out Dice

Training: ``medseg.brain.train.train`` on synthetic cases from ``medseg.synthetic.brain`` (seeds
100-127; ``brain-train`` holds the last 20 % out for validation), a TwoPathCNN first, then the
InputCascadeCNN on top of it, each in the paper's two phases; 16 local / 32 global maps.
``--evaluate DIR...``: each folder's demo weights segment held-out synthetic seeds 6001-6010 end to
end and the script prints mean Dice WT/TC/ET and predicted vs true volumes as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "brain"
WEIGHTS = ROOT / "medseg" / "weights" / "brain"
TRAIN_SEEDS = range(100, 128)
EVAL_SEEDS = range(6001, 6011)
TRAINING_DATA = (
    "SYNTHETIC data only (medseg.synthetic.brain with normal-tissue contrasts, seeds 100-121 for "
    "training, 122-127 held out for validation, 64x64x24 at 3x3x5 mm): demo weights, NOT for "
    "clinical use"
)
NETS = ("brain_twopath", "brain_input_cascade")
log = logging.getLogger("train_demo_weights_brain")


def train_demo_weights(out: Path, *, seeds=TRAIN_SEEDS) -> dict:
    """Train TwoPathCNN then InputCascadeCNN; copy both best weights into ``out``."""
    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import BrainTrainConfig, PhaseConfig, train
    from medseg.engine.checkpoint import read_meta
    from medseg.synthetic.brain import BrainPhantomConfig, make_brain_case, write_brain_case

    out.mkdir(parents=True, exist_ok=True)
    prep = PreprocessConfig(n4=True, n4_shrink=2, n4_iterations=[50, 50])

    def config(arch: str, seed: int) -> BrainTrainConfig:
        return BrainTrainConfig(
            net=BrainNetConfig(arch=arch, local_channels=16, global_channels=32),
            preprocess=prep,
            phase1=PhaseConfig(epochs=6, steps_per_epoch=30, lr=0.003),
            phase2=PhaseConfig(epochs=2, steps_per_epoch=20, lr=0.001),
            training_data=TRAINING_DATA,
            seed=seed,
        )

    runs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [write_brain_case(make_brain_case(s), tmp, name=f"SYN_{s:04d}") for s in seeds]
        work = Path(tmp) / "runs"
        t0, c0 = time.perf_counter(), time.process_time()
        runs["brain_twopath"] = train(dirs, work / "twopath", config("twopath", 0), device="cpu")
        seconds["brain_twopath"] = (time.perf_counter() - t0, time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        runs["brain_input_cascade"] = train(
            dirs,
            work / "ic",
            config("input-cascade", 1),
            first_weights=Path(runs["brain_twopath"].best_weights),
            device="cpu",
        )
        seconds["brain_input_cascade"] = (time.perf_counter() - t0, time.process_time() - c0)
        for name, result in runs.items():
            # brain-train records the phantoms' in-plane spacing; brain-segment resamples other cases to it
            spacing = read_meta(result.best_weights).config.get("train_spacing_mm")
            if spacing != [float(v) for v in BrainPhantomConfig().spacing[1:]]:
                raise RuntimeError(f"{name}: weights record train_spacing_mm={spacing}, not the phantoms'")
            shutil.copyfile(result.best_weights, out / f"{name}_demo.safetensors")
            (out / f"{name}_demo.safetensors").chmod(0o644)
            log_doc = result.to_dict()
            log_doc["wall_s"], log_doc["cpu_s"] = (round(v, 1) for v in seconds[name])
            (out / f"{name}_train.json").write_text(json.dumps(log_doc, indent=2) + "\n", encoding="utf-8")
    log.info("training time (wall s, CPU s): %s", seconds)
    return {k: {"wall_s": round(w, 1), "cpu_s": round(c, 1)} for k, (w, c) in seconds.items()}


def evaluate(folders: list[Path], *, seeds=EVAL_SEEDS) -> dict:
    """Mean Dice and volumes of each folder's demo weights on the same held-out synthetic cases."""
    import numpy as np

    from medseg.brain.evaluate import region_metrics
    from medseg.brain.io import MODALITIES, Geometry
    from medseg.brain.segment import load_brain_model, make_predictor, region_volumes_ml, segment_array
    from medseg.synthetic.brain import make_brain_case

    cases = [make_brain_case(s) for s in seeds]
    report = {"cases": f"synthetic seeds {seeds.start}-{seeds.stop - 1} (held out)"}
    for folder in folders:
        for net in NETS:
            model, meta, prep = load_brain_model(folder / f"{net}_demo.safetensors")
            arch = meta.config["net"]["arch"]
            predictor = make_predictor(model, device="cpu")
            rows = []
            for case in cases:
                geo = Geometry(
                    shape=case.label.shape,
                    spacing=case.spacing,
                    origin=(0.0,) * 3,
                    direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                )
                raw = np.stack([case.images[m] for m in MODALITIES])
                pred = segment_array(predictor, raw, geo, arch=arch, prep=prep)
                row = region_metrics(pred, case.label, case.spacing)
                row.update({f"pred_{k}": v for k, v in region_volumes_ml(pred, case.spacing).items()})
                row.update({f"truth_{k}": v for k, v in region_volumes_ml(case.label, case.spacing).items()})
                rows.append(row)
            keys = [f"dice_{r}" for r in ("WT", "TC", "ET")]
            keys += [f"{w}_{r}_ml" for w in ("pred", "truth") for r in ("WT", "TC", "ET")]
            mean = {k: round(float(np.mean([r[k] for r in rows])), 3) for k in keys}
            report[f"{folder}/{net}"] = mean
            log.info("%s/%s: %s", folder, net, mean)
    return report


# ----------------------------------------------------------------------------------------- real BraTS 2018
SPLIT_FILE = WEIGHTS / "brats2018_split.json"
SPLIT_SEED = 19
REAL_WORK = ROOT.parent / "brain_runs" / "brats2018"  # outside the repository
REAL_CACHE = ROOT.parent / "brain_runs" / "cache"  # preprocessed cases, shared by runs
SHIPPED = WEIGHTS / "brain_twopath_brats2018.safetensors"  # the TwoPathCNN (the cascade's first stage)
CITATIONS = (
    "Menze et al., The Multimodal Brain Tumor Image Segmentation Benchmark (BRATS), IEEE TMI 2015; "
    "Bakas et al., Advancing The Cancer Genome Atlas glioma MRI collections with expert segmentation "
    "labels and radiomic features, Sci Data 2017; Bakas et al., Identifying the best machine learning "
    "algorithms for brain tumor segmentation, progression assessment, and overall survival prediction "
    "in the BRATS challenge, arXiv:1811.02629"
)
# institution and grade of the 12 shared cases (BraTS 2018 training data: HGG or LGG folder)
CASES = {
    "Brats18_2013_11_1": ("2013", "HGG"),
    "Brats18_2013_20_1": ("2013", "HGG"),
    "Brats18_CBICA_ALU_1": ("CBICA", "HGG"),
    "Brats18_CBICA_AVG_1": ("CBICA", "HGG"),
    "Brats18_TCIA01_425_1": ("TCIA", "HGG"),
    "Brats18_TCIA02_370_1": ("TCIA", "HGG"),
    "Brats18_TCIA02_606_1": ("TCIA", "HGG"),
    "Brats18_TCIA03_265_1": ("TCIA", "HGG"),
    "Brats18_TCIA10_628_1": ("TCIA", "LGG"),
    "Brats18_TCIA10_637_1": ("TCIA", "LGG"),
    "Brats18_TCIA10_639_1": ("TCIA", "LGG"),
    "Brats18_TCIA13_623_1": ("TCIA", "LGG"),
}
# post-processing variants compared on the validation cases (PostprocessConfig fields; None: no rules)
VARIANTS = {
    "none": None,
    "components": {},
    "components+et<0.5mL": {"et_min_ml": 0.5},
    "components+et<2mL": {"et_min_ml": 2.0},
    "components>=30%": {"min_component_fraction": 0.3},
    "components>=30%+fill": {"min_component_fraction": 0.3, "fill_core_holes": True},
    "components+fill": {"fill_core_holes": True},
    "components+et<0.5mL+fill": {"et_min_ml": 0.5, "fill_core_holes": True},
    "no-components+fill": {
        "require_core": False,
        "min_component_ml": 0.0,
        "min_component_fraction": 0.0,
        "fill_core_holes": True,
    },
}


def make_split(names: list[str], seed: int = SPLIT_SEED) -> dict:
    """9 training / 3 validation cases: one validation case drawn from each of the 2013 (HGG), CBICA (HGG)
    and TCIA low-grade groups, so validation mixes institutions and grades; the rest train."""
    import numpy as np

    unknown = sorted(set(names) - CASES.keys())
    if unknown:
        raise SystemExit(f"cases not in the recorded BraTS 2018 table: {', '.join(unknown)}")
    rng = np.random.default_rng(seed)
    groups = (
        sorted(n for n in names if CASES[n][0] == "2013"),
        sorted(n for n in names if CASES[n][0] == "CBICA"),
        sorted(n for n in names if CASES[n] == ("TCIA", "LGG")),
    )
    val = [str(rng.choice(g)) for g in groups]
    return {
        "dataset": "BraTS 2018 training data, the 12 cases of ../shared/realdata/brain_brats2018",
        "seed": seed,
        "rule": "one validation case drawn (numpy default_rng(seed)) from each of: 2013 HGG, CBICA HGG, "
        "TCIA LGG; the other cases train",
        "train": sorted(n for n in names if n not in val),
        "validation": val,
        "cases": {n: {"institution": CASES[n][0], "grade": CASES[n][1]} for n in sorted(names)},
    }


def recorded_split(data: Path) -> dict:
    """The split of ``data``'s cases: the recorded JSON (checked against the seeded draw) or a new one."""
    names = sorted(d.name for d in data.iterdir() if d.is_dir() and d.name.startswith("Brats18_"))
    split = make_split(names)
    if SPLIT_FILE.is_file():
        saved = json.loads(SPLIT_FILE.read_text(encoding="utf-8"))
        if (saved["train"], saved["validation"]) != (split["train"], split["validation"]):
            raise SystemExit(f"{SPLIT_FILE} differs from the seeded split of {data}")
    else:
        SPLIT_FILE.write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
    return split


def selection_cases(split: dict, seed: int = SPLIT_SEED) -> list[str]:
    """Two of the training cases held out to choose each phase's epoch (``--select dice``): one drawn
    (numpy default_rng(seed)) from the training HGG cases, one from the training LGG cases. They are
    not trained on, so the 3 validation cases play no part in training or in choosing the weights."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [str(rng.choice(sorted(n for n in split["train"] if CASES[n][1] == g))) for g in ("HGG", "LGG")]


SELECTION_RULE = (
    "each phase's epoch is the one with the best mean WT/TC/ET Dice on fixed axial slices through the "
    "tumour of the selection cases (held-out training cases: one HGG and one LGG drawn with numpy "
    "default_rng(19)), not trained on; phase 1 scored with natural class priors (medseg.brain.selection)"
)


def real_training_data(split: dict) -> str:
    return (
        f"REAL data: BraTS 2018 training cases ({CITATIONS}). Trained on {len(split['train'])} cases "
        f"({', '.join(split['train'])}), validated on {len(split['validation'])} held-out cases "
        f"({', '.join(split['validation'])}); seeded split (seed {split['seed']}, "
        "medseg/weights/brain/brats2018_split.json). BraTS data terms: research use only. "
        "Research use, not for clinical use."
    )


def real_config(args, split: dict):
    from medseg.brain.models import BrainNetConfig
    from medseg.brain.preprocess import PreprocessConfig
    from medseg.brain.train import BrainTrainConfig, PhaseConfig

    return BrainTrainConfig(
        net=BrainNetConfig(arch=args.arch, local_channels=args.widths[0], global_channels=args.widths[1]),
        preprocess=PreprocessConfig(n4=True),
        phase1=PhaseConfig(
            epochs=args.epochs, steps_per_epoch=args.steps, lr=args.lr, lr_halving_epochs=args.halving
        ),
        phase2=PhaseConfig(epochs=3, steps_per_epoch=max(1, args.steps // 2), lr=args.lr / 3),
        batch_size=args.batch_size,
        val_patches=3000,
        training_data=real_training_data(split),
        seed=0,
        max_minutes=args.max_minutes,
        select=args.select,
        select_slices=args.select_slices,
        rotate_cases=args.rotate_aug,
    )


def train_real(args) -> Path:
    """Train on the split's training cases into ``args.work``; returns the final weights."""
    from medseg.brain.train import train

    split = recorded_split(args.data)
    work = args.work
    resumable = args.resume and any(work.glob("**/state.pt"))
    cfg = real_config(args, split)
    # --select dice: the epochs are chosen on held-out training cases; --select loss (the earlier runs):
    # by the class-balanced loss on the 3 validation cases
    held = selection_cases(split) if args.select == "dice" else split["validation"]
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(
        [args.data / n for n in split["train"] if n not in held],
        work,
        cfg,
        val_case_dirs=[args.data / n for n in held],
        first_weights=args.first_weights,
        device=args.device,
        resume=resumable,
        overwrite=not resumable,
        cache_dir=args.cache,
    )
    ledger_file = work / "cpu_time.json"
    ledger = json.loads(ledger_file.read_text(encoding="utf-8")) if ledger_file.is_file() else []
    ledger.append(
        {
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
            "wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1),
            "threads": args.threads,
            "max_minutes": args.max_minutes,
            "resumed": resumable,
            "stopped": result.stopped,
            "budget_shortened": result.extra.get("budget_shortened", []),
            "epochs": [(h["stage"], h["epoch"]) for h in result.history][-1:],
            "select": args.select,
            "kept_epochs": {k: v.get("best_epoch") for k, v in result.extra.get("stages", {}).items()},
        }
    )
    ledger_file.write_text(json.dumps(ledger, indent=2) + "\n", encoding="utf-8")
    log.info(
        "training: %.0f s wall, %.0f CPU-s this run; %.0f CPU-s over %d run(s)",
        ledger[-1]["wall_s"],
        ledger[-1]["cpu_s"],
        sum(r["cpu_s"] for r in ledger),
        len(ledger),
    )
    return Path(result.best_weights)


def evaluate_real(weights: list[Path], data: Path, cache_dir: Path | None, *, on: str = "validation") -> dict:
    """Dice, HD95 and volumes of each weights file on the validation cases, per post-processing variant.

    ``on="selection"``: on the held-out training cases of ``--select dice`` instead (to decide
    post-processing without looking at the validation cases).

    The nets run on the cached brain crops (same labels as the whole grid: zero outside the brain),
    at the weights' training spacing when it differs from the case's (as brain-segment does).
    """
    import numpy as np

    from medseg.brain.evaluate import region_metrics, volume_metrics
    from medseg.brain.postprocess import PostprocessConfig, postprocess
    from medseg.brain.segment import load_brain_model, make_predictor, predict_in_brain
    from medseg.brain.spacing import inference_zoom, predict_in_brain_resampled, train_spacing
    from medseg.brain.train_cases import load_training_cases

    split = recorded_split(data)
    names = selection_cases(split) if on == "selection" else split["validation"]
    report: dict = {f"{on}_cases": names, "weights": {}}
    for w in weights:
        model, meta, prep = load_brain_model(w)
        arch = meta.config["net"]["arch"]
        predictor = make_predictor(model, device="cpu")
        cases = load_training_cases(
            [data / n for n in names], labels="brats2021", prep=prep, cache_dir=cache_dir
        )
        rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        seconds = []
        for case in cases:
            norm, mask, truth = case.padded[:, :, 16:-16, 16:-16], case.mask, case.labels
            zoom = inference_zoom(case.spacing, train_spacing(meta))
            t0 = time.perf_counter()
            if zoom is None:
                raw = predict_in_brain(predictor, norm, mask, arch=arch)
            else:
                raw = predict_in_brain_resampled(predictor, norm, mask, zoom, arch=arch)
            raw[~mask] = 0
            seconds.append(time.perf_counter() - t0)
            for name, variant in VARIANTS.items():
                pred = (
                    raw if variant is None else postprocess(raw, case.spacing, PostprocessConfig(**variant))
                )
                m = {**region_metrics(pred, truth, case.spacing), **volume_metrics(pred, truth, case.spacing)}
                rows[name].append({"case": case.name, **{k: round(v, 4) for k, v in m.items()}})
        out = {"inference_s_per_case": round(float(np.mean(seconds)), 1), "variants": {}}
        for name, rs in rows.items():
            mean = {
                k: round(float(np.nanmean([r[k] for r in rs])), 4)
                for k in rs[0]
                if k != "case" and (k.startswith(("dice", "hd95")) or k.endswith("_ml"))
            }
            out["variants"][name] = {"mean": mean, "cases": rs}
            log.info(
                "%s [%s]: Dice WT %.3f TC %.3f ET %.3f, HD95 %.1f / %.1f / %.1f mm",
                f"{w.parent.name}/{w.name}",
                name,
                mean["dice_WT"],
                mean["dice_TC"],
                mean["dice_ET"],
                mean["hd95_WT"],
                mean["hd95_TC"],
                mean["hd95_ET"],
            )
        report["weights"][str(w)] = out
    return report


def ship(weights: Path, data: Path, validation: dict | None, dst: Path = SHIPPED) -> Path:
    """Copy trained weights into the package (by default as brain-segment's default), with the data's terms."""
    from medseg.engine.checkpoint import load_weights, save_weights

    split = recorded_split(data)
    state, meta = load_weights(weights)
    net = {"twopath": "TwoPathCNN", "input-cascade": "InputCascadeCNN (on the shipped TwoPathCNN)"}.get(
        meta.config.get("net", {}).get("arch", "twopath"), "network"
    )
    meta.training_data = real_training_data(split)
    meta.notes = (
        f"Havaei et al. 2017 {net} trained on REAL BraTS 2018 cases (" + CITATIONS + "). "
        "Research use, not for clinical use. Labels: Havaei order (0 healthy, 1 necrosis, 2 edema, "
        "3 non-enhancing, 4 enhancing)."
    )
    config = {**meta.config, "split": split}
    if config.get("validation_cases") != split["validation"]:  # --select dice: held-out training cases
        config["selection_cases"] = config.get("validation_cases")
        config["selection_rule"] = SELECTION_RULE
        config["validation_cases"] = split["validation"]
    meta.config = config
    if validation is not None:
        meta.metrics = {**meta.metrics, "validation": validation}
    save_weights(dst, state, meta)
    dst.chmod(0o644)
    log.info("shipped %s -> %s", weights, dst)
    return dst


TEST_CASE_DIR = ROOT / "tests" / "data" / "real" / "brats2018_val_crop"
TEST_CASE_SLICES = 48


def make_test_case(data: Path, name: str, out: Path = TEST_CASE_DIR) -> Path:
    """A few-MB copy of one validation case for the quality test: the brain's in-plane box (+20 voxels) and the
    ``TEST_CASE_SLICES`` axial slices centred on the slice with the most tumour; voxels unchanged."""
    import numpy as np
    import SimpleITK as sitk

    if name not in recorded_split(data)["validation"]:
        raise SystemExit(f"{name} is not a validation case: the quality test must not use a training case")
    mods = ("t1", "t1ce", "t2", "flair", "seg")
    imgs = {m: sitk.ReadImage(str(data / name / f"{name}_{m}.nii.gz")) for m in mods}
    arrs = {m: sitk.GetArrayFromImage(i) for m, i in imgs.items()}
    brain = np.any([arrs[m] != 0 for m in mods[:4]], axis=0)
    ys, xs = np.flatnonzero(brain.any((0, 2))), np.flatnonzero(brain.any((0, 1)))
    # 20 zero voxels around the brain (as in BraTS, where the brain fills well under half the field of
    # view; a tighter box would trip brain-segment's not-skull-stripped warning)
    ys = np.clip([ys[0] - 20, ys[-1] + 20], 0, brain.shape[1] - 1)
    xs = np.clip([xs[0] - 20, xs[-1] + 20], 0, brain.shape[2] - 1)
    zc = int(np.argmax((arrs["seg"] > 0).sum((1, 2))))
    z0 = max(0, min(zc - TEST_CASE_SLICES // 2, brain.shape[0] - TEST_CASE_SLICES))
    out.mkdir(parents=True, exist_ok=True)
    for m, img in imgs.items():
        crop = img[int(xs[0]) : int(xs[-1]) + 1, int(ys[0]) : int(ys[-1]) + 1, z0 : z0 + TEST_CASE_SLICES]
        sitk.WriteImage(crop, str(out / f"{name}_{m}.nii.gz"), True)
    log.info("wrote %s (z %d-%d)", out, z0, z0 + TEST_CASE_SLICES - 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=None, help="folder of the real BraTS 2018 cases")
    parser.add_argument("--work", type=Path, default=REAL_WORK, help="training folder (real data)")
    parser.add_argument("--cache", type=Path, default=REAL_CACHE, help="preprocessed cases (real data)")
    parser.add_argument("--max-minutes", type=float, default=None, help="time budget for all phases")
    parser.add_argument("--resume", action="store_true", help="continue the run in --work")
    parser.add_argument("--arch", default="twopath", choices=["twopath", "input-cascade"])
    parser.add_argument(
        "--first-weights",
        type=Path,
        default=None,
        help="input-cascade: the frozen first stage (TwoPathCNN weights; default: trained here first)",
    )
    parser.add_argument("--widths", type=int, nargs=2, default=(16, 32), metavar=("LOCAL", "GLOBAL"))
    parser.add_argument("--epochs", type=int, default=24, help="phase-1 epochs (real data)")
    parser.add_argument("--steps", type=int, default=100, help="phase-1 steps of 128 patches per epoch")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--halving", type=int, default=6, help="phase-1 epochs per learning-rate halving")
    parser.add_argument("--batch-size", type=int, default=128, help="patches per step (larger on a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda (AMP on CUDA) or auto")
    parser.add_argument("--evaluate-only", type=Path, nargs="+", default=None, metavar="WEIGHTS")
    parser.add_argument("--no-evaluate", action="store_true", help="skip the validation after training")
    parser.add_argument("--ship", type=Path, default=None, metavar="WEIGHTS", help="ship these weights")
    parser.add_argument(
        "--ship-to",
        type=Path,
        default=None,
        help="--ship destination (default: brain-segment's default weights)",
    )
    parser.add_argument("--test-case", default=None, metavar="CASE", help="write the quality test's crop")
    parser.add_argument("--synthetic-out", type=Path, default=None, help="train the synthetic demo weights")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--select",
        default="dice",
        choices=["dice", "loss"],
        help="which epoch each phase keeps: best Dice on held-out training cases (default) or lowest "
        "class-balanced loss on the validation cases (the earlier runs)",
    )
    parser.add_argument("--select-slices", type=int, default=16, help="--select dice: slices per case")
    parser.add_argument(
        "--rotate-aug",
        action="store_true",
        help="also train on each training case rotated 180 degrees in-plane (brain-segment's TTA view)",
    )
    parser.add_argument(
        "--eval-on",
        nargs="+",
        default=["validation", "selection"],
        choices=["validation", "selection"],
        help="cases the weights are evaluated on after training (selection: the held-out training cases)",
    )
    parser.add_argument("--evaluate", type=Path, nargs="+", default=None, metavar="DIR")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    import torch

    torch.set_num_threads(args.threads)
    if args.evaluate:
        print(json.dumps(evaluate(args.evaluate), indent=1))
        return
    if args.data is not None:
        cache = args.cache
        if args.test_case:
            make_test_case(args.data, args.test_case)
            return
        if args.ship:
            report = args.work / "validation.json"
            validation = json.loads(report.read_text(encoding="utf-8")) if report.is_file() else None
            summary = validation and next(
                (v for k, v in validation["weights"].items() if Path(k).resolve() == args.ship.resolve()),
                None,
            )
            ship(
                args.ship,
                args.data,
                summary and {k: v["mean"] for k, v in summary["variants"].items()},
                args.ship_to or SHIPPED,
            )
            return
        # after training: the final (phase-2) weights and phase 1's, so the validation shows what phase 2 did
        weights = args.evaluate_only or [
            final := train_real(args),
            final.parent / "phase1" / "best.safetensors",
        ]
        if not args.no_evaluate:
            for on in args.eval_on:  # selection.json: post-processing decided on held-out training cases
                report = evaluate_real(weights, args.data, cache, on=on)
                (args.work / f"{on}.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        return
    if args.synthetic_out is None:
        parser.error("give --data (real BraTS cases) or --synthetic-out (synthetic demo weights)")
    times = train_demo_weights(args.synthetic_out)
    for name in NETS:  # the training logs live beside the sample cases
        log_file = args.synthetic_out / f"{name}_train.json"
        if args.synthetic_out.resolve() == WEIGHTS.resolve():
            shutil.move(log_file, SAMPLE / log_file.name)
    print(json.dumps(times))


if __name__ == "__main__":
    main()
