"""Training the sharpness-conditioned converter over a continuum of kernels, vendor by vendor held out.

Why these data: per-direction converters need paired scans of exactly their two kernels. Here the
net sees (i) synthetic phantoms (:mod:`medseg.synthetic.ct_phantom`) reconstructed with a
*continuum* of kernels -- the generator's calibrated Siemens family (B10f/B30f/B50f/B70f) plus kernels
interpolated between them (:func:`continuum_ratio`), at varied dose, pixel size and anatomy -- and
(ii) every real pair here (Philips UB/YA, Toshiba FC13/FC51), in both directions. Each sample is
conditioned on the *measured* sharpness (:func:`medseg.ct.fingerprint.kernel_fingerprint`) of its
source and target series, the scale ct-convert measures at inference. Identity pairs (source =
target) teach it to leave a series alone when asked for its own sharpness.

Leave-one-vendor-out: ``holdout='Philips'`` trains without any Philips data and reports the RMSE
reduction on the Philips pair's held-out test slab (the slab the per-direction ct-train figures
use); ``holdout='Canon'`` likewise on the Toshiba pairs. The budget is CPU time
(``time.process_time``), and a run resumes from its ``state.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medseg.ct.conditioned import MODEL_NAME, ConditionedNetConfig, build_conditioned_net
from medseg.ct.metrics import AIR_HU, PADDING_MAX_HU

log = logging.getLogger("medseg.ct")

WEIGHTS, STATE, HISTORY, POOL = "last.safetensors", "state.pt", "history.json", "pool.npz"
CALIBRATED_T = (-0.52, 0.0, 0.52, 0.64)  # B10f, B30f, B50f, B70f as signed sigma (mm)
T_RANGE = (-0.6, 0.66)  # continuum of kernels sampled around them


@dataclass
class RealPair:
    """Paired slices of one real acquisition in two kernels, with each series' measured sharpness."""

    vendor: str
    name: str
    a: np.ndarray  # (n, H, W) int16 HU, kernel a
    b: np.ndarray
    sharp_a: float
    sharp_b: float
    test_a: np.ndarray | None = None  # held-out test slab (the per-direction ct-train split)
    test_b: np.ndarray | None = None
    kernels: tuple[str, str] = ("", "")
    pixel_mm: float = 1.0  # in-plane pixel size of the series


@dataclass
class ConditionedTrainConfig:
    holdout: str | None = None  # vendor left out of training (its pairs are only evaluated)
    max_cpu_minutes: float = 8.0
    batch_size: int = 8
    crop: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-6
    seed: int = 0
    synthetic_exams: int = 24
    synthetic_size: int = 128
    synthetic_slices: int = 6
    random_kernels: int = 2  # continuum kernels per exam besides the four calibrated ones
    # kernels of another shape per exam: a continuum kernel times a mid-frequency boost (edge-enhancing
    # "bone" kernels of other vendors peak in mid frequencies, then fall back; :func:`shaped_ratio`)
    shaped_kernels: int = 0
    synthetic_fraction: float = 0.5  # share of synthetic crops when real pairs are trained on
    identity_fraction: float = 0.1
    log_every: int = 25
    save_every: int = 100
    net: dict = field(default_factory=dict)  # overrides of ConditionedNetConfig (channels, depth...)


def continuum_ratio(t: float, f_per_mm: np.ndarray) -> np.ndarray:
    """Kernel response relative to B30f for a signed width ``t`` (mm): exp(sign(t) 2 pi^2 t^2 f^2),
    as the generator's B10f (t = -0.52), B30f (0), B50f (+0.52, gain cap 7.5) and B70f (+0.64,
    cap 17); the cap is interpolated log-linearly in between and extrapolated slightly beyond."""
    ratio = np.exp(math.copysign(1.0, t) * 2 * np.pi**2 * t * t * np.asarray(f_per_mm, float) ** 2)
    if t <= 0:
        return ratio
    cap = math.exp(np.interp(t, (0.52, 0.64), (math.log(7.5), math.log(17.0)))) if t > 0.52 else 7.5
    if t > 0.64:
        cap = 17.0 * math.exp((t - 0.64) / 0.12 * math.log(17.0 / 7.5))
    return np.minimum(ratio, cap)


