"""Small helpers shared by the benchmarks: peak-memory sampling and result printing."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import psutil


@contextmanager
def peak_rss():
    """Sample this process's RSS every 5 ms; yields a dict filled with ``peak_mb`` / ``delta_mb``."""
    proc = psutil.Process()
    start = proc.memory_info().rss
    box = {"peak": start}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            box["peak"] = max(box["peak"], proc.memory_info().rss)
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out: dict = {}
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out["peak_mb"] = box["peak"] / 2**20
        out["delta_mb"] = (box["peak"] - start) / 2**20


def gpu_peak_mb() -> float | None:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def report(name: str, results: dict) -> None:
    print(f"== {name} ==")
    for key, value in results.items():
        print(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")
    print(json.dumps({"benchmark": name, **results}))
