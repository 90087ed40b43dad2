"""Scale-out on Ray (optional extra ``pip install 'medseg[ray]'``): batch commands across machines.

Nothing here imports Ray at module level: the local commands never load it. :func:`connect`
turns the ``--ray`` value into a Ray runtime; :mod:`medseg.scale.slides` runs ``slide-score`` the
S^3DNN way (slide tasks feed model actors that fuse tiles of many slides into batches, served
earliest-deadline-first); :mod:`medseg.scale.governor` holds the scheduling logic in plain Python.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from medseg.errors import InputError

log = logging.getLogger("medseg.scale")

RAY_EXTRA = "pip install 'medseg[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line InputError naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(f"--ray needs Ray, which is not installed: {RAY_EXTRA}") from exc
    return ray


def connect(address: str | None = "auto", **init_kwargs: Any) -> Any:
    """Start or join a Ray runtime; returns the ``ray`` module.

    ``"auto"`` (or None) starts a local runtime on this machine (all its cores and GPUs);
    ``ray://host:10001`` joins a cluster through the Ray client, ``host:6379`` joins as a driver on
    a cluster node. An already initialised runtime (a script or a test that called ``ray.init``)
    is used as it is.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": bool(os.environ.get("MEDSEG_RAY_WORKER_LOGS")),
        # Ray's start-up notices (token set-up, ...) are not the user's business unless --debug
        "logging_level": logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR,
        **init_kwargs,
    }
    target = "local" if address in (None, "", "auto", "local") else address
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise InputError(f"cannot start or join the Ray runtime at {address!r}: {first}") from exc
    log.info("Ray runtime: %s", ray.cluster_resources())
    return ray