def shaped_ratio(t: float, boost: float, f0: float, width: float, f_per_mm: np.ndarray) -> np.ndarray:
    """:func:`continuum_ratio` times ``1 + boost * exp(-(f - f0)^2 / (2 width^2))``: a kernel that
    enhances a band around ``f0`` cycles/mm, as vendors' sharp kernels do, instead of rising steadily."""
    f = np.asarray(f_per_mm, float)
    return continuum_ratio(t, f) * (1.0 + boost * np.exp(-0.5 * ((f - f0) / width) ** 2))


def _kernel_draws(rng, cfg: ConditionedTrainConfig) -> list[tuple[float, ...]]:
    """Kernel parameters of one exam: the calibrated four, ``random_kernels`` continuum widths, and
    ``shaped_kernels`` (t, boost, f0, width) tuples."""
    draws: list[tuple[float, ...]] = [(t,) for t in CALIBRATED_T]
    draws += [(float(t),) for t in rng.uniform(*T_RANGE, cfg.random_kernels)]
    for _ in range(cfg.shaped_kernels):
        draws.append(
            (
                float(rng.uniform(-0.3, 0.6)),
                float(rng.uniform(0.5, 2.5)),
                float(rng.uniform(0.2, 0.6)),
                float(rng.uniform(0.08, 0.2)),
            )
        )
    return draws


def _draw_ratio(draw: tuple[float, ...], f: np.ndarray) -> np.ndarray:
    return continuum_ratio(draw[0], f) if len(draw) == 1 else shaped_ratio(*draw, f)


def reconstruct_continuum(obj, draws, cfg, rng, weight, body) -> np.ndarray:
    """(K, z, y, x) reconstructions of one phantom with the kernels ``draws`` (:func:`_kernel_draws`)
    sharing one noise realisation: :func:`medseg.synthetic.ct_phantom.reconstruct` with continuum kernels."""
    from medseg.synthetic.ct_phantom import reconstruct

    vols = reconstruct(
        obj,
        tuple(range(len(draws))),
        cfg,
        rng,
        weight=weight,
        body=body,
        ratio=lambda k, f: _draw_ratio(draws[k], f),
    )
    return np.stack([vols[k] for k in range(len(draws))])


def synthetic_pool(cfg: ConditionedTrainConfig, *, seed_base: int = 30000) -> dict[str, np.ndarray]:
    """Phantom exams, each reconstructed with the four calibrated and ``random_kernels`` continuum
    kernels: 'images' (E, K, z, y, x) int16 HU, 'sharpness' (E, K) measured, 't' (E, K), 'pixel_mm'."""
    from medseg.ct.fingerprint import kernel_fingerprint
    from medseg.synthetic.ct_phantom import PhantomConfig, make_object, noise_weight, varied_config

    base = PhantomConfig(size=cfg.synthetic_size, n_slices=cfg.synthetic_slices)
    images, sharp, ts_all, pixels = [], [], [], []
    for e in range(cfg.synthetic_exams):
        seed = seed_base + e
        rng = np.random.default_rng(seed)
        pcfg = replace(varied_config(seed, base), pixel_mm=float(rng.uniform(0.45, 0.8)))
        pcfg = replace(pcfg, noise_b30_hu=float(np.exp(rng.uniform(np.log(5.0), np.log(30.0)))))
        obj, masks = make_object(pcfg, rng)
        draws = _kernel_draws(rng, cfg)
        vols = reconstruct_continuum(obj, draws, pcfg, rng, noise_weight(masks["body"], pcfg), masks["body"])
        ts = [d[0] for d in draws]
        s = [kernel_fingerprint(v, (pcfg.pixel_mm, pcfg.pixel_mm)).sharpness for v in vols]
        images.append(np.clip(np.rint(vols), -32768, 32767).astype(np.int16))
        sharp.append(s)
        ts_all.append(ts)
        pixels.append(pcfg.pixel_mm)
    return {
        "images": np.stack(images),
        "sharpness": np.asarray(sharp, np.float32),
        "t": np.asarray(ts_all, np.float32),
        "pixel_mm": np.asarray(pixels, np.float32),
    }


