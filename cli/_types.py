"""Click parameter types shared by the command modules (click only: imported by ``medseg --help``).

``click.FloatRange`` lets ``nan`` through (every comparison with NaN is false) and, without an upper
bound, ``inf``: ``--pixel-size nan`` would then reach the library and come back as NaN areas or an
internal error. :class:`FiniteFloatRange` refuses both as a one-line usage error (exit 2).
"""

from __future__ import annotations

import math

import click


class FiniteFloatRange(click.FloatRange):
    """A ``click.FloatRange`` that also refuses NaN and +/-infinity, in words."""

    name = "finite float range"

    def convert(self, value, param, ctx):
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):  # before the range: 'inf is not in the range 0<x<=527040' misleads
            self.fail(f"{value!r} is not a finite number (NaN and infinity are not allowed)", param, ctx)
        return super().convert(rv, param, ctx)


FINITE_FLOAT = FiniteFloatRange()
POSITIVE_FLOAT = FiniteFloatRange(min=0, min_open=True)
