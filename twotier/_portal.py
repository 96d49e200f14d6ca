"""A loop thread for callers that have no event loop of their own.

anyio's blocking portal, reduced to what the cache needs: one daemon thread
running one event loop, started on first use; callers hand it coroutines
thread-safely and block for the result. Starlette's `TestClient` drives an
async app from sync code the same way. `asyncio.run()` per call would create a
new loop each time, and the cache's connections belong to the loop that made
them (issue 11: "Event loop is closed" on the second request).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run *coro* on the loop thread and wait for its result (or exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.started()).result()

    def started(self) -> asyncio.AbstractEventLoop:
        """The running loop of the thread, started if need be."""
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self._name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def stop(self) -> bool:
        """End the loop thread (after the work handed to it so far). True if
        this call ended it; False if it runs on (a blocked loop, or a call from
        the thread itself) or another call stopped it."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return False
        if not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed meanwhile
                loop.call_soon_threadsafe(loop.stop)
        if thread is threading.current_thread():
            return False  # it ends when this callback returns
        thread.join(timeout=5)
        return not thread.is_alive()
