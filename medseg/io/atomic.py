"""Atomic outputs and safe file names.

Outputs appear complete or not at all: write to a temporary sibling, then ``os.replace``.
A crash mid-write leaves no half file that a later ``--resume`` would trust.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from medseg.errors import InputError, OutputExistsError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def safe_name(text: str, *, default: str = "unnamed", max_len: int = 64) -> str:
    """Make metadata (series descriptions, slide names) safe as one path component."""
    cleaned = _UNSAFE.sub("_", str(text)).strip("._-")
    return cleaned[:max_len] or default


def check_writable(path: str | Path) -> Path:
    """Pre-flight: can ``path`` (a file or folder, existing or not) be created here?

    Probes the nearest existing folder by creating and removing a temporary file, which is the
    only check that also holds for root, read-only file systems and full disks. Raises
    :class:`InputError` naming the path (exit 2).
    """
    path = Path(path)
    probe = path if path.is_dir() else path.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"cannot write here: {probe} is a file, not a folder", path=path)
    try:
        fd, name = tempfile.mkstemp(prefix=".medseg-probe.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise InputError(f"cannot write here: {exc.strerror or exc} ({probe})", path=path) from None
    return path


def check_output(path: str | Path, *, overwrite: bool) -> Path:
    """Pre-flight for one output: refuse to clobber it unless ``overwrite``; check it is writable."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError("output exists (use --overwrite to replace it)", path=path)
    return check_writable(path)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it over ``path`` on success.

    The temporary name keeps the real suffix (``.nii.gz``, ``.png``) so writers that pick a
    format from the extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publish_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it becomes ``path`` on success.

    With ``overwrite`` an existing directory is replaced only after the new one is complete.
    """
    path = Path(path)
    check_output(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _publish_mode(tmp, directory=True)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old) if old.is_dir() else old.unlink()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
