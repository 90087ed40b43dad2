"""CT reconstruction-kernel conversion (Lee et al., Korean J Radiol 2019) and its QA metrics."""

from __future__ import annotations

KERNELS = ("B10f", "B30f", "B50f", "B70f")
