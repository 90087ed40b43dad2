"""CT reconstruction-kernel conversion (Lee et al., Korean J Radiol 2019) and its QA metrics."""

from __future__ import annotations

# the Siemens kernels the synthetic phantoms simulate and the demo weights cover; any other name a
# scanner writes is a valid kernel too (medseg.ct.kernels)
KERNELS = ("B10f", "B30f", "B50f", "B70f")
