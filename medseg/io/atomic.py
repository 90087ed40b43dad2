"""Atomic outputs, inputs kept apart from outputs, one writer per output, and safe file names.

Outputs appear complete or not at all: write to a temporary sibling, then rename it into place.
A crash mid-write leaves no half file that a later ``--resume`` would trust. On top of that:

- :func:`check_apart`: an output may not be, contain or lie inside an input (inputs are never
  written, even with ``--overwrite``);
- :func:`output_session` + the pre-flight checks: while a command runs it holds a lock on every
  output it checked, so a second command with the same ``--out`` is refused (exit 3) at its
  pre-flight instead of mixing its files with the first one's;
- publishing refuses a destination that appeared while the run worked (exit 3, nothing replaced);
- :func:`output_set`: several outputs (a series and its QA report) are published together or not
  at all, e.g. when the disk fills up while the last of them is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import os
import re
import shutil
import struct
import sys
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from medseg.errors import InputError, OutputExistsError

try:
    import fcntl
except ImportError:  # not POSIX: no output locks (pre-flight and no-clobber publishing still hold)
    fcntl = None

_UNSAFE = re.compile(r"[^\w.-]+")  # letters and digits of any script stay: 活检 and 病理 stay apart


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish_mode(path: Path, *, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; outputs get the usual umask-based mode."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def safe_name(text: str, *, default: str = "unnamed", max_len: int = 64) -> str:
    """Make metadata (series descriptions, slide names) safe as one path component."""
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", str(text))).strip("._-")
    return cleaned[:max_len] or default


def _resolved(path: str | Path) -> Path:
    """Absolute, symlinks followed (also for paths that do not exist yet)."""
    return Path(os.path.expanduser(str(path))).resolve()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and bind mounts too
    except OSError:
        return False


def check_apart(
    outputs: str | Path | Iterable[str | Path | None],
    inputs: str | Path | Iterable[str | Path | None],
    *,
    what: str = "the output",
) -> None:
    """Inputs are never written: refuse an output that is, contains or lies inside an input.

    Files and folders, after resolving symlinks; ``--overwrite`` does not lift it (an input that a
    run replaced or filled with its own files is lost or changed for good). ``None`` entries are
    ignored so optional paths can be passed as they are. Raises :class:`InputError` (exit 2) naming
    both paths. Being the first pre-flight check of an output, it also takes the output's lock
    (:func:`hold_output`), so no later existence check can race with another run.
    """
    outs = [outputs] if isinstance(outputs, (str, Path)) else list(outputs)
    ins = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    for output in outs:
        if output is None:
            continue
        hold_output(output)
        out = _resolved(output)
        for source in ins:
            if source is None:
                continue
            src = _resolved(source)
            if out == src or out in src.parents or src in out.parents or _same_file(out, src):
                raise InputError(
                    f"{what} would overwrite or change the input {source}; choose another place "
                    "(--overwrite does not allow this)",
                    path=output,
                )


# ---- one writer per output: a lock held from pre-flight to the end of the command -------------------

_SESSION: contextvars.ContextVar[dict[int, Path] | None] = contextvars.ContextVar(
    "medseg_outputs", default=None
)
_LOCK_FD: int | None = None


def _lock_fd() -> int:
    """One lock file per user; each output locks one byte of it (POSIX record locks).

    Record locks (``lockf``) rather than ``flock``: one descriptor for any number of outputs, not
    inherited by forked workers (a DataLoader or Ray worker never keeps a lock alive), and released
    by the kernel when the process ends, however it ends, so a killed run never blocks the rerun.
    """
    global _LOCK_FD
    if _LOCK_FD is None:
        folder = Path(tempfile.gettempdir()) / f"medseg-{os.getuid()}"
        folder.mkdir(mode=0o700, exist_ok=True)
        _LOCK_FD = os.open(folder / "outputs.lock", os.O_RDWR | os.O_CREAT, 0o600)
    return _LOCK_FD


def _lock_offset(path: Path) -> int:
    return int.from_bytes(hashlib.blake2b(str(path).encode(), digest_size=7).digest(), "big")


def _holder(fd: int, offset: int) -> int | None:
    """The pid holding ``offset`` (Linux ``struct flock`` layout), for the message; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    layout = "hhqqi"
    query = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0) + bytes(8)
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
        kind, _w, _s, _l, pid = struct.unpack(layout, answer[: struct.calcsize(layout)])
    except (OSError, struct.error):
        return None
    return pid if kind != fcntl.F_UNLCK and pid > 0 else None


