"""One result shape for every pipeline's public entry function.

An entry function takes paths + a typed config and returns a :class:`RunResult` holding one
:class:`ItemResult` per input item (ok / failed + reason / skipped + reason). It never raises for
a partial batch failure; it raises (:mod:`medseg.errors`) only for errors that stop everything.
The CLI turns a result into the exit code (0, or 5 when any item failed) and, with ``--json``,
into one JSON document.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

OK, FAILED, SKIPPED = "ok", "failed", "skipped"
STATUSES = (OK, FAILED, SKIPPED)


@dataclass
class ItemResult:
    """The outcome of one item (a series, a slide, an image, a case)."""

    name: str
    status: str = OK
    reason: str = ""  # why it failed or was skipped, in words
    outputs: dict[str, str] = field(default_factory=dict)  # what was written for it (kind -> path)
    metrics: dict[str, Any] = field(default_factory=dict)  # numbers a person or a script reads
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclass
class RunResult:
    """What a command did: per-item outcomes, batch-level outputs and a summary."""

    command: str
    items: list[ItemResult] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)  # batch-level files (report, CSV)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        note_partial(self)  # what an interrupted command prints (items so far)

    def add(self, item: ItemResult) -> ItemResult:
        self.items.append(item)
        return item

    @property
    def failed(self) -> list[ItemResult]:
        return [i for i in self.items if i.status == FAILED]

    @property
    def counts(self) -> dict[str, int]:
        return {s: sum(i.status == s for i in self.items) for s in STATUSES}

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, 5 when some items failed (each recorded)."""
        return 5 if self.failed else 0

    def failure_lines(self) -> list[str]:
        return [f"{i.name}: {i.reason}" for i in self.failed]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["counts"] = self.counts
        doc["exit_code"] = self.exit_code
        return json_safe(doc)


_PARTIAL: Any = None


def note_partial(result: Any) -> None:
    """Remember the result being built (anything with ``to_dict()``, or a dict kept up to date).

    A command interrupted with Ctrl-C prints it with ``--json`` (exit 130), so a script learns what
    was done before the interruption instead of getting nothing.
    """
    global _PARTIAL
    _PARTIAL = result


def take_partial() -> dict[str, Any] | None:
    """The last noted result as a JSON-safe dict (and forget it); None when nothing was noted."""
    global _PARTIAL
    result, _PARTIAL = _PARTIAL, None
    if result is None:
        return None
    doc = result.to_dict() if hasattr(result, "to_dict") else dict(result)
    return json_safe(doc)


def json_safe(value: Any) -> Any:
    """NaN/Inf -> None, tuples -> lists, NumPy scalars -> Python: strict JSON for any consumer."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
