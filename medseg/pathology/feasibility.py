"""Feasible-ROI filtering: is a tile worth scoring?

Following Kim et al. (Sci Rep 2019), a tile is *not* feasible when more than two thirds of it is
artefact / poor staining, area without PTCs (empty space, large vessel lumen) or scar. The default
heuristic below decides from pixels only:

- *unusable* pixels are glass/empty (low optical density and saturation), very dark
  (folds, dirt, pen) or saturated non-stain colours (pen marks);
- more than ``max_unusable`` (2/3) unusable -> ``background/artefact``;
- too little local contrast in the tissue (variance of the Laplacian) -> ``out of focus/blank``.

Glomeruli, large vessels and scar are not recognised by the heuristic: plug a trained classifier
in with ``--feasibility module:function`` (a callable ``tile RGB uint8 (H, W, 3) -> (bool, reason)``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medseg.errors import InputError

FeasibilityHook = Callable[[np.ndarray], tuple[bool, str]]


@dataclass
class FeasibilityHeuristic:
    """Default pixel heuristic (see module docstring). Thresholds are for 8-bit RGB."""

    max_unusable: float = 2.0 / 3.0
    min_focus: float = 4.0  # variance of the Laplacian of tissue pixels (gray levels^2)
    od_background: float = 0.12
    step: int = 2  # evaluate on every ``step``-th pixel (speed)

    def __call__(self, tile: np.ndarray) -> tuple[bool, str]:
        from scipy import ndimage as ndi

        if tile.size == 0:
            return False, "empty tile"
        t = tile[:: self.step, :: self.step].astype(np.float32)
        od = -np.log10(np.clip(t, 1.0, 255.0) / 255.0).sum(-1)
        mx, mn = t.max(-1), t.min(-1)
        sat = (mx - mn) / np.maximum(mx, 1.0)
        gray = t.mean(-1)
        background = (od < self.od_background) & (sat < 0.05)
        dark = gray < 40
        pen = (sat > 0.75) & (mx > 60)
        unusable = background | dark | pen
        frac = float(unusable.mean())
        if frac > self.max_unusable:
            return False, f"background/artefact {frac:.0%}"
        lap = ndi.laplace(gray)
        focus = float(lap[~unusable].var()) if (~unusable).any() else 0.0
        if focus < self.min_focus:
            return False, f"out of focus/blank (focus {focus:.1f})"
        return True, "ok"


def always_feasible(tile: np.ndarray) -> tuple[bool, str]:
    """A hook that keeps every tile (tests, or slides already cropped to ROIs)."""
    return True, "ok"


def load_hook(spec: str | None) -> FeasibilityHook:
    """``None``/``default`` -> heuristic, ``none`` -> keep all, ``module:function`` -> that callable."""
    if spec in (None, "", "default"):
        return FeasibilityHeuristic()
    if spec == "none":
        return always_feasible
    if ":" not in spec:
        raise InputError(f"--feasibility must be default, none or module:function, got {spec!r}")
    module_name, func_name = spec.split(":", 1)
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as exc:
        raise InputError(f"cannot load feasibility hook {spec!r}: {exc}") from None
    if not callable(func):
        raise InputError(f"feasibility hook {spec!r} is not callable")
    return CheckedHook(func, spec)


class HookError(InputError):
    """The user's feasibility hook failed or answered in another form: the slide stops with this
    message (it is not an unreadable tile, and retrying other tiles would fail the same way)."""


@dataclass
class CheckedHook:
    """A ``module:function`` hook with its answer checked: ``(feasible, reason)``, or a plain bool.

    Without it a hook returning ``True`` stopped the whole batch with an internal error (exit 1),
    and one raising an exception failed each slide as "no tile could be read"."""

    func: Callable
    spec: str

    def __call__(self, tile: np.ndarray) -> tuple[bool, str]:
        try:
            out = self.func(tile)
        except Exception as exc:  # noqa: BLE001 - anything the user's code raises
            first = (str(exc).splitlines() or [""])[0]
            raise HookError(
                f"--feasibility hook {self.spec} failed on a tile: {type(exc).__name__}: {first}"
            ) from None
        if isinstance(out, (bool, np.bool_)):
            return bool(out), "ok" if out else f"rejected by {self.spec}"
        if isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[0], (bool, np.bool_)):
            return bool(out[0]), str(out[1])
        raise HookError(
            f"--feasibility hook {self.spec} must return (feasible: bool, reason: str), got "
            f"{type(out).__name__} {str(out)[:40]!r}"
        )