def hold_output(path: str | Path) -> None:
    """Inside an :func:`output_session`: lock ``path`` for this process, or refuse (exit 3).

    The lock is taken before the output is checked for existence, so of two commands started
    together with the same ``--out`` exactly one goes on; the other stops at its pre-flight,
    having written nothing. Outside a session (library calls, Ray workers) it does nothing.
    """
    held = _SESSION.get()
    if held is None or fcntl is None:
        return
    target = _resolved(path)
    offset = _lock_offset(target)
    if offset in held:
        return
    fd = _lock_fd()
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        pid = _holder(fd, offset)
        who = f"another medseg run (process {pid})" if pid else "another medseg run"
        raise OutputExistsError(
            f"{who} is writing this output now; wait for it to finish or choose another --out", path=path
        ) from None
    held[offset] = target


@contextlib.contextmanager
def output_session() -> Iterator[None]:
    """Hold the locks that pre-flight takes (:func:`check_output`, :func:`check_writable`) until exit.

    The CLI runs every command in one session; library callers may open one around a call. Nested
    sessions join the outer one.
    """
    if _SESSION.get() is not None:
        yield
        return
    held: dict[int, Path] = {}
    token = _SESSION.set(held)
    try:
        yield
    finally:
        _SESSION.reset(token)
        for offset in held:
            with contextlib.suppress(OSError):
                fcntl.lockf(_lock_fd(), fcntl.LOCK_UN, 1, offset, os.SEEK_SET)


def check_writable(path: str | Path) -> Path:
    """Pre-flight: can ``path`` (a file or folder, existing or not) be created here?

    Probes the nearest existing folder by creating and removing a temporary file, which is the
    only check that also holds for root, read-only file systems and full disks. Raises
    :class:`InputError` naming the path (exit 2). In an :func:`output_session` it also takes the
    output's lock (exit 3 when another run holds it).
    """
    path = Path(path)
    hold_output(path)
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
    hold_output(path)  # first: of two runs started together, the second stops here
    if path.exists() and not overwrite:
        raise OutputExistsError("output exists (use --overwrite to replace it)", path=path)
    return check_writable(path)


# ---- publishing: no clobbering of what appeared meanwhile; several outputs all or none ---------------

_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_GROUP: contextvars.ContextVar[list[_Pending] | None] = contextvars.ContextVar("medseg_group", default=None)


