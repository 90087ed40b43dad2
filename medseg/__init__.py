"""medseg: medical imaging toolkit (CT kernel conversion, C4d slide scoring, cell and brain segmentation).

The top-level package stays import-light (no torch) so the CLI answers ``--help`` quickly.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
