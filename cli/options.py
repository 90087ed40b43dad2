"""Option decorators every command shares, so flags mean the same everywhere, and one way to finish."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from medseg_cli._types import FiniteFloatRange

DEVICE_HELP = "auto (CUDA if present), cpu, cuda or cuda:N."
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# --seed: what numpy/torch seeding takes (a negative or 20-digit seed was an internal error)
SEED_MAX = 2**32 - 1
# --max-minutes: a year; beyond it the time budget overflowed into NaN (an internal error)
MAX_MINUTES = 60 * 24 * 366
# one click type for every --weights: existence is checked by the library (a weights problem is exit 4)
WEIGHTS_TYPE = click.Path(dir_okay=False, path_type=Path)


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


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta["medseg.json"] = True
    return value


def debug_option(func: Callable) -> Callable:
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        callback=_set_debug,
        is_eager=True,
        help="Show full tracebacks and debug logging.",
    )(func)


def json_option(func: Callable) -> Callable:
    """--json: one JSON document on stdout whatever the outcome (errors included)."""
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=_set_json,
        is_eager=True,
        help="Print one machine-readable JSON document on stdout (also on errors).",
    )(func)


def quiet_option(func: Callable) -> Callable:
    return click.option(
        "-q", "--quiet", is_flag=True, callback=_set_quiet, help="Only warnings and errors; no progress bars."
    )(func)


def _device_format(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """``auto|cpu|cuda|cuda:N`` (any case, spaces around ignored), else a usage error (exit 2)."""
    spec = (value or "auto").strip().lower()
    if not _DEVICE_RE.match(spec):
        raise click.BadParameter(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")
    return spec


def check_device(device: str, *, ray: bool = False) -> None:
    """Refuse ``--device cuda[:N]`` on a machine without that GPU before any work (exit 2).

    With --ray ADDRESS the GPUs are the cluster's, not this machine's: the Ray runner checks them
    there (--ray auto starts the runtime here: checked here; it printed Ray's actor traceback on stdout).
    """
    if ray or device in ("auto", "cpu"):
        return
    from medseg.engine.runtime import select_device

    select_device(device)  # InputError (exit 2) in one line


def device_option(func: Callable) -> Callable:
    """--device; a CUDA device this machine lacks is refused before the command reads anything."""

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        remote = kwargs.get("ray_address") not in (None, "", "auto", "local")  # auto: a runtime here
        check_device(kwargs.get("device", "auto"), ray=remote)
        return func(*args, **kwargs)

    return click.option(
        "--device",
        default="auto",
        show_default=True,
        metavar="auto|cpu|cuda|cuda:N",
        callback=_device_format,
        help=DEVICE_HELP,
    )(checked)


def _set_runtime(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    """--runtime becomes the process default for this command (MEDSEG_RUNTIME, also seen by Ray workers)."""
    import os

    if value is None:
        return
    before = os.environ.get("MEDSEG_RUNTIME")
    os.environ["MEDSEG_RUNTIME"] = value

    def restore() -> None:
        if before is None:
            os.environ.pop("MEDSEG_RUNTIME", None)
        else:
            os.environ["MEDSEG_RUNTIME"] = before

    ctx.call_on_close(restore)


def runtime_option(func: Callable) -> Callable:
    """--runtime auto|torch|openvino for every command that runs a model (no parameter to the command)."""
    return click.option(
        "--runtime",
        type=click.Choice(["auto", "torch", "openvino"]),
        default=None,
        show_default="auto",
        expose_value=False,
        callback=_set_runtime,
        help="Inference runtime: auto = OpenVINO on a CPU when installed (fp32, faster than PyTorch "
        "there), PyTorch on CUDA; or torch, openvino.",
    )(func)


def output_options(func: Callable) -> Callable:
    """--quiet, --json, --debug: for commands that do work but run no model."""
    return quiet_option(json_option(debug_option(func)))


def common_options(func: Callable) -> Callable:
    """--device, --quiet, --json, --debug: for commands that run a model."""
    return device_option(output_options(func))


def overwrite_option(func: Callable) -> Callable:
    return click.option("--overwrite", is_flag=True, help="Replace existing outputs.")(func)


def weights_option(
    help_text: str = "Weights file (.safetensors) made by medseg; default: the demo weights "
    "(synthetic, not for clinical use).",
    *,
    multiple: bool = False,
) -> Callable[[Callable], Callable]:
    """``--weights FILE``; ``multiple``: repeatable (a tuple, empty when not given)."""
    return click.option("--weights", type=WEIGHTS_TYPE, default=None, multiple=multiple, help=help_text)


def batch_size_option(
    default: int | None, help_text: str = "Slices/tiles per forward pass.", *, most: int | None = None
) -> Callable:
    """--batch-size; ``most`` for training, where a batch is held whole (1e9 was a MemoryError)."""
    return click.option(
        "--batch-size",
        type=click.IntRange(1, most),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def amp_option(func: Callable) -> Callable:
    return click.option(
        "--amp",
        type=click.Choice(["auto", "on", "off", "bf16", "fp16"]),
        default="auto",
        show_default=True,
        help="Mixed precision: auto = bf16/fp16 on CUDA, off on CPU (brain-segment: bf16 where the CPU "
        "has bf16 units, validated on real cases); bf16 on a CPU runs on OpenVINO.",
    )(func)


def train_options(func: Callable) -> Callable:
    """--epochs is the pipeline's own (defaults differ); these mean the same in every *-train command."""
    func = click.option(
        "--resume", is_flag=True, help="Continue from OUT/state.pt and OUT/last.safetensors."
    )(func)
    func = click.option(
        "--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True, help="Random seed."
    )(func)
    func = click.option(
        "--max-minutes",
        type=FiniteFloatRange(min=0, max=MAX_MINUTES, min_open=True),
        default=None,
        help="Time budget: stop after the step that exceeds it (weights are kept).",
    )(func)
    return func


def slim_options(
    *, what: str, after: str, prune_help: str, finetune_default: int
) -> Callable[[Callable], Callable]:
    """--slim / --prune-ratio / --finetune-epochs (network slimming, Liu et al. 2017), shared by the
    commands that train batch-normed nets; ``what``/``after``/``prune_help`` word them for the command."""

    def decorate(func: Callable) -> Callable:
        func = click.option(
            "--finetune-epochs",
            type=click.IntRange(1),
            default=finetune_default,
            show_default=True,
            help=f"Epochs of fine-tuning the pruned net{after}.",
        )(func)
        func = click.option(
            "--prune-ratio",
            type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
            default=None,
            help=prune_help,
        )(func)
        return click.option(
            "--slim",
            type=FiniteFloatRange(0),
            default=0.0,
            show_default=True,
            help=f"Network slimming: L1 penalty (lambda) on the batch-norm scale factors{what}.",
        )(func)

    return decorate


def val_fraction_option(default: float, held_out: str) -> Callable[[Callable], Callable]:
    """--val-fraction for every *-train command; ``held_out`` says what is held out, in words."""
    return click.option(
        "--val-fraction",
        type=FiniteFloatRange(0, 0.9),
        default=default,
        show_default=True,
        help=f"Share held out for validation: {held_out} (0: validate on training data, with a warning).",
    )


def emit(summary: Any, *, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print a result as JSON (for scripts) or as a short human text."""
    if as_json:
        from medseg.results import json_safe

        doc = summary.to_dict() if hasattr(summary, "to_dict") else summary
        click.echo(json.dumps(json_safe(doc), indent=2))
    elif human is not None:
        text = human(summary)
        if text:
            click.echo(text)
    sys.stdout.flush()


def finish(result: Any, *, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``result`` and exit with its exit code (0, or 5 when some items of a batch failed)."""
    emit(result, as_json=as_json, human=human)
    code = int(getattr(result, "exit_code", 0))
    if code:
        if not as_json:
            from medseg.errors import one_line

            for line in getattr(result, "failure_lines", list)():
                click.echo(f"medseg: failed: {one_line(line)}", err=True)
        click.get_current_context().exit(code)


def ray_options(func: Callable) -> Callable:
    """--ray [auto|ADDRESS], --ray-actors, --priority, --deadline: run a batch command on Ray.

    Ray is imported only when --ray is given (an optional extra: pip install 'medseg[ray]').
    """
    func = click.option(
        "--deadline",
        type=FiniteFloatRange(0, min_open=True),
        default=None,
        metavar="SECONDS",
        help="With --ray: finish within SECONDS of the start; the actors' queue serves the "
        "earliest deadline first (a fairness bound keeps other jobs moving).",
    )(func)
    func = click.option(
        "--priority",
        type=int,
        default=0,
        show_default=True,
        help="With --ray: jobs sharing the model actors are served higher priority first.",
    )(func)
    func = click.option(
        "--ray-actors",
        type=click.IntRange(1),
        default=None,
        help="With --ray: model actors (default: one per GPU of the cluster, else 1).",
    )(func)
    return _ray_address_option(
        "Run on Ray: auto (or no value) starts a local runtime; ray://host:10001 or "
        "host:6379 joins a cluster (see docs/scale-out.md)."
    )(func)


def _ray_address_option(help_text: str) -> Callable:
    return click.option(
        "--ray",
        "ray_address",
        is_flag=False,
        flag_value="auto",
        default=None,
        metavar="[auto|ADDRESS]",
        help=help_text,
    )


def ray_task_option(unit: str) -> Callable:
    """--ray [auto|ADDRESS] for commands that run one Ray task per ``unit`` (image, case, exam)."""
    return _ray_address_option(
        f"Run on Ray, one task per {unit}: auto (or no value) starts a local runtime; "
        "ray://host:10001 or host:6379 joins a cluster (see docs/scale-out.md). Same outputs and rows "
        "as the local run; no --priority/--deadline here (those schedule slide-score's model actors)."
    )