def load_real_pair(folder: str | Path, kernel_a: str, kernel_b: str, vendor: str) -> RealPair:
    """A real two-kernel acquisition: paired by :func:`medseg.ct.cohort.find_pairs`, split as ct-train
    splits it (:func:`medseg.ct.split.split_slices`: test slab held out when there is room), and each
    whole series fingerprinted (the sharpness ct-convert would measure)."""
    from medseg.ct.cohort import find_pairs
    from medseg.ct.fingerprint import kernel_fingerprint
    from medseg.ct.split import split_slices
    from medseg.ct.train import load_pairs

    data = load_pairs(find_pairs([folder], kernel_a, kernel_b))
    stacks, _info = split_slices(data, (0.6, 0.2, 0.2), 0)
    px = data[0].pixel_mm or 1.0
    sa = kernel_fingerprint(np.concatenate([p.x for p in data]), (px, px)).sharpness
    sb = kernel_fingerprint(np.concatenate([p.y for p in data]), (px, px)).sharpness
    train = [stacks[k] for k in ("train", "val") if k in stacks]
    test = stacks.get("test")
    return RealPair(
        vendor,
        Path(folder).name,
        np.concatenate([a for a, _ in train]),
        np.concatenate([b for _, b in train]),
        float(sa),
        float(sb),
        None if test is None else test[0],
        None if test is None else test[1],
        (kernel_a, kernel_b),
        float(px),
    )


def _crop_at(rng, img: np.ndarray, crop: int) -> tuple[int, int]:
    """A crop offset, preferring crops with some body in them (up to 6 tries)."""
    h, w = img.shape[-2:]
    for _ in range(6):
        oy, ox = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        if float((img[..., oy : oy + crop, ox : ox + crop] > -500).mean()) > 0.2:
            break
    return oy, ox


class Sampler:
    """Random (x, y, source sharpness, target sharpness) crops from the pool and the real pairs."""

    def __init__(self, pool: dict, reals: list[RealPair], cfg: ConditionedTrainConfig) -> None:
        self.pool, self.reals, self.cfg = pool, reals, cfg

    def _synthetic(self, rng) -> tuple[np.ndarray, np.ndarray, float, float]:
        imgs, sharp = self.pool["images"], self.pool["sharpness"]
        e, z = int(rng.integers(imgs.shape[0])), int(rng.integers(imgs.shape[2]))
        i = int(rng.integers(imgs.shape[1]))
        j = i if rng.random() < self.cfg.identity_fraction else int(rng.integers(imgs.shape[1]))
        return imgs[e, i, z], imgs[e, j, z], float(sharp[e, i]), float(sharp[e, j])

    def _real(self, rng) -> tuple[np.ndarray, np.ndarray, float, float]:
        pair = self.reals[int(rng.integers(len(self.reals)))]
        z = int(rng.integers(len(pair.a)))
        a, b, sa, sb = pair.a[z], pair.b[z], pair.sharp_a, pair.sharp_b
        if rng.random() < self.cfg.identity_fraction:
            return (a, a, sa, sa) if rng.random() < 0.5 else (b, b, sb, sb)
        return (a, b, sa, sb) if rng.random() < 0.5 else (b, a, sb, sa)

    def batch(self, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        from medseg.ct.train import turn_and_mirror

        c, n = self.cfg.crop, self.cfg.batch_size
        xs, ys, ss, ts = [], [], [], []
        for _ in range(n):
            real = self.reals and rng.random() >= self.cfg.synthetic_fraction
            x, y, s, t = self._real(rng) if real else self._synthetic(rng)
            oy, ox = _crop_at(rng, x, c)
            xc, yc = x[oy : oy + c, ox : ox + c], y[oy : oy + c, ox : ox + c]
            k = int(rng.integers(4))
            xc, yc = turn_and_mirror(xc, yc, k, rng.random() < 0.5)
            xs.append(xc)
            ys.append(yc)
            ss.append(s)
            ts.append(t)
        return (
            np.stack(xs)[:, None].astype(np.float32),
            np.stack(ys)[:, None].astype(np.float32),
            np.asarray(ss, np.float32),
            np.asarray(ts, np.float32),
        )


def lr_at(fraction: float, peak: float) -> float:
    """One cycle over the CPU budget: linear warm-up over the first 5 %, cosine down to peak/100."""
    if fraction < 0.05:
        return peak * (0.1 + 0.9 * fraction / 0.05)
    p = min(1.0, (fraction - 0.05) / 0.95)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * p)))


