"""Seeded synthetic data for tests, demos and benchmarks (never for clinical use)."""

from __future__ import annotations
