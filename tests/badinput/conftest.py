"""The bad-input corpus: one row per case, each run through the real ``medseg`` CLI in-process.

A row says which command runs on which input (built by a function into a fresh folder), the exit
code and a phrase of the one-line message it must give, and the harness checks what every bad
input must leave behind: the inputs byte-for-byte unchanged, nothing in ``--out``, no traceback,
and with ``--json`` one JSON document naming the error. Rows live in the ``test_*`` modules of
this folder, one module per area, so they can grow independently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Case:
    """One bad input.

    ``build(tmp)`` creates the inputs under ``tmp`` and returns the command line (``{tmp}`` is
    not needed: use the paths it created). Every path the row names in ``inputs`` (relative to
    ``tmp``) is hashed before and after. ``out`` (relative to ``tmp``) must hold no file after.
    """

    id: str
    build: Callable[[Path], Sequence[str | Path]]
    exit_code: int
    phrase: str
    inputs: tuple[str, ...] = ()
    out: str | None = "out"
    json: bool = True
    marks: tuple = field(default_factory=tuple)


def digest(paths: Sequence[Path]) -> dict[str, str]:
    """sha256 of every file under each path (a file or a folder), symlinks followed."""
    found: dict[str, str] = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            found[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return found


def run_cli(*args: str | Path):
    """Invoke ``medseg`` in-process; ``.stdout`` holds the --json document, ``.output`` both streams."""
    from click.testing import CliRunner
    from medseg_cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


def check_case(case: Case, tmp_path: Path) -> None:
    """Run one row and assert everything a bad input must leave behind."""
    argv = [str(a) for a in case.build(tmp_path)]
    inputs = [tmp_path / p for p in case.inputs]
    for p in inputs:
        assert p.exists(), f"row {case.id}: input {p} was not built"
    before = digest(inputs)
    if case.json and "--json" not in argv:
        argv.append("--json")
    result = run_cli(*argv)
    out = result.output
    assert result.exit_code == case.exit_code, (
        f"{case.id}: exit {result.exit_code}, want {case.exit_code}\n{out}"
    )
    assert "Traceback" not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("medseg: error:")]
    assert len(errors) == 1, f"{case.id}: want one error line\n{out}"
    assert case.phrase.lower() in errors[0].lower(), f"{case.id}: {case.phrase!r} not in {errors[0]!r}"
    if case.json:
        doc = json.loads(result.stdout)
        assert doc["exit_code"] == case.exit_code and doc["error"], doc
    assert digest(inputs) == before, f"{case.id}: an input was changed"
    if case.out is not None:
        target = tmp_path / case.out
        left = [] if not target.exists() else ([target] if target.is_file() else list(target.rglob("*")))
        # an --out that is itself an input (the refusal case) is the input, checked above
        if case.out not in case.inputs:
            assert not [p for p in left if p.is_file()], f"{case.id}: left {left} in --out"


def cases_params(rows: Sequence[Case]):
    """``pytest.param`` per row, with its id and marks."""
    return [pytest.param(r, id=r.id, marks=list(r.marks)) for r in rows]
