"""Where weights come from: the user's file, or the demo weights shipped inside the package.

One place for the fallback, so every pipeline says the same thing when it uses demo weights.
Demo weights are package data (``medseg/weights/``): they work after a regular ``pip install``
from any directory. Their metadata says what they were trained on: synthetic data (most), or public
real data for research use (cells: DSB 2018; brain: BraTS 2018), and the warning says which.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medseg.errors import ModelError

log = logging.getLogger("medseg")

DEMO_ROOT = Path(__file__).resolve().parents[1] / "weights"

DEMO_WARNING = (
    "using the demo weights {name} (trained on synthetic data only: a demo, not for clinical use); "
    "pass --weights for your own model"
)
DEMO_WARNING_REAL = (
    "using the demo weights {name} (trained on public real data, see their metadata: research use, "
    "not for clinical use); pass --weights for your own model"
)


def _trained_on_real_data(path: Path) -> bool:
    """Demo weights whose metadata's training data starts with "REAL" (the cells weights trained on
    DSB 2018, the brain weights on BraTS 2018); every other demo file is synthetic-only."""
    try:
        from medseg.engine.checkpoint import read_meta

        return read_meta(path).training_data.startswith("REAL")
    except Exception:  # unreadable metadata: say the cautious thing
        return False


def demo_weights_path(*parts: str) -> Path:
    """Path of a shipped demo weights file (or folder), e.g. ``demo_weights_path("ct")``."""
    return DEMO_ROOT.joinpath(*parts)


def resolve_weights(weights: str | Path | None, *, demo: str | Path) -> tuple[Path, bool]:
    """The weights file to use and whether it is the demo one.

    ``weights`` given: it must be an existing file (ModelError otherwise, exit 4). Not given: the
    demo file ``demo`` (relative to the demo folder), with the one warning every pipeline gives.
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(
                "weights file not found" if not path.exists() else "weights path is not a file", path=path
            )
        return path, False
    path = demo_weights_path(str(demo))
    if not path.is_file():
        raise ModelError(f"no --weights given and the demo weights {demo} are not installed; pass --weights")
    log.warning((DEMO_WARNING_REAL if _trained_on_real_data(path) else DEMO_WARNING).format(name=path.name))
    return path, True


def is_demo(path: str | Path) -> bool:
    """True for a file inside the shipped demo folder."""
    try:
        Path(path).resolve().relative_to(DEMO_ROOT)
    except ValueError:
        return False
    return True
