"""Progress bars that switch themselves off when nobody is watching.

On a TTY (and unless disabled by ``--quiet``) a tqdm bar is shown and medseg's log lines are
routed through tqdm while it runs, so a warning never lands in the middle of the bar.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class _Plain(Generic[T]):
    """No bar: plain iteration; ``set_postfix`` is accepted and ignored."""

    def __init__(self, iterable: Iterable[T]) -> None:
        self._iterable = iterable

    def __iter__(self) -> Iterator[T]:
        yield from self._iterable

    def set_postfix(self, **_values: Any) -> None:
        return None


class _Bar(_Plain[T]):
    def __init__(self, iterable: Iterable[T], **kwargs: Any) -> None:
        from tqdm import tqdm

        super().__init__(iterable)
        self._kwargs = kwargs
        self._bar: tqdm | None = None
        self._postfix: dict[str, Any] = {}

    def __iter__(self) -> Iterator[T]:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm(loggers=[logging.getLogger("medseg")]):
            with tqdm(self._iterable, leave=False, dynamic_ncols=True, **self._kwargs) as bar:
                self._bar = bar
                if self._postfix:
                    bar.set_postfix(**self._postfix)
                yield from bar

    def set_postfix(self, **values: Any) -> None:
        self._postfix = values
        if self._bar is not None:
            self._bar.set_postfix(**values)


def progress_bar(
    iterable: Iterable[T], *, total: int | None = None, desc: str = "", enabled: bool = True, unit: str = "it"
) -> _Plain[T]:
    """Wrap ``iterable`` in a tqdm bar on a TTY; plain iteration otherwise or when disabled."""
    if not enabled or not sys.stderr.isatty():
        return _Plain(iterable)
    return _Bar(iterable, total=total, desc=desc, unit=unit)
