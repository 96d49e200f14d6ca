"""What every local server and topology shares: `start()` as a context manager,
and `with` on an instance, both of which stop everything they launched; and
waiting for a condition of the servers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import redis


class Launchable:
    def launch(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @classmethod
    @contextmanager
    def start(cls, *args: Any, **kwargs: Any) -> Iterator[Self]:
        """A new one, launched; stopped on exit, however the block ends."""
        launched = cls(*args, **kwargs)
        try:
            launched.launch()
            yield launched
        finally:
            launched.stop()

    def __enter__(self) -> Self:
        self.launch()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_until(deadline: float, condition: Callable[[], bool], what: str) -> None:
    """Poll *condition* (a Redis error counts as "not yet") until *deadline*."""
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except redis.RedisError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")