def loss_fn(net, x, y, s, t, hu_scale: float):
    """Mean squared residual error in units of hu_scale; out-of-field padding fed as air, not scored."""
    import torch

    pad = (x <= PADDING_MAX_HU) | (y <= PADDING_MAX_HU)
    err = (net(torch.where(x <= PADDING_MAX_HU, AIR_HU, x), s, t) - y) / hu_scale
    return torch.sum(err.masked_fill(pad, 0.0) ** 2) / (~pad).sum().clamp(min=1)


def _meta(net_cfg: ConditionedNetConfig, cfg: ConditionedTrainConfig, reals, extra: dict):
    from medseg.engine.checkpoint import CheckpointMeta

    real = "; ".join(f"{r.vendor} {r.kernels[0]}/{r.kernels[1]} ({len(r.a)} slices)" for r in reals)
    return CheckpointMeta(
        model=MODEL_NAME,
        task="any kernel -> any kernel (conditioned on measured sharpness)",
        config=net_cfg.to_dict(),
        training_data=(  # "REAL" first where real pairs were used: the demo warning says so
            (f"REAL pairs: {real} + " if real else "")
            + f"SYNTHETIC chest phantoms over a continuum of kernels ({cfg.synthetic_exams} exams, "
            f"medseg.synthetic.ct_phantom){'; held out: ' + cfg.holdout if cfg.holdout else ''}; "
            "demo weights, NOT FOR CLINICAL USE"
        ),
        normalisation={"hu_mean": net_cfg.hu_mean, "hu_scale": net_cfg.hu_scale, "input": "raw HU"},
        metrics=extra,
        notes=json.dumps({"train": asdict(cfg)}),
    )