def os_error_cause(exc: BaseException) -> OSError | None:
    """The OSError with an errno behind ``exc`` (itself, or what a library wrapped, e.g. pydicom)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _name_the_output(exc: BaseException, dest: Path, tmp: Path) -> None:
    """Re-raise a disk-full style error as one plain OSError naming ``dest``, not the temporary name.

    Writers through a handle raise it without a file name, and pydicom wraps it in an OSError whose
    text is a whole traceback; the user needs the errno's words and the output's path.
    """
    cause = os_error_cause(exc)
    if cause is None or cause.errno not in _WRITE_ERRNOS:
        return
    named = cause.filename is not None and not str(cause.filename).startswith(str(tmp))
    if cause is exc and named:
        return
    raise OSError(cause.errno, os.strerror(cause.errno), str(cause.filename if named else dest)) from None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class _Pending:
    """A finished temporary file or folder waiting to be renamed to ``dest``."""

    tmp: Path
    dest: Path
    existed: bool  # dest existed when the run started writing it (so --overwrite replaces it)
    directory: bool
    backup: Path | None = None
    published: bool = False

    def publish(self, *, keep_old: bool = False) -> None:
        _publish_mode(self.tmp, directory=self.directory)
        present = self.dest.exists() or self.dest.is_symlink()
        if present and not self.existed:
            raise OutputExistsError(
                "appeared while this run was working (another program wrote it); nothing was replaced",
                path=self.dest,
            )
        if present and (keep_old or self.directory):
            self._set_aside()
        try:
            self._rename_no_clobber()
        except BaseException:
            if self.backup is not None and self.directory:
                os.replace(self.backup, self.dest)
                self.backup = None
            raise
        self.published = True

    def _set_aside(self) -> None:
        """Keep the old output until the whole set is published (restored if anything fails)."""
        aside = self.dest.with_name(f".{self.dest.name}.old.{os.getpid()}")
        _remove(aside)
        if self.directory:
            os.replace(self.dest, aside)
            self.backup = aside
        else:
            try:  # a hard link: the old file stays in place until the atomic replace below
                os.link(self.dest, aside)
                self.backup = aside
            except OSError:
                self.backup = None

    def _rename_no_clobber(self) -> None:
        if self.directory:
            try:
                os.rename(self.tmp, self.dest)  # fails on a non-empty folder that appeared meanwhile
            except OSError as exc:
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise OutputExistsError(
                        "appeared while this run was working (another program wrote it); nothing was "
                        "replaced",
                        path=self.dest,
                    ) from None
                raise
            return
        if self.existed:
            os.replace(self.tmp, self.dest)
            return
        try:
            os.link(self.tmp, self.dest)  # atomic and never replaces a file that appeared meanwhile
        except FileExistsError:
            raise OutputExistsError(
                "appeared while this run was working (another program wrote it); nothing was replaced",
                path=self.dest,
            ) from None
        except OSError:  # no hard links on this file system
            os.replace(self.tmp, self.dest)
        else:
            self.tmp.unlink(missing_ok=True)

    def finalize(self) -> None:
        if self.backup is not None:
            _remove(self.backup)
            self.backup = None

    def undo(self) -> None:
        """Take back a published output (another output of its set failed)."""
        if not self.published:
            return
        if self.backup is not None:
            if self.directory:
                _remove(self.dest)
            os.replace(self.backup, self.dest)
            self.backup = None
        else:
            _remove(self.dest)
        self.published = False

    def discard(self) -> None:
        _remove(self.tmp)


def _publish(pending: list[_Pending]) -> None:
    """Rename every pending output into place; on any failure take back the ones already placed."""
    try:
        for p in pending:
            p.publish(keep_old=len(pending) > 1)
    except BaseException:
        for p in reversed(pending):
            with contextlib.suppress(OSError):
                p.undo() if p.published else p.discard()
        raise
    for p in pending:
        with contextlib.suppress(OSError):
            p.finalize()


_MADE: contextvars.ContextVar[list[Path] | None] = contextvars.ContextVar("medseg_made", default=None)


def _make_parent(path: Path) -> None:
    """Create ``path``'s folder; inside an :func:`output_set` remember what was made, to take it back."""
    missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    made = _MADE.get()
    if made is not None:
        made.extend(missing)  # deepest first


def _finish(pending: _Pending) -> None:
    group = _GROUP.get()
    if group is not None:  # published with the rest of its set; a later write of the same file wins
        for earlier in [p for p in group if p.dest == pending.dest]:
            earlier.discard()
            group.remove(earlier)
        group.append(pending)
    else:
        _publish([pending])


@contextlib.contextmanager
def output_set() -> Iterator[None]:
    """Every :func:`atomic_path` / :func:`atomic_dir` finished inside is published at the end, all or none.

    Used where one run makes several outputs that only make sense together (a converted series and
    its QA report): a full disk while writing the last one leaves none of them, so the corrected
    rerun is not refused as "output exists". Nested sets join the outer one.
    """
    if _GROUP.get() is not None:
        yield
        return
    pending: list[_Pending] = []
    made: list[Path] = []
    token, made_token = _GROUP.set(pending), _MADE.set(made)
    try:
        try:
            yield
        finally:
            _GROUP.reset(token)
            _MADE.reset(made_token)
        _publish(pending)
    except BaseException:
        for p in pending:
            p.discard()
        for folder in made:  # folders made for outputs that were not published (if still empty)
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it over ``path`` on success.

    The temporary name keeps the real suffix (``.nii.gz``, ``.png``) so writers that pick a
    format from the extension still work. A ``path`` that did not exist when writing started and
    exists at the end (another program) is not replaced (exit 3). A full disk is reported naming
    ``path``.
    """
    path = Path(path)
    _make_parent(path)
    existed = path.exists()
    suffix = suffix if suffix is not None else "".join(path.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    pending = _Pending(Path(tmp_name), path, existed, directory=False)
    try:
        yield pending.tmp
        _finish(pending)
    except BaseException as exc:
        pending.discard()
        _name_the_output(exc, path, pending.tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it becomes ``path`` on success.

    With ``overwrite`` an existing directory is replaced only after the new one is complete; one
    that appeared meanwhile is never replaced (exit 3).
    """
    path = Path(path)
    check_output(path, overwrite=overwrite)
    _make_parent(path)
    existed = path.exists()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    pending = _Pending(tmp, path, existed, directory=True)
    try:
        yield tmp
        _finish(pending)
    except BaseException as exc:
        pending.discard()
        _name_the_output(exc, path, pending.tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write a text file."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
