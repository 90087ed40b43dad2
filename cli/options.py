"""Option decorators every command shares, so flags mean the same everywhere."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

DEVICE_HELP = "auto (CUDA if present), cpu, cuda or cuda:N."


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    from medseg_cli.main import setup_logging

    if value:
        setup_logging(quiet=True, debug=bool(ctx.meta.get("medseg.debug")))
    return value


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    from medseg_cli.main import setup_logging

    if value:
        ctx.meta["medseg.debug"] = True
        setup_logging(debug=True)
    return value


def common_options(func: Callable) -> Callable:
    """--device, --quiet, --json, --debug."""
    func = click.option("--debug", is_flag=True, expose_value=False, callback=_set_debug, is_eager=True,
                        help="Show full tracebacks and debug logging.")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")(func)
    func = click.option("-q", "--quiet", is_flag=True, callback=_set_quiet,
                        help="Only warnings and errors; no progress bars.")(func)
    func = click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)(func)
    return func


def overwrite_option(func: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, help="Replace existing outputs.")(func)


def batch_size_option(default: int) -> Callable[[Callable], Callable]:
    return click.option("--batch-size", type=click.IntRange(1), default=default, show_default=True,
                        help="Slices/tiles per forward pass.")


def amp_option(func: Callable) -> Callable:
    return click.option("--amp", type=click.Choice(["auto", "on", "off", "bf16", "fp16"]), default="auto",
                        show_default=True, help="Mixed precision: auto = bf16/fp16 on CUDA, off on CPU.")(func)


def emit(summary: dict[str, Any], *, as_json: bool, human: Callable[[dict[str, Any]], str] | None = None) -> None:
    """Print the summary as JSON (for scripts) or a short human text."""
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif human is not None:
        text = human(summary)
        if text:
            click.echo(text)
    sys.stdout.flush()
