"""The ``medseg`` command group: command discovery, logging and one-line errors."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import json
import logging
import pkgutil
import sys
import warnings

import click

from medseg import __version__
from medseg.errors import MedsegError, one_line

log = logging.getLogger("medseg")

EXIT_CODES = """\b
Exit codes: 0 ok, 1 internal error, 2 bad input or usage, 3 output exists
(use --overwrite), 4 model/weights problem, 5 some items of a batch failed,
130 interrupted (Ctrl-C).
"""

EPILOG = f"""\b
Examples:
  medseg ct-models
  medseg ct-convert scan/ --from B50f --to B30f --out scan_B30f/
  medseg ct-report cohort/ --from B50f --to B30f --out qa/
  medseg COMMAND --help

{EXIT_CODES}"""


class _Formatter(logging.Formatter):
    """``medseg: <level>: <message>``, always one line (a message is joined, never cut)."""

    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        prefix = "medseg: " if record.levelno < logging.WARNING else f"medseg: {level}: "
        return prefix + one_line(record.getMessage())


_SHOWN_WARNINGS: set[str] = set()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Library warnings (pydicom, numpy, monai, torch) as ``medseg: warning:`` lines, each text once.

    What ``logging.captureWarnings`` does, minus its formatting: no file name, no source line, no
    category, one line; a warning repeated for every slice is shown once.
    """
    text = one_line(message)
    if text:
        logging.getLogger("medseg.lib").warning("%s", text)  # shown once by _Once


