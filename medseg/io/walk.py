"""The files below a folder, through symbolic links too (studies assembled from links on shared storage).

``Path.rglob`` does not descend into linked folders (before Python 3.13 it cannot be asked to), so a
study made of links to series folders looked empty. :func:`walk_files` follows linked folders with
``os.walk(followlinks=True)`` and guards against cycles (a link to a parent folder, two links to
one folder): each real folder, by device and inode, is entered once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def walk_files(root: str | Path) -> Iterator[Path]:
    """Every file below ``root`` (linked folders followed, each real folder once), in sorted order
    within each folder; the paths keep the links' names (they are not resolved)."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            st = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a cycle or a second link to a folder already read
            dirs[:] = []
            continue
        seen.add(key)
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():  # a dangling link is no file
                yield path
