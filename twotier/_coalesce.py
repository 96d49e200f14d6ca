"""Coalesced tag invalidations: one script call, one change number, one message
for every invalidation asked for while the previous one was on its way.

A burst of invalidations from one writer (an import, a bulk update, code that
invalidates row by row) used to cost every other instance one delivery per
call, and the node one script run and one fan-out per call (issue 20, item 4).
Here the first invalidation goes out at once, from its caller; those asked for
while it is in flight wait, merged, and go out as one call as soon as it is
done — from a tracked background task, so a waiting caller's cancellation
never strands the others' tags. A lone invalidation waits for nobody, and no
timer delays any send: the batch is whatever queued during the previous round
trip.

The batch is an ordinary `t` change with many tags: one number from the
counter, one log entry, one message; receivers apply it in one step (one
`evict_tags`, one mirror update), and gap detection and replay see one change.
A batch of more than `CHUNK` tags is sent as several changes (`RedisTier.invalidate`).

Concurrency: everything runs on the cache's loop; `send` returns when the
caller's tags are in Redis, or queued for it (as a lone invalidation does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

Send = Callable[[tuple[str, ...]], Awaitable[None]]


class TagBatches:
    def __init__(
        self,
        send: Send,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
        abandon: Callable[[tuple[str, ...]], None],
    ) -> None:
        self._send = send
        self._spawn = spawn
        # Tags whose delivery task was cancelled before it ran: queued for later.
        self._abandon = abandon
        self._busy = False
        self._pending: dict[str, None] = {}  # the next batch's tags, in order, once each
        self._batch: asyncio.Future[None] | None = None  # done when the next batch is sent
        #: Invalidations that joined another's call instead of making their own (a stat).
        self.coalesced = 0

    async def send(self, tags: tuple[str, ...]) -> None:
        if not self._busy:
            self._busy = True
            try:
                await self._send(tags)
            finally:
                self._next()
            return
        self.coalesced += 1
        self._pending.update(dict.fromkeys(tags))
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        # Shielded: the batch goes out whether or not this caller still waits.
        await asyncio.shield(self._batch)

    def _next(self) -> None:
        """Send what queued meanwhile as one batch, in the background, or go idle."""
        if not self._pending:
            self._busy = False
            return
        tags, batch = tuple(self._pending), self._batch
        self._pending, self._batch = {}, None
        assert batch is not None
        task = self._spawn(self._drain(tags, batch))
        if isinstance(task, asyncio.Future):
            task.add_done_callback(lambda done: self._unstarted(done, tags, batch))

    async def _drain(self, tags: tuple[str, ...], batch: asyncio.Future[None]) -> None:
        try:
            await self._send(tags)
        finally:
            if not batch.done():
                batch.set_result(None)
            self._next()

    def _unstarted(
        self, task: asyncio.Future[Any], tags: tuple[str, ...], batch: asyncio.Future[None]
    ) -> None:
        """A drain cancelled before its first step (its loop ending) ran none of
        its code: its tags, and any queued since, are queued for delivery by
        `close()` or the next loop, and their callers released."""
        if not task.cancelled() or batch.done():
            return
        pending, later = tuple(self._pending), self._batch
        self._pending, self._batch, self._busy = {}, None, False
        self._abandon(tags + pending)
        for future in (batch, later):
            if future is not None and not future.done():
                future.set_result(None)