def train_conditioned(
    out_dir: str | Path,
    cfg: ConditionedTrainConfig,
    reals: list[RealPair],
    *,
    resume: bool = False,
    init: str | Path | None = None,
) -> dict[str, Any]:
    """Train until ``max_cpu_minutes`` of process CPU time are used; returns the run summary.
    ``reals`` are the real pairs to train on (the held-out vendor's already removed)."""
    import torch

    from medseg.engine.checkpoint import load_training_state, load_weights, save_training_state, save_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cpu0 = time.process_time()
    pool_path = out / POOL
    if pool_path.is_file():
        pool = dict(np.load(pool_path))
    else:
        pool = synthetic_pool(cfg)
        np.savez(pool_path, **pool)
    sharp = [float(v) for v in pool["sharpness"].ravel()] + [s for r in reals for s in (r.sharp_a, r.sharp_b)]
    net_cfg = ConditionedNetConfig(
        **{
            "sharpness_min": round(min(sharp) * 0.95, 3),
            "sharpness_max": round(max(sharp) * 1.05, 3),
            "vendors": sorted({r.vendor for r in reals}),
            **cfg.net,
        }
    )
    torch.manual_seed(cfg.seed)
    net = build_conditioned_net(config=net_cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    step, cpu_used, history = 0, 0.0, []
    if resume and (out / STATE).is_file():
        state = load_training_state(out / STATE)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, cpu_used, history = state["step"], state["cpu_used"], state["history"]
        rng.bit_generator.state = state["rng"]
        log.info("resumed at step %d (%.0f CPU-s used)", step, cpu_used)
    elif init is not None:
        net.load_state_dict(load_weights(init)[0], strict=False)
    sampler = Sampler(pool, reals, cfg)
    budget = cfg.max_cpu_minutes * 60.0
    used_before = cpu_used  # cpu0 was taken before the pool was built: building it counts too
    net.train()

    def save() -> None:
        meta = _meta(net_cfg, cfg, reals, {"steps": step, "train_cpu_s": round(cpu_used, 1)})
        save_weights(out / WEIGHTS, net.state_dict(), meta)
        save_training_state(
            out / STATE,
            {
                "model": net.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "cpu_used": cpu_used,
                "history": history,
                "rng": rng.bit_generator.state,
            },
        )
        (out / HISTORY).write_text(json.dumps(history, indent=1))

    running = []
    while cpu_used < budget:
        for g in opt.param_groups:
            g["lr"] = lr_at(cpu_used / budget, cfg.lr)
        x, y, s, t = (torch.from_numpy(a) for a in sampler.batch(rng))
        loss = loss_fn(net, x, y, s, t, net_cfg.hu_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        cpu_used = used_before + time.process_time() - cpu0
        if step % cfg.log_every == 0:
            rmse = 1000.0 * math.sqrt(float(np.mean(running)))
            history.append({"step": step, "cpu_s": round(cpu_used, 1), "train_rmse_hu": round(rmse, 2)})
            log.info("step %d  train RMSE %.1f HU  %.0f CPU-s", step, rmse, cpu_used)
            running = []
        if step % cfg.save_every == 0:
            save()
    save()
    return {"steps": step, "cpu_s": round(cpu_used, 1), "weights": str(out / WEIGHTS), "config": net_cfg}


def rmse_reduction(net, x: np.ndarray, y: np.ndarray, s: float, t: float) -> dict[str, float]:
    """Whole-slice RMSE (HU) before and after converting ``x`` (int16 slices) at sharpness s -> t,
    through the inference Predictor with padding kept, as ct-train's held-out test measures it."""
    from medseg.ct.conditioned import FixedConditionNet
    from medseg.ct.convert import PaddingGuard
    from medseg.ct.models import slice_predictor
    from medseg.ct.train import rmse_hu

    net.eval()
    predictor = PaddingGuard(
        slice_predictor(FixedConditionNet(net, s, t), device="cpu", amp="off", runtime="torch")
    )
    sq = 0.0
    for i in range(len(x)):
        out = predictor(x[i : i + 1, None].astype(np.float32))
        sq += float(np.sum((np.asarray(out, np.float64).reshape(y[i].shape) - y[i]) ** 2))
    before, after = rmse_hu(x, y), float(np.sqrt(sq / y.size))
    return {
        "slices": int(len(x)),
        "sharpness": [round(s, 3), round(t, 3)],
        "rmse_before_hu": round(before, 2),
        "rmse_after_hu": round(after, 2),
        "reduction_pct": round(100.0 * (before - after) / before, 1) if before > 0 else float("nan"),
    }


def evaluate_pair(net, pair: RealPair, *, held_out_vendor: bool) -> dict[str, Any]:
    """Both directions of a real pair: on its test slab, and (vendor held out of training) on every
    slice too. Sharpness as ct-convert --like would measure it (each whole series)."""
    res: dict[str, Any] = {}
    ka, kb = pair.kernels
    parts = []
    if pair.test_a is not None and len(pair.test_a):
        parts.append(("test slab", pair.test_a, pair.test_b))
    if held_out_vendor:  # every paired slice but the slab gaps: none was seen in training
        a = np.concatenate([pair.a, pair.test_a]) if pair.test_a is not None else pair.a
        b = np.concatenate([pair.b, pair.test_b]) if pair.test_b is not None else pair.b
        parts.append(("all slices", a, b))
    elif not parts:  # no room for a test slab (Toshiba: 4 slices): in-sample, labelled so
        parts.append(("training slices (in-sample)", pair.a, pair.b))
    for label, a, b in parts:
        res[f"{ka}->{kb} {label}"] = rmse_reduction(net, a, b, pair.sharp_a, pair.sharp_b)
        res[f"{kb}->{ka} {label}"] = rmse_reduction(net, b, a, pair.sharp_b, pair.sharp_a)
    return res
