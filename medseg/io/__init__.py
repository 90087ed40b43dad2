"""Readers and writers shared by the pipelines; readers return ``(array, metadata)``."""

from __future__ import annotations

from medseg.io.atomic import atomic_dir, atomic_path, check_output, safe_name

__all__ = ["atomic_dir", "atomic_path", "check_output", "safe_name"]
