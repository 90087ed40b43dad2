"""Non-finite numbers in the options every command shares (``cli/options.py``) and ct-train's own.

``click.FloatRange`` lets ``nan`` through and, unbounded, ``inf``; the shared options use
``FiniteFloatRange`` (``cli/_types.py``), so each row is one usage line, exit 2, before any work.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import Case, cases_params, check_case


def _folder(tmp: Path) -> Path:
    (tmp / "data").mkdir(exist_ok=True)
    return tmp / "data"


ROWS = (
    [
        Case(
            f"{cmd}-{opt}-{value}",
            lambda tmp, cmd=cmd, opt=opt, value=value, extra=extra: [
                cmd,
                *extra(_folder(tmp)),
                "--out",
                tmp / "out",
                opt,
                value,
            ],
            2,
            "not a finite number",
            inputs=("data",),
        )
        for cmd, extra in (
            ("ct-train", lambda d: [d, "--from", "B50f", "--to", "B30f"]),
            ("cells-train", lambda d: ["--images", d, "--masks", d]),
            ("brain-train", lambda d: [d]),
            ("slide-train", lambda d: [d]),
        )
        for opt, value in (("--max-minutes", "nan"), ("--max-minutes", "inf"), ("--val-fraction", "nan"))
        if not (cmd == "ct-train" and opt == "--val-fraction")  # ct-train holds out a slab instead
    ]
    + [
        Case(
            f"ct-train-{opt}-nan",
            lambda tmp, opt=opt: [
                "ct-train",
                _folder(tmp),
                "--from",
                "B50f",
                "--to",
                "B30f",
                "--out",
                tmp / "out",
                opt,
                "nan",
            ],
            2,
            "not a finite number",
            inputs=("data",),
        )
        for opt in ("--lr", "--weight-decay")
    ]
    + [
        Case(
            "slide-score-deadline-inf",
            lambda tmp: ["slide-score", _folder(tmp), "--out", tmp / "out", "--ray", "--deadline", "inf"],
            2,
            "not a finite number",
            inputs=("data",),
        )
    ]
)


@pytest.mark.parametrize("case", cases_params(ROWS))
def test_non_finite_option(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)