class _Once(logging.Filter):
    """Each warning text once per command: a reader opened twice, or a notice repeated for every
    slice, is not said again (medseg's own warnings and library warnings alike)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        text = one_line(record.getMessage())
        if text in _SHOWN_WARNINGS:
            return False
        _SHOWN_WARNINGS.add(text)
        return True


class _QuietITK(importlib.abc.MetaPathFinder):
    """Switch off SimpleITK's own stderr warnings when it is first imported (it is imported lazily).

    ITK prints notices (pixdim, direction cosines) straight to stderr from C++, past Python's
    warnings; the readers check what matters themselves and say it in words.
    """

    _busy = False

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if fullname != "SimpleITK" or self._busy:
            return None
        self._busy = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            run(module)
            _itk_quiet(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)

        loader.exec_module = exec_module
        return spec


def _itk_quiet(module) -> None:  # noqa: ANN001
    try:
        module.ProcessObject_SetGlobalWarningDisplay(False)
    except AttributeError:
        pass


def setup_logging(*, quiet: bool = False, debug: bool = False) -> None:
    """Log to stderr: INFO by default, WARNING with --quiet, DEBUG with --debug; library warnings too."""
    root = logging.getLogger("medseg")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    handler.addFilter(_Once())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    root.propagate = False
    warnings.showwarning = _show_warning
    _SHOWN_WARNINGS.clear()  # once per command (a process may run several, e.g. in tests)
    if "SimpleITK" in sys.modules:
        _itk_quiet(sys.modules["SimpleITK"])
    elif not any(isinstance(f, _QuietITK) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietITK())


def _command_modules() -> list[str]:
    import medseg_cli

    return sorted(
        m.name
        for m in pkgutil.iter_modules(medseg_cli.__path__)
        if m.name not in ("main", "options") and not m.name.startswith("_")
    )


class MedsegGroup(click.Group):
    """Finds commands in ``medseg_cli.*`` modules and turns MedsegError into one line + exit code."""

    def _load(self) -> dict[str, click.Command]:
        if not getattr(self, "_loaded", None):
            found: dict[str, click.Command] = {}
            for name in _command_modules():
                module = importlib.import_module(f"medseg_cli.{name}")
                for cmd in getattr(module, "commands", []):
                    if "Exit codes:" not in (cmd.epilog or ""):  # every command's --help says them
                        cmd.epilog = (cmd.epilog or "").rstrip("\n") + "\n\n" + EXIT_CODES
                    found[cmd.name] = cmd
            self._loaded = found
        return self._loaded

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._load()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        return super().get_command(ctx, name) or self._load().get(name)

    def invoke(self, ctx: click.Context):
        from medseg.io.atomic import os_error_cause, output_session
        from medseg.results import take_partial

        take_partial()  # nothing of an earlier command in this process
        try:
            with output_session():  # the outputs this command checked stay locked until it ends
                return super().invoke(ctx)
        except MedsegError as exc:
            _debug_traceback(ctx)
            _fail(ctx, str(exc), exc.exit_code, path=exc.path)
        except OSError as exc:  # permission denied, disk full, read-only file system: the user's to fix
            _debug_traceback(ctx)
            cause = os_error_cause(exc) or exc  # pydicom wraps it in an OSError holding a traceback
            name = exc.filename if exc.filename is not None else cause.filename
            where = "" if name is None else str(name)
            text = cause.strerror or str(cause)
            _fail(ctx, f"{where}: {text}" if where else text, 2, path=where or None)
        except KeyboardInterrupt:
            _debug_traceback(ctx)
            _interrupted(ctx, take_partial())
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug: still one line by default
            _debug_traceback(ctx)
            if _out_of_memory(exc):
                _fail(ctx, _memory_message(exc), 2)
            _fail(
                ctx,
                f"internal error: {exc.__class__.__name__}: {one_line(exc)} (rerun with --debug)",
                1,
                internal=True,
            )

    def main(self, args=None, prog_name=None, standalone_mode: bool = True, **extra):
        """Click usage errors as one line (``medseg: error: ...``, exit 2), JSON with ``--json``."""
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, standalone_mode=False, **extra)
        except click.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx is not None else "medseg"
            message = f"{exc.format_message()} (see '{cmd} --help')"
            if "--json" in argv:
                click.echo(json.dumps({"error": message, "exit_code": 2}))
            click.echo(f"medseg: error: {message}", err=True)
            rv = 2
        except click.ClickException as exc:
            click.echo(f"medseg: error: {exc.format_message()}", err=True)
            rv = exc.exit_code
        except (click.Abort, KeyboardInterrupt):  # before the command began (while parsing)
            if "--json" in argv:
                click.echo(json.dumps({"error": "interrupted", "exit_code": 130}))
            click.echo("medseg: interrupted", err=True)
            _forget_unhandled_interrupt()
            rv = 130
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


_OOM_WORDS = ("can't allocate memory", "out of memory", "unable to allocate")


def _out_of_memory(exc: BaseException) -> bool:
    """numpy's MemoryError, torch's CPU allocator failure and CUDA OutOfMemoryError alike."""
    text = str(exc).lower()
    return (
        isinstance(exc, MemoryError)
        or "OutOfMemory" in type(exc).__name__
        or any(w in text for w in _OOM_WORDS)
    )


def _memory_message(exc: BaseException) -> str:
    """Not a bug but a size the machine cannot hold: say which options make the work smaller."""
    text = one_line(exc)
    for marker, lead in (("can't allocate memory: ", ""), ("Unable to allocate ", "asked for ")):
        if marker in text:
            text = lead + text[text.index(marker) + len(marker) :]
    for stop in (" for an array", ". Error code", " (Cannot allocate"):
        text = text.split(stop)[0]
    what = f" ({text})" if text else ""
    return (
        f"not enough memory{what}: use a smaller --batch-size, --tile or network width, or fewer "
        "or smaller inputs"
    )


def _debug_traceback(ctx: click.Context) -> None:
    """--debug: the full traceback on stderr; the exit code and the --json document stay the same.

    (Re-raising gave exit 1 and no JSON document for any error, a bad input included.)
    """
    if ctx.meta.get("medseg.debug"):
        import traceback

        traceback.print_exc(file=sys.stderr)


def _interrupted(ctx: click.Context, partial: dict | None) -> None:
    """Ctrl-C: exit 130; with --json one document, the partial result when the command had begun one.

    Temporary outputs were removed on the way out and the output locks end with the command, so
    the rerun is not refused; a training run keeps its last finished epoch (see engine.trainer).
    """
    if ctx.meta.get("medseg.json"):
        doc = dict(partial or {})
        doc.update(error="interrupted", exit_code=130)
        click.echo(json.dumps(doc, indent=2))
    click.echo("medseg: interrupted", err=True)
    _forget_unhandled_interrupt()
    ctx.exit(130)


def _forget_unhandled_interrupt() -> None:
    """Exit 130, not death by SIGINT: the interrupt was handled here.

    CPython marks a KeyboardInterrupt as unhandled when it passes through a nested C-level eval
    (``PyRun_String``, as pybind11 extensions use), even if Python code catches it later; under
    ``python -m`` the process then kills itself with SIGINT at exit. Running an empty string
    resets the mark (3.11+); older versions expose the flag itself.
    """
    import ctypes

    try:
        ctypes.pythonapi.PyRun_SimpleString(b"")
        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (AttributeError, ValueError, OSError):
        pass


def _fail(ctx: click.Context, message: str, code: int, *, path=None, internal: bool = False) -> None:
    """One line on stderr, one JSON document on stdout with --json, then the exit code."""
    message = one_line(message)
    if ctx.meta.get("medseg.json"):
        click.echo(json.dumps({"error": message, "path": str(path) if path else None, "exit_code": code}))
    click.echo(f"medseg: {message}" if internal else f"medseg: error: {message}", err=True)
    ctx.exit(code)


@click.group(cls=MedsegGroup, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="medseg")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logging.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """medseg - CT kernel conversion, C4d slide scoring, cell and brain tumour segmentation.

    Runs on CUDA when a GPU is present (--device auto) and on CPU otherwise.
    """
    ctx.meta["medseg.debug"] = debug
    setup_logging(debug=debug)


def main() -> None:
    cli(prog_name="medseg")


if __name__ == "__main__":
    main()
