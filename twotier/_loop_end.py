"""A hook on the end of the running event loop.

`asyncio.run()` and `asyncio.Runner` (which uvicorn, pytest-asyncio and
`anyio.run` use) end a loop by cancelling every task, then finalising the
async generators still alive (`loop.shutdown_asyncgens()`), then closing it.
The finalisation is the one point of that sequence where library code still
runs, awaited, on the loop: a generator's `finally` may await. So a `LoopEnd`
is an async generator started on the loop and parked at its `yield`; when the
loop shuts its generators down, its `finally` awaits *on_end*.

A cache uses it to deliver the changes it accepted and to close its
connections when the loop it lives on ends without `close()` (issue 18,
items 2 and 6). A loop closed without `shutdown_asyncgens()` (a hand-driven
`run_until_complete` followed by `close()`) never runs the hook.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Awaitable, Callable


class LoopEnd:
    """Calls *on_end* (awaited, on the loop) when the running loop shuts down."""

    __slots__ = ("_armed", "_generator", "_on_end")

    def __init__(self, on_end: Callable[[], Awaitable[None]]) -> None:
        self._on_end = on_end
        self._armed = True
        self._generator = self._wait()
        # Its first step registers it with the running loop (the loop's
        # `firstiter` hook) and runs it to its `yield`, synchronously: the
        # caller need not await anything.
        with contextlib.suppress(StopIteration):
            self._generator.asend(None).send(None)

    async def _wait(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            if self._armed:
                self._armed = False
                await self._on_end()

    def disarm(self) -> None:
        """Never call *on_end* (the cache closed, or left this loop).

        The generator is finished here, synchronously, so that the loop has no
        generator of ours left to finalise, even once it is closed.
        """
        self._armed = False
        with contextlib.suppress(StopIteration, RuntimeError):
            self._generator.aclose().send(None)
