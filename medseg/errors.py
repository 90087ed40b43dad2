"""Exceptions that the CLI turns into one-line messages and exit codes.

Library code raises these for problems the *user* can fix (bad input, existing output);
anything else is a bug and surfaces as an internal error.
"""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """A user-facing error: printed as one line, no traceback unless ``--debug``."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class InputError(MedsegError):
    """The input cannot be used (unreadable, wrong kind, inconsistent)."""

    exit_code = 2


class OutputExistsError(MedsegError):
    """Refusing to overwrite an existing output without ``--overwrite``."""

    exit_code = 3


class ModelError(MedsegError):
    """Weights missing, of the wrong model, or for another task."""

    exit_code = 4


class BatchFailures(MedsegError):
    """Some items of a batch failed (each was recorded and skipped)."""

    exit_code = 5


def one_line(text: object) -> str:
    """A message on one line, whole: lines joined, an embedded traceback (pydicom adds one) dropped."""
    text = str(text)
    cut = text.find("Traceback (most recent call last):")
    if cut > 0:
        text = text[:cut]
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
